"""A contextual bandit that learns online how much discovery people reward.

The ``discovery`` knob of a preset is set once, by a person.  ``LinearTS`` instead learns the
mix from feedback: each candidate of the blend's pool is described by a few features, the
expected reward of showing it is linear in them, and Thompson sampling (Agrawal & Goyal 2013,
"Thompson Sampling for Contextual Bandits with Linear Payoffs") draws a weight vector from the
Gaussian posterior for every request and shows the k best candidates under that draw.

Features of candidate i for a user (all in [0, 1], so the weights compare):

- ``relevance``: the blend's score, min-max scaled over the pool;
- ``unexpectedness``: (1 - cosine(history profile, item)) / 2 in the encoder space (0.5
  without a history);
- ``novelty``: self-information -log2(users(i) / n_users), divided by its catalog maximum;
- ``tail``: 1 outside the head (the 20% most popular items), else 0;
- ``shown``: 1 - 0.5^n, n the times the person was shown the item in their recent lists
  (``Query.shown``, filled by the service from the impression log; 0 offline): what a
  repeated showing earns, learnt like the other weights, so a list stops repeating what a
  person keeps passing over when the clicks say it should;
- ``bias``: 1.

Learning is two running sums over shown slots, ``A += x x'`` and ``b += r x`` (ridge
regression's sufficient statistics), so a slot can be counted as "shown, no reward" at once
and credited later with ``credit(x)`` (``b += x``) when a click arrives.  With ``positions``
each slot is weighed by its learnt examination rate e (``A += e^2 x x'``, ``b += e r x``).

Propensities.  The marginal probability p that a Thompson-sampled slate puts an item in a slot
has no closed form.  What off-policy evaluation needs is 1/p (the importance weight's
denominator), and that has an unbiased estimate: after showing the list, draw fresh posterior
samples until the shown item lands in its slot again; the number of draws N is geometric with
mean exactly 1/p, and ``propensity`` is logged as 1/N.  N is capped at ``samples`` draws, so
E[N] = (1 - (1 - p)^samples) / p: with the default 10,000 that factor is within 1e-6 of 1
for p >= 0.0014.  An earlier estimate, "the share of 200 draws, the shown one included, that
put the item there", has E[1 / estimate] = (1 - (1 - p)^200) / p (since E[1 / (1 + Bin(199,
p))] = (1 - (1 - p)^200) / (200 p)): IPS weights biased low by that factor, 0.27 at
p = 0.0016.

How a run is computed is part of the policy, the same for the list shown and for every run
that counts a return: the weights (shared and the person's) are one Gaussian draw, scores are
float32, an item offset's noise is one of ``NORMAL_GRID``'s 65,536 equally likely normal
quantiles (a table lookup, several times cheaper than a fresh normal; |z| <= 4.32), and a
run's list is its candidates by score, ties to the earlier one.  Counting a return checks only
the slots still open, by how many candidates rank above the shown item.  The runs a slate needs
are the geometric counts themselves, about 1 / p for its least likely slot, so with item
offsets a counting run scores the shown items, then the other candidates by posterior mean,
and stops as soon as more than j of them rank above slot j's item for every open slot j: a
hard slot's item usually ranks far below its slot, and the best few candidates say so.  That
loop is compiled (``_kernels.count_runs``).  Each score is computed alone in a fixed order
(``_product``, not a BLAS product whose sums may depend on the matrix around them), so a
score is the same bits whatever else is scored with it, and the noise draws are independent,
so leaving a run's other candidates unscored when no answer depends on them changes no run's
outcome in distribution (``bench/bandit.py`` times it).

Options (see ``LinearTS``): ``hierarchy`` adds per-person and per-item Gaussian offsets to the
shared weights; ``new_item_share`` reserves the last slot, with that probability, for one of
the best new candidates.  Either way the geometric count re-runs the whole policy (every
posterior part redrawn, the budget's coin and pick included), so it stays unbiased for 1/p.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import chain, repeat

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.special import ndtri

from serendip.component import Component, ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError
from serendip.eval.metrics import head_by_item_share
from serendip.explore.policies import Examination
from serendip.models.semantic import normalized_vectors
from serendip.types import ItemList, Query

__all__ = ["LinearTS", "LinearTSConfig", "FEATURES", "PERSONAL", "SHOWN_LIMIT"]

FEATURES = ("bias", "relevance", "unexpectedness", "novelty", "tail", "shown")
#: the features of statistics saved before ``shown`` existed (``_widened`` pads them)
_OLD_FEATURES = FEATURES[:5]
#: how many of a person's most recent lists a request reads for the ``shown`` feature (the
#: service's ``shown_limit`` and off-policy replay default to it)
SHOWN_LIMIT = 100
#: the features a person's own weights are learnt for (``hierarchy``): the discovery ones
PERSONAL = ("unexpectedness", "novelty", "tail")
_PCOLS = np.array([FEATURES.index(f) for f in PERSONAL])
_KEY_MASK = np.uint64((1 << 52) - 1)
#: an item offset's standard-normal draw: one of 2^16 equally likely quantiles of the normal,
#: Phi^-1((j + 1/2) / 2^16) (|z| <= 4.32); a lookup is several times cheaper than a fresh draw
NORMAL_GRID = ndtri((np.arange(1 << 16) + 0.5) / (1 << 16)).astype(np.float32)
NORMAL_GRID.setflags(write=False)
#: scores per batch of runs while counting returns (each batch scores its runs together):
#: 64 runs over 1,000 candidates keep a batch's buffers in cache, 128 did not and ran slower;
#: batches start at ``_RUNS`` runs (an easy slate stops after a few) and double up to about
#: this many scores (``_batch``): fewer candidates get more runs per batch, as each numpy call
#: has its own cost
_BATCH_SCORES = 64_000
#: the fewest and the most runs per batch
_RUNS, _MAX_RUNS = 64, 1024
#: ``_product`` adds a feature only where it is nonzero when under 1 / _SPARSE of it is
_SPARSE = 4
#: ... and, scoring runs x candidates (columns gathered), under 1 / _SPARSE_COLUMNS of it
_SPARSE_COLUMNS = 25
#: most runs per batch of the probed count (a batch stops at the run that settles its last
#: open slot, so a large batch costs only its weight draws)
_PROBED_RUNS = 512
#: slots a ``positions`` bandit tracks (a row's slot column must lie below)
_MAX_SLOTS = 1000
#: an item offset's sums (showings, residual total) before it is first learnt from
_NO_SUMS = (0.0, 0.0)


def _keys(ids: np.ndarray) -> np.ndarray:
    """Stable keys for ids, exact integers 1..2^52 as float64 (so they ride in a slot's feature
    row): offsets are stored by key, so they outlive a refit that renumbers items and people."""
    h = pd.util.hash_array(np.asarray([str(v) for v in ids], dtype=object))  # fixed hash key
    return ((h & _KEY_MASK) + np.uint64(1)).astype(np.float64)


class LinearTSConfig(ComponentConfig):
    prior: float = Field(1.0, gt=0, le=1e6, description="ridge prior precision (A starts at prior x I)")
    noise: float = Field(0.25, gt=0, le=100, description="posterior scale: larger explores more")
    samples: int = Field(10_000, ge=1, le=100_000,
                         description="most fresh posterior draws per propensity (a geometric "
                         "count, see the module docstring)")
    target_samples: int = Field(1_000, ge=1, le=100_000,
                                description="posterior draws for slot_distribution (the policy "
                                "as an off-policy target)")
    seed: int | None = Field(None, ge=0, description="fixed seed (replays, tests); None: fresh")
    prior_mean: dict[str, float] = Field(
        default_factory=lambda: {"relevance": 1.0},
        description="prior mean weights by feature name (others 0): where learning starts",
    )

    hierarchy: bool = Field(False, description="add each person's own weights for the discovery "
                            "features and each item's own appeal to the shared weights")
    person_prior: float = Field(25.0, gt=0, le=1e6,
                                description="prior precision of a person's offsets (around 0)")
    item_prior: float = Field(10.0, gt=0, le=1e6,
                              description="prior precision of an item's offset (around 0)")
    max_people: int = Field(100_000, ge=1, le=10_000_000,
                            description="people whose offsets are kept (least recent dropped)")
    max_items: int = Field(200_000, ge=1, le=10_000_000,
                           description="items whose offsets are kept (least recent dropped)")
    new_item_share: float = Field(0.0, ge=0, le=1,
                                  description="probability that the last slot shows one of the "
                                  "best new candidates (no interactions at fit time)")
    new_item_pool: int = Field(5, ge=1, le=1_000,
                               description="how many of the best new candidates (by posterior "
                               "mean) the budget slot draws from, uniformly")
    positions: bool = Field(False, description="learn how often each slot is looked at (a "
                            "position-based click model) and fit the top-slot appeal; a "
                            "slot's features row then carries its slot")

    def model_post_init(self, __context: object) -> None:
        unknown = sorted(set(self.prior_mean) - set(FEATURES))
        if unknown:
            raise ValueError(f"prior_mean names unknown features {unknown}; valid: {list(FEATURES)}")
        bad = {k: v for k, v in self.prior_mean.items() if not np.isfinite(v) or abs(v) > 1e3}
        if bad:
            raise ValueError(f"prior_mean weights must be finite and within +-1000, got {bad}")


class LinearTS(Component):
    """Thompson sampling over ``FEATURES`` of the candidates; learns from ``update``.

    With ``hierarchy`` the sampled score of a candidate adds two Gaussian offsets to the
    shared linear one: the person's own weights for the ``PERSONAL`` features (ridge sums per
    person, prior precision ``person_prior`` around 0) and the item's own appeal (prior
    precision ``item_prior`` around 0).  The three parts are fitted by backfitting: each
    learns from the reward less the other two's current means.  A slot's ``features`` row then
    carries two more columns, the item's and the person's key, so that ``update`` and
    ``credit`` (which see only the row) know whose offsets to move.

    With ``new_item_share`` the policy is a mixture: with that probability the last slot
    shows one of the ``new_item_pool`` best new candidates (by posterior mean), chosen
    uniformly, and the other slots are the sampled ranking of the rest.
    """

    name = "linear_ts"
    config_class = LinearTSConfig
    config: LinearTSConfig

    def train(self, data: Dataset) -> None:
        pop = np.asarray(data.item_popularity, dtype=np.float64)
        info = -np.log2(np.maximum(pop, 1.0) / max(int(data.n_users), 1))
        extra: dict[str, np.ndarray] = {}
        if self.config.hierarchy:
            extra = {"item_keys": _keys(data.item_ids), "user_keys": _keys(data.user_ids)}
        self._set_state(
            **self._prior(),
            novelty=info / max(float(info.max()), 1e-12),
            tail=(~head_by_item_share(pop, 0.2)).astype(np.float64),
            vectors=normalized_vectors(data, self.name),
            new=pop <= 0,
            **extra,
        )

    def _prior(self) -> dict[str, np.ndarray]:
        """The learning sums before any feedback: ``A = prior I``, ``b = prior m0``, so the
        posterior mean starts at ``prior_mean`` (m0)."""
        m0 = np.array([self.config.prior_mean.get(f, 0.0) for f in FEATURES])
        return {"A": np.eye(len(FEATURES)) * self.config.prior, "b": self.config.prior * m0}

    def start(self) -> None:
        """Begin from the prior with no catalogue: the state ``choose`` needs, for a caller
        that computes the feature rows, keys and new-item mask itself (the simulator runs the
        served policy this way on its world's features).  The request path (``__call__``,
        ``features``) needs ``train``."""
        self._set_state(**self._prior())

    def _after_load(self) -> None:
        st = self._state
        if st is not None and "A" in st:  # a model saved before ``shown``: its prior, widened
            st["A"], st["b"] = self._widened(st["A"], st["b"])
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.Lock()
        self._work = threading.local()  # each thread's reused run buffers (``_buffers``)
        # hierarchy: key -> (A, b) of a person's PERSONAL weights; key -> [n, sum] of an item
        self._people: OrderedDict[float, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._items: OrderedDict[float, list[float]] = OrderedDict()
        self._exam = Examination() if self.config.positions else None

    @property
    def row_width(self) -> int:
        """Columns of a slot's ``features`` row: the features, with ``hierarchy`` the item's
        and the person's keys, and with ``positions`` the slot (0 = top)."""
        return len(FEATURES) + (2 if self.config.hierarchy else 0) + (
            1 if self.config.positions else 0)

    # ------------------------------------------------------------------ features
    def features(self, query: Query, candidates: ItemList) -> np.ndarray:
        """``len(candidates) x len(FEATURES)`` feature rows (see the module docstring)."""
        st = self._require_trained()
        idx = candidates.items
        s = candidates.scores
        rel = np.zeros(idx.size)
        finite = np.isfinite(s)
        if finite.any():
            lo, hi = float(s[finite].min()), float(s[finite].max())
            rel[finite] = (s[finite] - lo) / (hi - lo) if hi > lo else 1.0
        v = st["vectors"]
        hist = np.unique(query.history)
        if hist.size:
            centre = v[hist].mean(axis=0)
            norm = float(np.linalg.norm(centre))
            cos = v[idx] @ (centre / norm) if norm > 0 else np.zeros(idx.size)
            unexp = (1.0 - cos) / 2.0
        else:
            unexp = np.full(idx.size, 0.5)
        shown = np.zeros(idx.size)
        if query.shown.size:
            seen, times = np.unique(query.shown, return_counts=True)
            at = np.searchsorted(seen, idx)
            hit = (at < seen.size) & (seen[np.minimum(at, seen.size - 1)] == idx)
            shown[hit] = 1.0 - 0.5 ** times[at[hit]]
        return np.column_stack([np.ones(idx.size), rel, unexp, st["novelty"][idx],
                                st["tail"][idx], shown])

    # ------------------------------------------------------------------ policy
    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and covariance of the weights (ridge solution, noise^2 A^-1)."""
        st = self._require_trained()
        with self._lock:
            a, b = st["A"].copy(), st["b"].copy()
        cov = np.linalg.inv(a)
        return cov @ b, (self.config.noise**2) * cov

    def _context(self, query: Query, candidates: ItemList) -> _Context:
        """A request's context: its feature rows, keys and new candidates from the trained
        catalogue (``features``, ``item_keys``, ``user_keys``, ``new``)."""
        st = self._require_trained()
        x = self.features(query, candidates)
        item_keys, person_key = None, 0.0
        if self.config.hierarchy:
            item_keys = st["item_keys"][candidates.items]
            person_key = (float(st["user_keys"][query.user]) if query.user is not None
                          else 0.0)
        new = st["new"][candidates.items] if "new" in st else None  # (saved before: no budget)
        return self._context_of(x, item_keys, person_key, new)

    def _context_of(self, x: np.ndarray, item_keys: np.ndarray | None, person_key: float,
                    new: np.ndarray | None) -> _Context:
        """What one request's draws need: features, the shared posterior, the offsets'
        posteriors for this person and these candidates, and the budget's pool."""
        mean, cov = self.posterior()
        ctx = _Context(x=x, mean=mean, cov=cov)
        if self.config.hierarchy:
            assert item_keys is not None
            ctx.item_keys = item_keys
            ctx.person_key = person_key
            n, total = self._item_sums(ctx.item_keys)
            prec = self.config.item_prior + n
            ctx.item_mean, ctx.item_sd = total / prec, self.config.noise / np.sqrt(prec)
            ctx.xm32 = np.ascontiguousarray(np.vstack([x.T, ctx.item_mean]), dtype=np.float32)
            ctx.sd32 = ctx.item_sd.astype(np.float32)
            with self._lock:
                got = self._people.get(ctx.person_key)
                pa, pb = (got[0].copy(), got[1].copy()) if got is not None else (None, None)
            if pa is not None and pb is not None:
                inv = np.linalg.inv(pa)
                ctx.person_mean = inv @ pb
                ctx.person_chol = self.config.noise * np.linalg.cholesky(inv)
        if self.config.new_item_share > 0 and new is not None:
            fresh = np.flatnonzero(new)
            if fresh.size:
                best = np.argsort(-ctx.mean_scores()[fresh], kind="stable")
                ctx.pool = fresh[best[: self.config.new_item_pool]]
                ctx.share = self.config.new_item_share
        return ctx

    def item_sums(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """With ``hierarchy``: per item index, its showings learnt from and the sum of their
        residual rewards (the item offset's sufficient statistics; zeros when unknown).  With
        ``positions`` a showing counts e^2, its slot's examination rate squared."""
        st = self._require_trained()
        if not self.config.hierarchy:
            raise ConfigError("item_sums needs a bandit with hierarchy = true")
        return self._item_sums(st["item_keys"][np.asarray(items, dtype=np.int64)])

    def _item_sums(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # the sums are lists, read in one flat pass
            got = map(self._items.get, keys.tolist(), repeat(_NO_SUMS))
            sums = np.fromiter(chain.from_iterable(got), dtype=np.float64,
                               count=2 * keys.size).reshape(-1, 2)
        return sums[:, 0], sums[:, 1]

    def mean_scores(self, query: Query, candidates: ItemList) -> np.ndarray:
        """Each candidate's posterior mean reward (shared part plus, with ``hierarchy``, the
        person's and the item's offsets): what the policy expects without exploring."""
        return self._context(query, candidates).mean_scores()

    def _runs(self, ctx: _Context, size: int, weights: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """``size`` independent runs of the whole policy, as scores: ``size x candidates``
        float32, and per run the budget's pick for the last slot (-1: no budget this run),
        whose score is then -inf (it leaves the ranking).

        A run's score of candidate i is ``v . x_i + m_i + s_i z_i``: v the weights (the shared
        ones and, with ``hierarchy``, the person's, drawn together as one Gaussian), m_i and
        s_i the item offset's posterior mean and sd, and z_i one of ``NORMAL_GRID``'s
        equally likely normal quantiles.  The policy is what this computes, for the list shown
        and for the runs that count its returns alike, so the counts stay unbiased for it.
        A run's list is its candidates by score, ties to the earlier candidate (``_order``)."""
        if weights is None:
            weights = self._draw(ctx, size)
        n = ctx.x.shape[0]
        scores, z, idx = self._buffers(size, n)
        if ctx.xm32 is None or ctx.sd32 is None:
            np.matmul(weights.astype(np.float32), ctx.x32, out=scores)
        else:  # the offsets' means ride in the product as one more row
            # the same bits as the counting runs' (``_kernels.count_runs``)
            _product(_with_one(weights), ctx.xm32, sparse=ctx.sparse(), out=scores, tmp=z)
            with self._lock:  # 16 random bits per candidate and run pick its quantile
                bits = self._rng.bit_generator.random_raw(-(-scores.size // 4))
            np.copyto(idx, bits.view(np.uint16)[: scores.size].reshape(scores.shape))
            NORMAL_GRID.take(idx, out=z, mode="clip")  # indices < 2^16: "clip" never clips
            z *= ctx.sd32
            scores += z
        picks = self._picks(ctx, size)
        if picks is None:
            return scores, None
        rows = np.flatnonzero(picks >= 0)
        scores[rows, picks[rows]] = -np.inf
        return scores, picks

    def _buffers(self, size: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's buffers for ``size`` runs over ``n`` candidates: scores and normal
        draws (float32) and quantile indices, ``size x n`` views of arrays kept between calls
        (up to ``_MAX_RUNS`` runs; more get arrays of their own, so a thread keeps little).
        Fresh arrays of a batch's size cost page faults on every call, which took longer
        than the arithmetic; the runs' scores are only read before the thread's next runs.
        """
        if size > _MAX_RUNS:  # a one-off (``slot_distribution``'s runs): not kept
            return (np.empty((size, n), dtype=np.float32), np.empty((size, n), dtype=np.float32),
                    np.empty((size, n), dtype=np.intp))
        work = self._work
        have = getattr(work, "size", 0)
        if have < size * n:
            have = max(size * n, 2 * have)
            work.size = have
            work.scores = np.empty(have, dtype=np.float32)
            work.z = np.empty(have, dtype=np.float32)
            work.idx = np.empty(have, dtype=np.intp)
            work.above = np.empty(have, dtype=bool)
        m = size * n
        return (work.scores[:m].reshape(size, n), work.z[:m].reshape(size, n),
                work.idx[:m].reshape(size, n))

    def _orders(self, ctx: _Context, size: int, k: int) -> np.ndarray:
        """``size`` runs of the policy: ``size x k`` candidate positions, each row the list
        ``_order`` makes of that run (ties to the earlier candidate)."""
        scores, picks = self._runs(ctx, size)
        out = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        if picks is not None:
            rows = np.flatnonzero(picks >= 0)
            out[rows, k - 1] = picks[rows]
        return out

    def _order(self, scores: np.ndarray, pick: int, k: int) -> np.ndarray:
        """One run's list: the k best by score, ties to the earlier candidate; a budget pick
        (``pick >= 0``) takes the last slot."""
        shown = np.argsort(-scores, kind="stable")[:k]
        if pick >= 0:
            shown[k - 1] = pick
        return shown

    def __call__(self, query: Query, candidates: ItemList, k: int) -> ItemList:  # type: ignore[override]
        """The k candidates with the best sampled reward, each with ``propensity`` (1 / N, N the
        fresh draws until it returns to its slot: 1 / propensity is unbiased for 1 / p),
        ``features`` rows and the sampled score."""
        k = _slots(k, len(candidates), self.config.positions)
        if k == 0:
            return ItemList.empty()
        shown, score, propensity, rows = self._show(self._context(query, candidates), k)
        return (candidates.take(shown).with_scores(score[shown])
                .with_field("propensity", propensity)
                .with_field("features", rows)
                .with_field("relevance", candidates.scores[shown]))

    def choose(self, x: np.ndarray, k: int, *, item_keys: np.ndarray | None = None,
               person_key: float = 0.0, new: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The policy of ``__call__`` on feature rows computed elsewhere.

        ``x``: ``n x len(FEATURES)`` rows of the candidates (columns in ``FEATURES`` order);
        with ``hierarchy``, ``item_keys`` (n finite keys, one per candidate, what the offsets
        are stored by) and ``person_key`` (0: unknown, no person offsets); ``new``: n booleans,
        the candidates the new-item budget may show (None: no budget).  Returns the shown
        candidates' positions (best slot first), their propensities and the feature rows to
        give ``update`` / ``credit`` (with ``hierarchy``, the keys appended; with
        ``positions``, then the slot), as ``__call__`` does.
        """
        self._require_trained()
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or not np.isfinite(x).all():
            raise DataError(f"choose needs finite n x {len(FEATURES)} features "
                            f"({', '.join(FEATURES)}), got {x.shape}")
        n = x.shape[0]
        keys = None
        if self.config.hierarchy:
            if item_keys is None:
                raise DataError("choose needs item_keys for a bandit with hierarchy = true")
            keys = np.asarray(item_keys, dtype=np.float64).reshape(-1)
            if keys.size != n or not np.isfinite(keys).all():
                raise DataError(f"choose needs {n} finite item_keys, got {keys.size}")
        if not (np.isfinite(person_key) and person_key >= 0):
            raise DataError(f"person_key must be a finite key >= 0 (0: unknown), got {person_key}")
        mask = None
        if new is not None:
            mask = np.asarray(new, dtype=bool).reshape(-1)
            if mask.size != n:
                raise DataError(f"choose needs {n} new-item flags, got {mask.size}")
        empty = np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, self.row_width))
        k = _slots(k, n, self.config.positions)
        if k == 0:
            return empty
        shown, _, propensity, rows = self._show(
            self._context_of(x, keys, float(person_key), mask), k)
        return shown, propensity, rows

    def _show(self, ctx: _Context, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One run of the policy for ``k <= candidates`` slots: the shown positions, every
        candidate's score (the sampled one for the plain policy, else the posterior mean), the
        shown slots' propensities and their feature rows."""
        x = ctx.x
        # one batch of runs: the first is the list shown, the others (independent of it) are
        # the first runs that count its returns, so both are one computation by construction;
        # counted by probing (``_probed_firsts``), the list is one run and the counting its own
        probed = _probes(ctx)
        draws = self._draw(ctx, 1 if probed else _RUNS)
        scores, picks = self._runs(ctx, len(draws), draws)
        shown = self._order(scores[0], -1 if picks is None else int(picks[0]), k)
        score = x @ draws[0] if ctx.plain else ctx.mean_scores()
        counts = self._return_counts(ctx, shown, (scores[1:], None if picks is None
                                                  else picks[1:]))
        rows = x[shown]
        if self.config.hierarchy:
            assert ctx.item_keys is not None
            rows = np.column_stack([rows, ctx.item_keys[shown],
                                    np.full(shown.size, ctx.person_key)])
        if self.config.positions:
            rows = np.column_stack([rows, np.arange(shown.size, dtype=np.float64)])
        return shown, score, 1.0 / counts, rows

    def _return_counts(self, ctx: _Context, shown: np.ndarray,
                       made: tuple[np.ndarray, np.ndarray | None] | None = None
                       ) -> np.ndarray:
        """Per slot: fresh runs of the policy until ``shown[slot]`` is in that slot again (the
        first run that puts it there counts), at most ``samples``: a geometric N, E[N] = 1/p.
        ``made``: runs already made (``_runs``'s scores and picks), used before new ones.

        A run puts candidate c in slot j when exactly j candidates rank above it (score higher,
        or equal and earlier), and, in the last slot, when the run has no budget pick (a pick
        takes that slot instead); only the slots still open are checked."""
        k = shown.size
        cap = self.config.samples
        counts = np.full(k, float(cap))
        open_ = list(range(k))
        used = batch = 0
        while open_ and used < cap:
            if made is not None:
                scores, picks = made[0][: cap - used], made[1]
                if picks is not None:
                    picks = picks[: cap - used]
                made = None
                if not len(scores):
                    continue
            elif _probes(ctx):
                size = min(_RUNS << min(batch, 8), _PROBED_RUNS, cap - used)
                batch += 1
                firsts, size = self._probed_firsts(ctx, size, shown, open_)
                for j, f in firsts.items():
                    if f >= 0:
                        counts[j] = used + f + 1
                        open_.remove(j)
                used += size
                continue
            else:
                scores, picks = self._runs(ctx, min(_RUNS << min(batch, 8), _batch(ctx),
                                                    cap - used))
                batch += 1
            b = len(scores)
            for j in list(open_):
                hit = _at(scores, int(shown[j]), j, getattr(self._work, "above", None))
                # a pick takes the last slot; it scores -inf, so no earlier one
                if picks is not None and j == k - 1:
                    hit = np.where(picks >= 0, picks == shown[j], hit)
                first = np.flatnonzero(hit)
                if first.size:
                    counts[j] = used + first[0] + 1
                    open_.remove(j)
            used += b
        return counts

    def _probed_firsts(self, ctx: _Context, size: int, shown: np.ndarray, open_: list[int]
                       ) -> tuple[dict[int, int], int]:
        """Up to ``size`` fresh runs of the policy with item offsets, for the open slots: per
        open slot j, the first run that puts ``shown[j]`` there (-1: none), and how many runs
        were made (they stop at the run that settles the last open slot).

        A run is ``_runs``'s computation (the same weight draw, the same float32 ``_product``
        and ``base + sd z``, z's 16-bit grid index from splitmix64 instead of the policy's
        generator, the same uniform draw), but it scores its candidates one at a time in the
        order of ``_Context.scoring_order``: the shown items, then the others by posterior
        mean.  A run in which more than j candidates already rank above ``shown[j]`` cannot
        put it in slot j, whatever the others score, and a run that no open slot can use any
        more stops.  Each score is computed alone (no sum runs across candidates) and each
        noise draw is its own, so leaving a run's other candidates unscored when no answer
        depends on them leaves each run's outcome distributed as before: the counts stay
        geometric, E[N] = 1/p.  A hard slot's item usually ranks far below its slot, and the
        best few candidates already say so.  The loop is compiled (``_kernels.count_runs``).
        """
        from serendip.explore._kernels import count_runs  # numba: loaded when first needed

        assert ctx.xm32 is not None and ctx.sd32 is not None
        w = _with_one(self._draw(ctx, size))
        picks = self._picks(ctx, size)
        k = shown.size
        xm, sd, cols = ctx.scoring_order(shown)
        slots = np.asarray(open_, dtype=np.int64)
        own = np.empty((slots.size, size), dtype=np.float32)
        above = np.empty((slots.size, size), dtype=np.int64)
        first = np.empty(slots.size, dtype=np.int64)
        with self._lock:
            seed = self._rng.integers(0, 1 << 64, dtype=np.uint64, endpoint=False)
        made = count_runs(w, np.zeros(0, dtype=np.int64) if picks is None else picks, xm, sd,
                          cols, NORMAL_GRID, np.uint64(seed), slots, k - 1, own, above, first)
        return {j: int(f) for j, f in zip(open_, first, strict=True)}, int(made)

    def _picks(self, ctx: _Context, size: int) -> np.ndarray | None:
        """Per run, the budget's pick for the last slot (-1: no budget this run); None without
        a budget."""
        if ctx.pool is None or ctx.share <= 0:
            return None
        with self._lock:
            budget = self._rng.random(size) < ctx.share
            picks = ctx.pool[self._rng.integers(ctx.pool.size, size=size)]
        return np.where(budget, picks, -1)

    def _draw(self, ctx: _Context, size: int) -> np.ndarray:
        """``size`` draws of a run's weights (mean + L z, L the Cholesky factor of their
        covariance, factored once per request); the generator is shared, so draws take the
        lock."""
        mean, chol = ctx.run_law()
        with self._lock:
            z = self._rng.standard_normal((size, mean.size))
        return z @ chol.T + mean

    def _rows(self, features: np.ndarray, what: str) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        widths = {len(FEATURES), self.row_width}
        if x.ndim != 2 or x.shape[1] not in widths or not np.isfinite(x).all():
            raise DataError(f"{what} needs finite n x {self.row_width} features, got {x.shape}")
        return x

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from shown slots: their feature rows and rewards (0 = shown, not taken).

        Rows of ``len(FEATURES)`` columns (no keys, no slot) teach the shared part only, as
        if shown in the top slot.  With ``positions`` each row is weighed by its slot's
        current examination rate e: ``A += e^2 x x'``, ``b += (e r - e^2 o) x``, o the other
        parts' means (``Examination``)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        d = len(FEATURES)
        if x.shape[1] not in {d, self.row_width} or x.shape[0] != r.size:
            raise DataError(
                f"update needs n x {self.row_width} features and n rewards, got {x.shape} and "
                f"{r.shape}"
            )
        if not (np.isfinite(x).all() and np.isfinite(r).all()):
            raise DataError("update features and rewards must be finite")
        st = self._require_trained()
        full = x.shape[1] == self.row_width > d
        keyed = self.config.hierarchy and full
        slots = self._slot_column(x) if full and self._exam is not None else None
        f = x[:, :d]
        with self._lock:
            shared = f @ np.linalg.solve(st["A"], st["b"])
            item = person = np.zeros(r.size)
            if keyed:
                item = np.array([self._item_offset(key) for key in x[:, d].tolist()])
                person = np.array([self._person_offset(key, row) for key, row
                                   in zip(x[:, d + 1].tolist(), f[:, _PCOLS], strict=True)])
            if slots is None:  # every row weighs 1: the plain sums
                e2 = np.ones(r.size)
                res_shared, res_person, res_item = (r - item - person, r - shared - item,
                                                    r - shared - person)
                st["A"] += f.T @ f
            else:
                assert self._exam is not None
                self._exam.observe_at(slots, shared + item + person, r)
                e = self._exam.rates_at(slots)
                e2 = e * e
                res_shared = e * r - e2 * (item + person)
                res_person = e * r - e2 * (shared + item)
                res_item = e * r - e2 * (shared + person)
                st["A"] += (f * e2[:, None]).T @ f
            st["b"] += f.T @ res_shared
            if not keyed:
                return
            for key, row, w2, res in zip(x[:, d + 1].tolist(), f[:, _PCOLS], e2, res_person,
                                         strict=True):
                if key > 0:
                    pa, pb = self._person(key)
                    pa += w2 * np.outer(row, row)
                    pb += row * res
            for j, key in enumerate(x[:, d].tolist()):
                got = self._item(key)
                got[0] += float(e2[j])
                got[1] += float(res_item[j])
            self._trim()

    def _slot_column(self, x: np.ndarray) -> np.ndarray:
        """The slot of each row (its last column with ``positions``), checked."""
        col = x[:, -1]
        bad = ~((col >= 0) & (col < _MAX_SLOTS) & (col == np.floor(col)))
        if bad.any():
            raise DataError(f"a row's slot must be an integer in 0..{_MAX_SLOTS - 1}, got "
                            f"{float(col[bad][0]):g}")
        return col.astype(np.int64)

    def _item_offset(self, key: float) -> float:
        got = self._items.get(key)
        return 0.0 if got is None else float(got[1] / (self.config.item_prior + got[0]))

    def _person_offset(self, key: float, row: np.ndarray) -> float:
        got = self._people.get(key)
        return 0.0 if got is None else float(row @ np.linalg.solve(got[0], got[1]))

    def _person(self, key: float) -> tuple[np.ndarray, np.ndarray]:
        got = self._people.get(key)
        if got is None:
            m = len(PERSONAL)
            got = self._people[key] = (np.eye(m) * self.config.person_prior, np.zeros(m))
        self._people.move_to_end(key)
        return got

    def _item(self, key: float) -> list[float]:
        got = self._items.get(key)
        if got is None:
            got = self._items[key] = [0.0, 0.0]
        self._items.move_to_end(key)
        return got

    def _trim(self) -> None:
        while len(self._people) > self.config.max_people:
            self._people.popitem(last=False)
        while len(self._items) > self.config.max_items:
            self._items.popitem(last=False)

    def credit(self, features: np.ndarray) -> None:
        """Reward 1 for slots already counted by ``update`` as shown with reward 0 (with
        ``positions``, weighed by the slot's current rate, and counted as the slot's click)."""
        x = self._rows(features, "credit")
        st = self._require_trained()
        d = len(FEATURES)
        full = x.shape[1] == self.row_width > d
        slots = self._slot_column(x) if full and self._exam is not None else None
        with self._lock:
            e = np.ones(x.shape[0])
            if slots is not None:
                assert self._exam is not None
                e = self._exam.rates_at(slots)
                for slot in slots.tolist():
                    self._exam.credit(slot)
            st["b"] += e @ x[:, :d]
            if not (self.config.hierarchy and full):
                return
            for row, w in zip(x, e, strict=True):
                if row[d + 1] > 0 and row[d + 1] in self._people:
                    self._people[row[d + 1]][1][:] += w * row[_PCOLS]
                if row[d] in self._items:
                    self._items[row[d]][1] += float(w)

    def examination(self) -> np.ndarray | None:
        """With ``positions``: a copy of the learnt slot curve's sums (``Examination.state``),
        saved next to ``statistics``; None without."""
        if self._exam is None:
            return None
        with self._lock:
            return self._exam.state()

    def set_examination(self, state: np.ndarray | None) -> None:
        """Restore ``examination()`` (ignored by a bandit without ``positions``)."""
        if self._exam is None or state is None:
            return
        with self._lock:
            self._exam.set_state(state)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the learned sums (A, b), e.g. to carry them to a refitted model.

        With ``hierarchy`` the offsets follow the shared ``b`` in the same vector:
        ``[b, n_people, n_items, (key, A, b) per person, (key, n, sum) per item]``, least
        recent first, so ``set_statistics`` restores them (and their recency) exactly."""
        st = self._require_trained()
        with self._lock:
            a, b = st["A"].copy(), st["b"].copy()
            if not self.config.hierarchy:
                return a, b
            people = [np.concatenate([[key], pa.ravel(), pb]) for key, (pa, pb)
                      in self._people.items()]
            items = [np.concatenate([[key], v]) for key, v in self._items.items()]
        parts = [b, [len(people), len(items)], *people, *items]
        return a, np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])

    def _widened(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums over ``_OLD_FEATURES`` (saved before ``shown`` existed) as sums over
        ``FEATURES``: every row they hold had ``shown`` = 0, so the new row and column of ``A``
        are the prior's (``prior`` on the diagonal) and ``b`` gains ``prior * m0``, exactly
        the sums the same rows give with the feature present.  Other shapes pass unchanged
        (``set_statistics`` checks them)."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        old, d = len(_OLD_FEATURES), len(FEATURES)
        if a.shape != (old, old) or b.ndim != 1 or b.size < old:
            return a, b
        prior = self._prior()
        wide = prior["A"].copy()
        wide[:old, :old] = a
        return wide, np.concatenate([b[:old], prior["b"][old:d], b[old:]])

    def set_statistics(self, a: np.ndarray, b: np.ndarray) -> None:
        d = len(FEATURES)
        a, b = self._widened(a, b)
        if a.shape != (d, d) or b.ndim != 1 or b.size < d or not (
                np.isfinite(a).all() and np.isfinite(b).all()):
            raise DataError(f"bandit statistics must be finite {d}x{d} and {d}, got {a.shape}, {b.shape}")
        people: OrderedDict[float, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        items: OrderedDict[float, list[float]] = OrderedDict()
        if b.size > d:  # offsets (see ``statistics``)
            m = len(PERSONAL)
            pw, iw = 1 + m * m + m, 3
            if not self.config.hierarchy or b.size < d + 2:
                raise DataError("bandit statistics hold per-person and per-item offsets, but "
                                "this bandit has hierarchy = false")
            n_p, n_i = int(b[d]), int(b[d + 1])
            if n_p < 0 or n_i < 0 or b.size != d + 2 + n_p * pw + n_i * iw:
                raise DataError(f"bandit statistics of {b.size} values do not hold {n_p} people "
                                f"and {n_i} items")
            rows = b[d + 2:]
            for row in rows[: n_p * pw].reshape(n_p, pw):
                people[float(row[0])] = (row[1 : 1 + m * m].reshape(m, m).copy(),
                                         row[1 + m * m :].copy())
            for row in rows[n_p * pw :].reshape(n_i, iw):
                items[float(row[0])] = row[1:].tolist()
        st = self._require_trained()
        with self._lock:
            st["A"][:] = a
            st["b"][:] = b[:d]
            self._people, self._items = people, items
            self._trim()

    def slot_distribution(self, query: Query, candidates: ItemList, k: int
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Monte Carlo estimate of the policy's distribution over items in each slot:
        ``(items, probs)`` with ``probs[i, p]`` the share of runs of the policy that put
        ``items[i]`` in slot ``p`` (over ``target_samples`` runs)."""
        k = min(int(k), len(candidates))
        ctx = self._context(query, candidates)
        order = self._orders(ctx, self.config.target_samples, k)
        probs = np.zeros((len(candidates), k))
        for p in range(k):
            probs[:, p] = np.bincount(order[:, p], minlength=len(candidates))
        probs /= self.config.target_samples
        return candidates.items, probs

    def weights(self) -> dict[str, float]:
        """The posterior mean weight of each feature (what the bandit has learned)."""
        mean, _ = self.posterior()
        return dict(zip(FEATURES, (float(m) for m in mean), strict=True))


def _slots(k: object, n: int, positions: bool = False) -> int:
    """``k`` checked (a positive integer; at most ``_MAX_SLOTS`` with ``positions``) and
    capped at the ``n`` candidates."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if positions and k > _MAX_SLOTS:
        raise ConfigError(f"k must be at most {_MAX_SLOTS} for a bandit with positions, got {k}")
    return min(int(k), n)


def _at(scores: np.ndarray, c: int, j: int, work: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``scores``: is candidate c in position j of the row's order (by score, ties
    to the earlier candidate)?  ``work``: a boolean buffer of at least ``scores.size``."""
    return _count_above(scores, scores[:, c], c, upto=j, work=work) == j


def _with_one(weights: np.ndarray) -> np.ndarray:
    """Runs' weights as float32 with a last column of ones (the item offsets' means)."""
    out = np.ones((weights.shape[0], weights.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = weights
    return out


def _sparse_rows(xm: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """Per row of a features x candidates matrix: the nonzero candidates when under
    1 / ``_SPARSE`` of them are nonzero (``_product`` adds only those), else None."""
    out = []
    for row in xm:
        nz = np.flatnonzero(row)
        out.append(nz if nz.size * _SPARSE < row.size else None)
    return tuple(out)


def _product(w: np.ndarray, xm: np.ndarray, *,
             sparse: Sequence[np.ndarray | None] | None = None, out: np.ndarray | None = None,
             tmp: np.ndarray | None = None) -> np.ndarray:
    """Runs' scores ``w @ xm`` (runs x features, features x candidates) in float32, each
    entry summed alone in a fixed order (w_0 x_0 + w_1 x_1, then + w_2 x_2, ...): the same
    bits whichever candidates or runs are computed with it (which a BLAS product does not
    promise), and the same as the compiled counting loop's (``_kernels.count_runs``).

    ``sparse`` (``_sparse_rows(xm)``): a feature that is 0 for most candidates (``shown``,
    often ``tail``) is added only where it is not, in its place in the order.  A term whose
    feature is 0 adds nothing but the sign of a zero (``s + 0 == s``), so every sum keeps
    its value.
    """
    runs, n = w.shape[0], xm.shape[1]
    out = np.empty((runs, n), dtype=np.float32) if out is None else out
    tmp = np.empty((runs, n), dtype=np.float32) if tmp is None else tmp
    for f in range(w.shape[1]):
        nz = None if sparse is None else sparse[f]
        if nz is not None and nz.size * _SPARSE_COLUMNS >= n:
            nz = None  # gathering columns of runs x candidates pays only when very sparse
        wf, xf = w[:, f, None], xm[None, f]
        if f == 0:
            np.multiply(xf, wf, out=out)
        elif nz is not None:
            if nz.size:
                out[:, nz] += w[:, f, None] * xm[f][None, nz]
        else:
            np.multiply(xf, wf, out=tmp)
            out += tmp
    return out


def _batch(ctx: _Context) -> int:
    """Runs per batch over this request's candidates: about ``_BATCH_SCORES`` scores."""
    return int(np.clip(_BATCH_SCORES // max(ctx.x.shape[0], 1), _RUNS, _MAX_RUNS))


def _probes(ctx: _Context) -> bool:
    """Whether counting runs are probed (``_probed_firsts``): with item offsets.  Without
    them a run is one product over all candidates and the list shown is the first run of the
    first counting batch."""
    return ctx.sd32 is not None


def _count_above(scores: np.ndarray, own: np.ndarray, c: int, *, upto: int | None = None,
                 work: np.ndarray | None = None) -> np.ndarray:
    """Per run (a row of ``scores``, runs x candidates in order): how many candidates rank
    above the one in column c, whose score in that run is ``own``: a higher score, or an equal
    one and an earlier column.  ``upto``: the runs with more than that many higher scores skip
    the ties, as the answer there is only compared with ``upto``.  ``work``: a boolean buffer
    of at least ``scores.size`` for the comparisons."""
    wide = own[:, None]
    n = scores.shape[1]
    kind = np.uint16 if n < 1 << 16 else np.int64
    gt = (scores > wide if work is None
          else np.greater(scores, wide, out=work[: scores.size].reshape(scores.shape)))
    # a sum of the comparisons as bytes (several times faster than count_nonzero)
    above = np.add.reduce(gt.view(np.uint8), axis=1, dtype=kind)
    if not c:
        return above
    rows = np.flatnonzero(above <= upto) if upto is not None else slice(None)
    # equal scores before c move it down
    above[rows] += np.add.reduce((scores[rows, :c] == wide[rows]).view(np.uint8), axis=1,
                                 dtype=kind)
    return above


class _Context:
    """One request's posterior, drawn from many times (the list, then its propensities)."""

    def __init__(self, x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
        self.x, self.mean, self.cov = x, mean, cov
        self.x32 = np.ascontiguousarray(x.T, dtype=np.float32)  # features x candidates
        self.xm32: np.ndarray | None = None  # with item offsets: x32 and a row of their means
        self.sd32: np.ndarray | None = None
        self.item_keys: np.ndarray | None = None
        self.person_key = 0.0
        self.item_mean: np.ndarray | None = None
        self.item_sd: np.ndarray | None = None
        self.person_mean: np.ndarray | None = None
        self.person_chol: np.ndarray | None = None
        self.pool: np.ndarray | None = None  # candidate positions the budget slot draws from
        self.share = 0.0
        self._law: tuple[np.ndarray, np.ndarray] | None = None
        self._rank: np.ndarray | None = None  # candidates by posterior mean, best first
        self._order: tuple[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._sparse: tuple[np.ndarray | None, ...] | None = None

    def sparse(self) -> tuple[np.ndarray | None, ...]:
        """``_sparse_rows`` of ``xm32`` (computed once per request)."""
        assert self.xm32 is not None
        if self._sparse is None:
            self._sparse = _sparse_rows(self.xm32)
        return self._sparse

    @property
    def run_mean(self) -> np.ndarray:
        """Mean of a run's weights: the shared ones plus the person's on ``PERSONAL``."""
        if self.person_mean is None:
            return self.mean
        out = self.mean.copy()
        out[_PCOLS] += self.person_mean
        return out

    @property
    def run_cov(self) -> np.ndarray:
        """Covariance of a run's weights (the shared and the person's parts are independent)."""
        if self.person_chol is None:
            return self.cov
        out = self.cov.copy()
        out[np.ix_(_PCOLS, _PCOLS)] += self.person_chol @ self.person_chol.T
        return out

    def scoring_order(self, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features with the offsets' means, offsets' sd and candidate positions, in the order
        a counting run scores them (``_kernels.count_runs``): the shown items in slot order,
        then the others by posterior mean, best first; kept while the shown items stay."""
        assert self.xm32 is not None and self.sd32 is not None
        key = tuple(int(t) for t in shown)
        if self._order is None or self._order[0] != key:
            if self._rank is None:
                self._rank = np.argsort(-self.mean_scores(), kind="stable")
            rest = np.ones(self.x.shape[0], dtype=bool)
            rest[list(key)] = False
            cols = np.concatenate([np.asarray(key, dtype=np.int64),
                                   self._rank[rest[self._rank]]])
            self._order = key, (np.ascontiguousarray(self.xm32[:, cols]), self.sd32[cols], cols)
        return self._order[1]

    def run_law(self) -> tuple[np.ndarray, np.ndarray]:
        """A run's weights' mean and the Cholesky factor of their covariance, computed once."""
        if self._law is None:
            self._law = self.run_mean, np.linalg.cholesky(self.run_cov)
        return self._law

    @property
    def plain(self) -> bool:
        """No offsets and no budget: the shared Thompson draw alone."""
        return self.item_mean is None and self.person_mean is None and self.pool is None

    def mean_scores(self) -> np.ndarray:
        out = self.x @ self.mean
        if self.item_mean is not None:
            out = out + self.item_mean
        if self.person_mean is not None:
            out = out + self.x[:, _PCOLS] @ self.person_mean
        return np.asarray(out)
