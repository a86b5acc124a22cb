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
- ``bias``: 1.

Learning is two running sums over shown slots, ``A += x x'`` and ``b += r x`` (ridge
regression's sufficient statistics), so a slot can be counted as "shown, no reward" at once
and credited later with ``reward(x)`` (``b += x``) when a click arrives.

Propensities.  The marginal probability p that a Thompson-sampled slate puts an item in a slot
has no closed form.  What off-policy evaluation needs is 1/p (the importance weight's
denominator), and that has an unbiased estimate: after showing the list, draw fresh posterior
samples until the shown item lands in its slot again; the number of draws N is geometric with
mean exactly 1/p, and ``propensity`` is logged as 1/N.  N is capped at ``samples`` draws, so
E[N] = (1 - (1 - p)^samples) / p: with the default 10,000 that factor is within 1e-6 of 1
for p >= 0.0014.  An earlier estimate, "the share of 200 draws, the shown one included, that
put the item there", has E[1 / estimate] = (1 - (1 - p)^200) / p (since E[1 / (1 + Bin(199,
p))] = (1 - (1 - p)^200) / (200 p)): IPS weights biased low by that factor, 0.27 at
p = 0.0016.  Its replacement costs about as many draws as the slot's distribution has likely
items, in batches.
"""

from __future__ import annotations

import threading

import numpy as np
from pydantic import Field

from serendip.component import Component, ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError
from serendip.eval.metrics import head_by_item_share
from serendip.models.semantic import normalized_vectors
from serendip.types import ItemList, Query

__all__ = ["LinearTS", "LinearTSConfig", "FEATURES"]

FEATURES = ("bias", "relevance", "unexpectedness", "novelty", "tail")


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

    def model_post_init(self, __context: object) -> None:
        unknown = sorted(set(self.prior_mean) - set(FEATURES))
        if unknown:
            raise ValueError(f"prior_mean names unknown features {unknown}; valid: {list(FEATURES)}")
        bad = {k: v for k, v in self.prior_mean.items() if not np.isfinite(v) or abs(v) > 1e3}
        if bad:
            raise ValueError(f"prior_mean weights must be finite and within +-1000, got {bad}")


class LinearTS(Component):
    """Thompson sampling over ``FEATURES`` of the candidates; learns from ``update``."""

    name = "linear_ts"
    config_class = LinearTSConfig
    config: LinearTSConfig

    def train(self, data: Dataset) -> None:
        pop = np.asarray(data.item_popularity, dtype=np.float64)
        info = -np.log2(np.maximum(pop, 1.0) / max(int(data.n_users), 1))
        d = len(FEATURES)
        m0 = np.array([self.config.prior_mean.get(f, 0.0) for f in FEATURES])
        self._set_state(
            A=np.eye(d) * self.config.prior, b=self.config.prior * m0,  # posterior mean = m0
            novelty=info / max(float(info.max()), 1e-12),
            tail=(~head_by_item_share(pop, 0.2)).astype(np.float64),
            vectors=normalized_vectors(data, self.name),
        )

    def _after_load(self) -> None:
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.Lock()

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
        return np.column_stack([np.ones(idx.size), rel, unexp, st["novelty"][idx],
                                st["tail"][idx]])

    # ------------------------------------------------------------------ policy
    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and covariance of the weights (ridge solution, noise^2 A^-1)."""
        st = self._require_trained()
        with self._lock:
            a, b = st["A"].copy(), st["b"].copy()
        cov = np.linalg.inv(a)
        return cov @ b, (self.config.noise**2) * cov

    def __call__(self, query: Query, candidates: ItemList, k: int) -> ItemList:  # type: ignore[override]
        """The k candidates with the best sampled reward, each with ``propensity`` (1 / N, N the
        fresh draws until it returns to its slot: 1 / propensity is unbiased for 1 / p),
        ``features`` rows and the sampled score."""
        if not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        x = self.features(query, candidates)
        k = min(int(k), len(candidates))
        if k == 0:
            return ItemList.empty()
        mean, cov = self.posterior()
        draw = self._draw(mean, cov, 1)[0]
        score = x @ draw
        shown = np.argsort(-score, kind="stable")[:k]
        counts = self._return_counts(mean, cov, x, shown)
        lst = candidates.take(shown)
        return (lst.with_scores(score[shown])
                .with_field("propensity", 1.0 / counts)
                .with_field("features", x[shown])
                .with_field("relevance", candidates.scores[shown]))

    def _return_counts(self, mean: np.ndarray, cov: np.ndarray, x: np.ndarray,
                       shown: np.ndarray) -> np.ndarray:
        """Per slot: fresh posterior draws until ``shown[slot]`` is in that slot again (the
        first draw that puts it there counts), at most ``samples``: a geometric N, E[N] = 1/p."""
        k = shown.size
        cap = self.config.samples
        counts = np.zeros(k)
        open_ = np.ones(k, dtype=bool)
        used, batch = 0, 64
        while open_.any() and used < cap:
            b = min(batch, cap - used)
            scores = self._draw(mean, cov, b) @ x.T  # b x candidates
            if k < scores.shape[1]:
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                order = np.take_along_axis(
                    top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1,
                                    kind="stable"), axis=1)
            else:
                order = np.argsort(-scores, axis=1, kind="stable")
            hit = order == shown[None, :]  # b x k
            first = np.where(hit.any(axis=0), hit.argmax(axis=0), -1)
            done = open_ & (first >= 0)
            counts[done] = used + first[done] + 1
            open_ &= ~done
            used += b
            batch = min(batch * 4, 4096)
        counts[open_] = cap
        return counts

    def _draw(self, mean: np.ndarray, cov: np.ndarray, size: int) -> np.ndarray:
        """``size`` posterior draws; the generator is shared, so draws take the lock."""
        with self._lock:
            return self._rng.multivariate_normal(mean, cov, size=size, method="cholesky")

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from shown slots: their feature rows and rewards (0 = shown, not taken)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if x.shape[1] != len(FEATURES) or x.shape[0] != r.size:
            raise DataError(
                f"update needs n x {len(FEATURES)} features and n rewards, got {x.shape} and "
                f"{r.shape}"
            )
        if not (np.isfinite(x).all() and np.isfinite(r).all()):
            raise DataError("update features and rewards must be finite")
        st = self._require_trained()
        with self._lock:
            st["A"] += x.T @ x
            st["b"] += x.T @ r

    def credit(self, features: np.ndarray) -> None:
        """Reward 1 for slots already counted by ``update`` as shown with reward 0."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != len(FEATURES) or not np.isfinite(x).all():
            raise DataError(f"credit needs finite n x {len(FEATURES)} features, got {x.shape}")
        st = self._require_trained()
        with self._lock:
            st["b"] += x.sum(axis=0)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the learned sums (A, b), e.g. to carry them to a refitted model."""
        st = self._require_trained()
        with self._lock:
            return st["A"].copy(), st["b"].copy()

    def set_statistics(self, a: np.ndarray, b: np.ndarray) -> None:
        d = len(FEATURES)
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != (d, d) or b.shape != (d,) or not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise DataError(f"bandit statistics must be finite {d}x{d} and {d}, got {a.shape}, {b.shape}")
        st = self._require_trained()
        with self._lock:
            st["A"][:] = a
            st["b"][:] = b

    def slot_distribution(self, query: Query, candidates: ItemList, k: int
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Monte Carlo estimate of the policy's distribution over items in each slot:
        ``(items, probs)`` with ``probs[i, p]`` the share of posterior draws that put
        ``items[i]`` in slot ``p`` (over ``target_samples`` draws)."""
        x = self.features(query, candidates)
        k = min(int(k), len(candidates))
        mean, cov = self.posterior()
        draws = self._draw(mean, cov, self.config.target_samples)
        order = np.argsort(-(draws @ x.T), axis=1, kind="stable")[:, :k]
        probs = np.zeros((len(candidates), k))
        for p in range(k):
            probs[:, p] = np.bincount(order[:, p], minlength=len(candidates))
        probs /= self.config.target_samples
        return candidates.items, probs

    def weights(self) -> dict[str, float]:
        """The posterior mean weight of each feature (what the bandit has learned)."""
        mean, _ = self.posterior()
        return dict(zip(FEATURES, (float(m) for m in mean), strict=True))
