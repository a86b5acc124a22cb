"""A simulated world in which exploration can earn (or fail to earn) its keep.

Replaying held-out ratings cannot show what exploration is worth: a held-out item pays on
every visit, deterministically, wherever it is shown.  This world is stochastic and changes
with what it is shown:

- **Hidden preferences.**  ``fit_preferences`` fits a low-rank model (truncated SVD of the
  liked-or-not matrix, rating >= 4) on *all* the ratings; a person's click probability for an
  item at the top slot is ``sigmoid(offset + sharpness * z)``, z the standardised low-rank
  score, with the offset calibrated so that a person's ``calibration_items`` best items are
  clicked with mean probability ``top_click``.  The policies never see this model: they see a
  model of their own (serendip's EASE) trained on the first ``history_share`` of each
  person's ratings, in time order.
- **Two kinds of taste.**  A hidden share ``novelty_share`` of people add
  ``novelty_gain * novelty`` to the logit (novelty: self-information of the item's observed
  popularity, scaled to [0, 1]); the others do not.
- **Position bias.**  Slot p (0 first) is examined with probability ``(p + 1) **
  -position_decay``; a click needs examination and attraction (the examination hypothesis).
- **Satiation.**  Each earlier showing of an item to a person multiplies its click probability
  by ``shown_decay``, each earlier click by ``consumed_decay``.
- **New items.**  A share ``new_share`` of the items (among those with at least
  ``new_min_ratings`` ratings, so the hidden model knows them) is held out of everything the
  policies see and released in ``releases`` equal batches at evenly spaced visits; before its
  release an item is never a candidate and never clicked.

Every visit, a person drawn at random gets a candidate pool (the base model's best items, the
text-nearest tail items and the text-nearest released new items), a feature matrix
(``FEATURES``), and a slate of ``slots`` items from each policy.  Policies share the visit
sequence and the uniform draws that decide clicks (common random numbers), each in its own copy
of the world's state (showings, clicks, profiles).

Metrics: cumulative clicks; regret against the oracle that knows the hidden click
probabilities and places the pool's best items in order (optimal for this visit by the
rearrangement inequality; it is myopic, as it does not plan around satiation), computed from
expected rewards in the policy's own state, so it is never negative and the oracle's is 0;
discovery: distinct *relevant* tail or new items a person clicked (relevant: hidden top-slot
click probability, before satiation, at least ``relevant``), averaged over all people.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serendip.errors import ConfigError, DataError
from serendip.explore.policies import (
    EpsilonGreedySlate,
    HierSquareCBSlate,
    NewItemBudget,
    PersonalThompsonSlate,
    RandomSlate,
    RidgeSlate,
    SlateChoice,
    SlateContext,
    SlatePolicy,
    SquareCBSlate,
    ThompsonSlate,
    UCBSlate,
)

__all__ = [
    "FEATURES", "WorldConfig", "World", "Oracle", "fit_preferences", "build_world",
    "run_policy", "Trace", "summarize", "POLICY_NAMES", "make_policy", "simulate",
    "format_table", "verdict", "timing", "timing_in_world", "SERENDIP_POLICIES", "LIBRARY_POLICIES", "ABLATIONS",
    "plot_traces",
    "VowpalWabbitSlate", "MabwiserSlate", "t_interval", "ServedLinearTS",
]

FEATURES = ("bias", "relevance", "similarity", "novelty", "tail", "new", "shown", "clicked")
_COL = {name: i for i, name in enumerate(FEATURES)}


class WorldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: int = Field(5, ge=1, le=50, description="items per slate")
    base_candidates: int = Field(60, ge=1, le=5000, description="pool: the base model's best")
    tail_candidates: int = Field(20, ge=0, le=5000, description="pool: text-nearest tail items")
    new_candidates: int = Field(20, ge=0, le=5000, description="pool: text-nearest new items")
    rank: int = Field(24, ge=1, le=500, description="rank of the hidden preference model")
    sharpness: float = Field(1.5, gt=0, le=20, description="logit slope on the hidden score")
    top_click: float = Field(0.3, gt=0, lt=1, description="mean top-slot click probability "
                             "of a person's calibration_items best items")
    calibration_items: int = Field(20, ge=1, le=1000)
    position_decay: float = Field(0.7, ge=0, le=10, description="slot p examined w.p. (p+1)^-d")
    shown_decay: float = Field(0.8, ge=0, le=1, description="factor per earlier showing")
    consumed_decay: float = Field(0.2, ge=0, le=1, description="factor per earlier click")
    novelty_share: float = Field(0.3, ge=0, le=1, description="hidden share of novelty lovers")
    novelty_gain: float = Field(3.0, ge=0, le=50, description="their logit bonus x novelty")
    new_share: float = Field(0.1, ge=0, lt=1, description="share of items held back as new")
    new_min_ratings: int = Field(5, ge=0)
    releases: int = Field(4, ge=1, le=1000, description="release batches of the new items")
    relevant: float = Field(0.25, gt=0, lt=1, description="hidden click probability at which "
                            "an item counts as relevant for discovery")
    head_share: float = Field(0.2, gt=0, lt=1, description="head: most popular item share")
    history_share: float = Field(0.5, gt=0, le=1, description="share of each person's ratings "
                                 "(earliest first) the policies' model sees")
    ease_l2: float = Field(200.0, gt=0, description="l2 of the policies' EASE model")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def fit_preferences(likes: Any, rank: int) -> np.ndarray:
    """Standardised rank-``rank`` SVD reconstruction of a users x items 0/1 matrix."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    m = sp.csr_matrix(likes, dtype=np.float64)
    k = min(rank, min(m.shape) - 1)
    if k < 1:
        raise DataError(f"the preference model needs at least 2 users and 2 items, got {m.shape}")
    u, s, vt = svds(m, k=k, random_state=0)
    z = (u * s) @ vt
    return np.asarray((z - z.mean()) / max(float(z.std()), 1e-12))


def calibrate_offset(z: np.ndarray, sharpness: float, top_click: float, n_top: int) -> float:
    """The logit offset at which each person's ``n_top`` best items (by z) have mean click
    probability ``top_click`` (bisection; monotone in the offset)."""
    n_top = min(n_top, z.shape[1])
    top = -np.partition(-z, n_top - 1, axis=1)[:, :n_top]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(_sigmoid(mid + sharpness * top).mean()) < top_click:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class World:
    """The hidden click model, what policies may see, and one policy's state in it.

    Built from arrays (``build_world`` makes them from a Dataset), so tests can plant any
    world: ``click_prob`` (users x items, hidden top-slot click probabilities, satiation not
    applied), ``histories`` (what each person had consumed before, never a candidate),
    ``base_scores`` (the policies' model), ``vectors`` (item text vectors), ``popularity``
    (observed), ``new_items`` with their ``release_at`` visit.
    """

    def __init__(self, click_prob: np.ndarray, histories: Sequence[np.ndarray],
                 base_scores: np.ndarray, vectors: np.ndarray, popularity: np.ndarray,
                 config: WorldConfig | None = None, *,
                 new_items: np.ndarray | None = None, release_at: np.ndarray | None = None,
                 ) -> None:
        self.config = config or WorldConfig()
        q = np.asarray(click_prob, dtype=np.float64)
        if q.ndim != 2 or not np.isfinite(q).all() or q.min() < 0 or q.max() > 1:
            raise DataError("click_prob must be a users x items matrix of probabilities")
        self.n_users, self.n_items = q.shape
        if len(histories) != self.n_users or base_scores.shape != q.shape:
            raise DataError(f"histories and base_scores must cover {q.shape}")
        if vectors.shape[0] != self.n_items or popularity.shape != (self.n_items,):
            raise DataError(f"vectors and popularity must have {self.n_items} rows")
        self.q = q
        self.histories = [np.asarray(h, dtype=np.int64) for h in histories]
        self.base = np.asarray(base_scores, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.new_items = (np.zeros(0, dtype=np.int64) if new_items is None
                          else np.asarray(new_items, dtype=np.int64))
        self.release_at = (np.zeros(self.new_items.size, dtype=np.int64) if release_at is None
                           else np.asarray(release_at, dtype=np.int64))
        if self.release_at.shape != self.new_items.shape:
            raise DataError("release_at needs one visit per new item")
        from serendip.eval.metrics import head_by_item_share

        self.is_new = np.zeros(self.n_items, dtype=bool)
        self.is_new[self.new_items] = True
        self.release = np.full(self.n_items, -1, dtype=np.int64)
        self.release[self.new_items] = self.release_at
        known_pop = np.where(self.is_new, 0.0, self.popularity)
        self.tail = ~head_by_item_share(known_pop, self.config.head_share) | self.is_new
        info = -np.log2(np.maximum(known_pop, 1.0) / max(self.n_users, 1))
        self.novelty = info / max(float(info.max()), 1e-12)
        self.relevant = self.q >= self.config.relevant
        self.position = (np.arange(self.config.slots) + 1.0) ** -self.config.position_decay
        self.population = np.arange(self.n_users)  # whom discovery is averaged over
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """A fresh state: nothing shown or clicked, profiles from the histories."""
        self.shows = np.zeros((self.n_users, self.n_items), dtype=np.int32)
        self.clicks = np.zeros((self.n_users, self.n_items), dtype=np.int32)
        self.found = np.zeros((self.n_users, self.n_items), dtype=bool)
        self.profile = np.zeros((self.n_users, self.vectors.shape[1]), dtype=np.float32)
        self.blocked = np.zeros((self.n_users, self.n_items), dtype=bool)
        for u, h in enumerate(self.histories):
            if h.size:
                self.profile[u] = self.vectors[h].sum(axis=0)
                self.blocked[u, h] = True

    def released(self, visit: int) -> np.ndarray:
        """Bool mask of items a policy may show at this visit."""
        return ~self.is_new | ((self.release >= 0) & (self.release <= visit))

    # ------------------------------------------------------------------ what policies see
    def candidates(self, user: int, visit: int) -> np.ndarray:
        cfg = self.config
        ok = self.released(visit) & ~self.blocked[user]
        sim = self._similarity(user)
        out: list[np.ndarray] = []
        taken = np.zeros(self.n_items, dtype=bool)
        for mask, score, n in ((ok & ~self.is_new, self.base[user], cfg.base_candidates),
                               (ok & self.tail & ~self.is_new, sim, cfg.tail_candidates),
                               (ok & self.is_new, sim, cfg.new_candidates)):
            idx = np.flatnonzero(mask & ~taken)
            if idx.size and n:
                k = min(n, idx.size)
                pick = idx[np.argpartition(-score[idx], k - 1)[:k]] if k < idx.size else idx
                pick = pick[np.lexsort((pick, -score[pick]))]
                taken[pick] = True
                out.append(pick)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _similarity(self, user: int) -> np.ndarray:
        p = self.profile[user]
        n = float(np.linalg.norm(p))
        return np.asarray((1.0 + (self.vectors @ (p / n))) / 2.0 if n > 0 else
                          np.full(self.n_items, 0.5))

    def features(self, user: int, items: np.ndarray) -> np.ndarray:
        """``len(items) x len(FEATURES)`` rows, each feature in [0, 1]."""
        s = self.base[user, items]
        span = float(s.max() - s.min()) if s.size else 0.0
        rel = (s - s.min()) / span if span > 0 else np.ones(items.size)
        p = self.profile[user]
        n = float(np.linalg.norm(p))
        sim = (1.0 + self.vectors[items] @ (p / n)) / 2.0 if n > 0 else np.full(items.size, 0.5)
        return np.column_stack([
            np.ones(items.size), rel, sim, self.novelty[items], self.tail[items],
            self.is_new[items], 1.0 - 0.5 ** self.shows[user, items],
            self.clicks[user, items] > 0,
        ]).astype(np.float64)

    def context(self, user: int, visit: int) -> SlateContext:
        items = self.candidates(user, visit)
        return SlateContext(user, items, self.features(user, items), self.is_new[items])

    # ------------------------------------------------------------------ the hidden side
    def click_probability(self, user: int, items: np.ndarray) -> np.ndarray:
        """Top-slot click probability now, satiation applied (position not)."""
        cfg = self.config
        return np.asarray(self.q[user, items] * cfg.shown_decay ** self.shows[user, items]
                          * cfg.consumed_decay ** self.clicks[user, items])

    def expected(self, user: int, items: np.ndarray) -> float:
        """Expected clicks of a slate (slot order) in the current state."""
        return float(self.click_probability(user, items) @ self.position[: items.size])

    def best(self, user: int, items: np.ndarray, k: int) -> np.ndarray:
        """Positions of the oracle's slate: the k highest probabilities, in order."""
        p = self.click_probability(user, items)
        k = min(k, p.size)
        return np.lexsort((np.arange(p.size), -p))[:k]

    def step(self, user: int, items: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Show ``items`` (slot order); clicks decided by ``uniforms``; the state moves on."""
        p = self.click_probability(user, items) * self.position[: items.size]
        clicked = uniforms[: items.size] < p
        got = items[clicked]
        self.shows[user, items] += 1
        self.clicks[user, got] += 1
        if got.size:
            self.profile[user] += self.vectors[got].sum(axis=0)
            keep = got[self.relevant[user, got] & self.tail[got]]
            self.found[user, keep] = True
        return clicked.astype(np.float64)

    def discovery(self) -> tuple[float, float]:
        """Distinct relevant tail-or-new items clicked, and new ones alone, per person of the
        visiting population."""
        n = max(self.population.size, 1)
        return float(self.found.sum()) / n, float(self.found[:, self.is_new].sum()) / n


class Oracle:
    """Knows the hidden click probabilities: the best slate of the pool for this visit."""

    def __init__(self, world: World, name: str = "oracle") -> None:
        self.world = world
        self.name = name

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        pos = self.world.best(ctx.user, ctx.items, k)
        return SlateChoice(pos, np.ones(pos.size))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        return None


# ---------------------------------------------------------------------------------- building
def build_world(data: Any, vectors: np.ndarray, config: WorldConfig, seed: int, visits: int,
                likes_threshold: float = 4.0) -> World:
    """A world from a Dataset with ratings (MovieLens-100K): the hidden model from all of it,
    the policies' EASE from each person's first ``history_share`` of ratings."""
    import pandas as pd
    import scipy.sparse as sp

    from serendip.models.ease import EASE
    from serendip.types import Query

    inter = data.interactions
    if "rating" not in inter.columns:
        raise DataError("the simulator's hidden model needs ratings")
    rng = np.random.default_rng(seed)
    n_u, n_i = int(data.n_users), int(data.n_items)
    liked = inter[inter["rating"] >= likes_threshold]
    likes = sp.csr_matrix((np.ones(len(liked)), (liked["user"], liked["item"])), shape=(n_u, n_i))
    z = fit_preferences(likes, config.rank)
    counts = np.bincount(inter["item"], minlength=n_i)
    eligible = np.flatnonzero(counts >= config.new_min_ratings)
    n_new = int(round(config.new_share * n_i))
    new_items = np.sort(rng.choice(eligible, size=min(n_new, eligible.size), replace=False))
    novelty_lover = rng.random(n_u) < config.novelty_share
    info = -np.log2(np.maximum(counts, 1.0) / n_u)
    novelty = info / max(float(info.max()), 1e-12)
    offset = calibrate_offset(z, config.sharpness, config.top_click, config.calibration_items)
    logit = offset + config.sharpness * z + np.outer(novelty_lover, config.novelty_gain * novelty)
    q = _sigmoid(logit)
    # what the policies see: each person's earliest ratings, new items left out
    order = inter.sort_values(["user", "timestamp", "item"], kind="stable")
    rank_in_user = order.groupby("user").cumcount()
    size = order.groupby("user")["item"].transform("size")
    seen = order[(rank_in_user < np.ceil(config.history_share * size))
                 & ~order["item"].isin(new_items)]
    observed = data.with_interactions(pd.DataFrame(seen[["user", "item", "timestamp", "rating"]]))
    histories = [observed.history(u) for u in range(n_u)]
    ease = EASE({"l2": config.ease_l2})
    ease.train(observed)
    base = ease.score_many([Query(u, histories[u]) for u in range(n_u)])
    release_at = (np.arange(new_items.size) * config.releases // max(new_items.size, 1) + 1) \
        * visits // (config.releases + 1)
    world = World(q, histories, base, vectors, np.asarray(observed.item_popularity, float),
                  config, new_items=new_items, release_at=rng.permutation(release_at))
    world.novelty_lover = novelty_lover  # type: ignore[attr-defined]
    return world


# ---------------------------------------------------------------------------------- running
@dataclass
class Trace:
    """One policy, one seed: per visit rewards and expected regret; discovery at checkpoints."""

    name: str
    seed: int
    clicks: np.ndarray
    regret: np.ndarray
    checkpoints: np.ndarray
    discovery: np.ndarray
    new_discovery: np.ndarray
    select_s: float = 0.0
    update_s: float = 0.0
    propensities: list[np.ndarray] = field(default_factory=list)
    key: str = ""
    #: with ``keep_times``: per visit that had candidates, (visit, select seconds, update
    #: seconds per event)
    times: list[tuple[int, float, float]] = field(default_factory=list)


def run_policy(world: World, policy: SlatePolicy, users: np.ndarray, uniforms: np.ndarray,
               *, seed: int = 0, checkpoints: int = 20, keep_propensities: bool = False,
               keep_times: bool = False) -> Trace:
    """Run ``policy`` for ``len(users)`` visits from a fresh state of ``world``."""
    world.reset()
    if isinstance(policy, Oracle):
        policy.world = world
    n = len(users)
    k = world.config.slots
    clicks = np.zeros(n)
    regret = np.zeros(n)
    marks = np.unique(np.linspace(0, n, checkpoints + 1).astype(np.int64)[1:])
    disc, disc_new = np.zeros(marks.size), np.zeros(marks.size)
    sel = upd = 0.0
    props: list[np.ndarray] = []
    times: list[tuple[int, float, float]] = []
    m = 0
    for t in range(n):
        u = int(users[t])
        ctx = world.context(u, t)
        if ctx.items.size:
            t0 = time.perf_counter()
            choice = policy.select(ctx, k)
            t1 = time.perf_counter()
            shown = ctx.items[choice.positions]
            best = ctx.items[world.best(u, ctx.items, k)]
            regret[t] = max(world.expected(u, best) - world.expected(u, shown), 0.0)
            r = world.step(u, shown, uniforms[t])
            clicks[t] = r.sum()
            t2 = time.perf_counter()
            policy.update(ctx, choice, r)
            t3 = time.perf_counter()
            upd += t3 - t2
            sel += t1 - t0
            if keep_propensities:
                props.append(np.asarray(choice.propensity))
            if keep_times:
                times.append((t, t1 - t0, (t3 - t2) / max(choice.positions.size, 1)))
        while m < marks.size and t + 1 == marks[m]:
            disc[m], disc_new[m] = world.discovery()
            m += 1
    return Trace(policy.name, seed, clicks, regret, marks, disc, disc_new, sel, upd, props,
                 times=times)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95
               ) -> tuple[float, float]:
    """Mean and half-width of the t interval over seeds (0 with one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), 0.0
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), half


def summarize(traces: Sequence[Trace], slots: int) -> list[dict[str, Any]]:
    """Per policy, mean and 95% t half-width over seeds of each metric (first seen order)."""
    names = list(dict.fromkeys(t.name for t in traces))
    out = []
    for name in names:
        ts = [t for t in traces if t.name == name]
        events = sum(t.clicks.size for t in ts)
        row: dict[str, Any] = {"policy": name, "key": ts[0].key or name, "seeds": len(ts)}
        for key, vals in (("reward", [t.clicks.sum() for t in ts]),
                          ("regret", [t.regret.sum() for t in ts]),
                          ("discovery", [t.discovery[-1] for t in ts]),
                          ("new_discovery", [t.new_discovery[-1] for t in ts])):
            row[key], row[key + "_ci"] = t_interval(vals)
            row[key + "_seeds"] = [float(v) for v in vals]
        row["select_ms"] = 1e3 * sum(t.select_s for t in ts) / max(events, 1)
        row["update_ms"] = 1e3 * sum(t.update_s for t in ts) / max(events * slots, 1)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------- policies
class VowpalWabbitSlate:
    """Vowpal Wabbit's ``--cb_explore_adf`` (one action per candidate, the simulator's features
    as its features) filling a slate slot by slot: each slot draws from VW's distribution over
    the candidates left, renormalised, and logs that probability; each shown slot is then
    learnt as its own example (cost = -reward) with that probability."""

    def __init__(self, dim: int, args: str = "--squarecb", seed: int = 0,
                 name: str | None = None) -> None:
        from vowpalwabbit import Workspace

        self.name = name or f"VW cb_explore_adf {args}"
        self.vw = Workspace(f"--cb_explore_adf {args} --quiet --random_seed {seed}")
        self._rng = np.random.default_rng(seed)
        self.dim = dim

    def _lines(self, x: np.ndarray) -> list[str]:
        return ["shared |u c:1"] + [
            "|a " + " ".join(f"f{j}:{v:.5g}" for j, v in enumerate(row) if v) for row in x]

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        pmf = np.asarray(self.vw.predict(self._lines(ctx.features)), dtype=np.float64)
        left = np.ones(pmf.size, dtype=bool)
        pos, prop = [], []
        for _ in range(min(k, pmf.size)):
            p = np.where(left, pmf, 0.0)
            total = float(p.sum())
            p = p / total if total > 0 else left / left.sum()
            j = int(self._rng.choice(p.size, p=p))
            pos.append(j)
            prop.append(float(p[j]))
            left[j] = False
        return SlateChoice(np.array(pos, dtype=np.int64), np.array(prop))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        for j, p, r in zip(choice.positions, choice.propensity, rewards, strict=True):
            line = self._lines(ctx.features[[j]])
            line[1] = f"0:{-float(r):g}:{max(float(p), 1e-6):.6g} " + line[1]
            self.vw.learn(line)


class MabwiserSlate:
    """MABWiser's LinUCB or LinTS as one shared linear model over the candidates' features
    (a single arm whose contexts are the candidate rows), the k best predictions shown."""

    def __init__(self, dim: int, kind: str = "linucb", alpha: float = 0.25, seed: int = 0,
                 name: str | None = None) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        policy = (LearningPolicy.LinUCB(alpha=alpha) if kind == "linucb"
                  else LearningPolicy.LinTS(alpha=alpha))
        self.name = name or f"MABWiser {'LinUCB' if kind == 'linucb' else 'LinTS'}"
        self.mab = MAB(arms=["slot"], learning_policy=policy, seed=seed)
        self.mab.fit(["slot"], [0.0], np.zeros((1, dim)))

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        exp = self.mab.predict_expectations(ctx.features)
        rows = [exp] if isinstance(exp, dict) else exp
        scores = np.array([e["slot"] for e in rows], dtype=np.float64)
        pos = np.lexsort((np.arange(scores.size), -scores))[: min(k, scores.size)]
        return SlateChoice(pos.astype(np.int64), np.full(pos.size, np.nan))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        x = ctx.features[choice.positions]
        self.mab.partial_fit(["slot"] * len(rewards), list(map(float, rewards)), x)


class ServedLinearTS:
    """The service's own bandit in the world: ``serendip.explore.bandit.LinearTS``, built from
    the ``adaptive`` preset's ``[bandit]`` settings (hierarchy, new-item budget, priors, noise)
    and run through its ``choose`` and ``update``, so what is measured is the component that
    serves that preset, not a re-implementation of its method.

    It sees the six features the service computes, taken from the world's rows: bias,
    relevance, unexpectedness (``1 - similarity``: the world's similarity is (1 + cos) / 2, the
    service's unexpectedness (1 - cos) / 2), novelty, tail and shown (both 1 - 0.5^n of the
    earlier showings: the service counts them in the person's recent lists, and a person here
    visits fewer times than the lists it reads); not the world's ``new`` and ``clicked``.  As
    the served pipeline, it never shows a person an item they clicked before (in the service
    that click is an event of their history, and history is excluded from every list); items
    shown and not clicked stay candidates.  The world's new items feed the budget (the
    service's "no interactions at fit time").  Offsets are keyed by item index + 1 and person
    index + 1.
    """

    #: world columns of the served FEATURES (unexpectedness is derived from similarity)
    _SERVED = ("bias", "relevance", "similarity", "novelty", "tail", "shown")

    def __init__(self, seed: int = 0, *, preset: str = "adaptive",
                 name: str = "serendip adaptive preset (served LinearTS)") -> None:
        from serendip.explore.bandit import FEATURES as SERVED
        from serendip.explore.bandit import LinearTS
        from serendip.pipeline import load_preset

        settings = load_preset(preset).bandit
        if settings is None:
            raise ConfigError(f"preset {preset!r} has no [bandit] section to simulate")
        if len(SERVED) != len(self._SERVED) or SERVED[2] != "unexpectedness" or any(
                a != b for a, b in zip(SERVED, self._SERVED, strict=True) if a != "unexpectedness"):
            raise ConfigError(f"the served bandit's features changed to {SERVED}; update "
                              "ServedLinearTS's mapping")
        self.name = name
        self.bandit = LinearTS({**settings, "seed": seed})
        self.bandit.start()
        self._cols = [_COL[f] for f in self._SERVED]
        self._last: tuple[SlateChoice, np.ndarray] | None = None

    def served_features(self, features: np.ndarray) -> np.ndarray:
        """The world's ``FEATURES`` rows as the service's ``bandit.FEATURES`` rows."""
        if features.ndim != 2 or features.shape[1] != len(FEATURES):
            raise DataError(f"served LinearTS needs n x {len(FEATURES)} world features, got "
                            f"{features.shape}")
        x = features[:, self._cols].astype(np.float64)
        x[:, 2] = 1.0 - x[:, 2]
        return x

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        # as the service: a click is an event, events are the person's history, and history
        # is never recommended, so candidates this person clicked before are left out
        keep = np.flatnonzero(ctx.features[:, _COL["clicked"]] == 0)
        if keep.size == 0:
            keep = np.arange(len(ctx.items))
        x = self.served_features(ctx.features[keep])
        pos, prop, rows = self.bandit.choose(
            x, min(k, keep.size),
            item_keys=np.asarray(ctx.items[keep], dtype=np.float64) + 1.0,
            person_key=float(ctx.user) + 1.0, new=ctx.new[keep])
        choice = SlateChoice(keep[pos].astype(np.int64), prop)
        self._last = (choice, rows)
        return choice

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        if self._last is None or self._last[0] is not choice:
            raise DataError("served LinearTS learns only from the slate it chose last")
        self.bandit.update(self._last[1], rewards)
        self._last = None


def _prior() -> np.ndarray:
    m = np.zeros(len(FEATURES))
    m[_COL["relevance"]] = 1.0  # start from the base model's order, as the adaptive preset
    return m


_PERSONAL = [_COL["novelty"], _COL["tail"], _COL["new"]]

#: name -> factory(dim, seed); serendip's first, then the baselines
POLICY_NAMES: dict[str, Callable[[int, int], SlatePolicy]] = {
    "oracle": lambda d, s: Oracle(None, "oracle"),  # type: ignore[arg-type]
    "random": lambda d, s: RandomSlate(s),
    "greedy": lambda d, s: RidgeSlate(d, prior_mean=_prior(), seed=s, name="greedy"),
    "egreedy": lambda d, s: EpsilonGreedySlate(d, epsilon=0.1, prior_mean=_prior(), seed=s,
                                               name="epsilon-greedy 0.1"),
    "lints": lambda d, s: ThompsonSlate(d, prior_mean=_prior(), seed=s),
    "linucb": lambda d, s: UCBSlate(d, prior_mean=_prior(), seed=s),
    "squarecb": lambda d, s: SquareCBSlate(d, prior_mean=_prior(), seed=s),
    "personal": lambda d, s: PersonalThompsonSlate(d, personal=_PERSONAL, prior_mean=_prior(),
                                                   seed=s),
    "personal+new": lambda d, s: NewItemBudget(
        PersonalThompsonSlate(d, personal=_PERSONAL, prior_mean=_prior(), seed=s),
        share=0.2, top=5, seed=s + 1, name="serendip PersonalTS + new-item budget"),
    "hier": lambda d, s: PersonalThompsonSlate(
        d, personal=_PERSONAL, item_prior=10.0, prior_mean=_prior(), seed=s, positions=True,
        name="serendip HierTS (shared + person + item)"),
    "hier+new": lambda d, s: NewItemBudget(
        PersonalThompsonSlate(d, personal=_PERSONAL, item_prior=10.0, prior_mean=_prior(),
                              seed=s, positions=True, name="serendip HierTS"),
        share=0.2, top=5, seed=s + 1, name="serendip HierTS + new-item budget"),
    "hier-squarecb": lambda d, s: HierSquareCBSlate(
        d, personal=_PERSONAL, item_prior=10.0, prior_mean=_prior(), seed=s, positions=True,
        name="serendip HierSquareCB (HierTS's model, SquareCB exploration)"),
    "hier-greedy": lambda d, s: PersonalThompsonSlate(
        d, personal=_PERSONAL, item_prior=10.0, prior_mean=_prior(), seed=s, positions=True,
        explore=False, name="HierTS's model, no exploration"),
    "greedy-pos": lambda d, s: RidgeSlate(d, prior_mean=_prior(), seed=s, positions=True,
                                          name="greedy, position-aware"),
    "served": lambda d, s: ServedLinearTS(s),
    "greedy+new": lambda d, s: NewItemBudget(
        RidgeSlate(d, prior_mean=_prior(), seed=s, name="greedy"), share=0.2, top=5,
        seed=s + 1, name="greedy + new-item budget"),
    "vw-squarecb": lambda d, s: VowpalWabbitSlate(d, "--squarecb", s,
                                                  "VW cb_explore_adf squarecb"),
    "vw-epsilon": lambda d, s: VowpalWabbitSlate(d, "--epsilon 0.1", s,
                                                 "VW cb_explore_adf epsilon 0.1"),
    "mab-linucb": lambda d, s: MabwiserSlate(d, "linucb", 0.25, s),
    "mab-lints": lambda d, s: MabwiserSlate(d, "lints", 0.25, s),
}

SERENDIP_POLICIES = ("lints", "linucb", "squarecb", "personal", "personal+new", "hier",
                     "hier+new", "hier-squarecb", "served")
LIBRARY_POLICIES = ("vw-squarecb", "vw-epsilon", "mab-linucb", "mab-lints")
#: ablations: an exploring policy -> the same model shown greedily (what exploration earns),
#: and greedy -> greedy with position-aware learning (what the position model earns alone)
ABLATIONS = {"hier": "hier-greedy", "hier+new": "hier-greedy", "hier-squarecb": "hier-greedy",
             "greedy": "greedy-pos"}


def make_policy(name: str, seed: int, world: World | None = None) -> SlatePolicy:
    if name not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    policy = POLICY_NAMES[name](len(FEATURES), seed)
    if isinstance(policy, Oracle):
        if world is None:
            raise ConfigError("the oracle needs the world")
        policy.world = world
    return policy


def simulate(make_world: Callable[[int], World], policies: Sequence[str], seeds: Sequence[int],
             visits: int, *, users: int | None = None, checkpoints: int = 20,
             progress: Callable[[str], None] | None = None) -> list[Trace]:
    """Every policy in every seed's world, on the same visits and click draws.

    ``users``: the visits come from this many people drawn at random (all by default), so
    that each person comes back often enough for per-person learning to matter.  BLAS runs on
    one thread: the per-visit products are small, and a thread pool only adds contention.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return _simulate(make_world, policies, seeds, visits, users, checkpoints, progress)
    with threadpool_limits(1):
        return _simulate(make_world, policies, seeds, visits, users, checkpoints, progress)


def _simulate(make_world: Callable[[int], World], policies: Sequence[str], seeds: Sequence[int],
              visits: int, users: int | None, checkpoints: int,
              progress: Callable[[str], None] | None) -> list[Trace]:
    for name in policies:
        if name not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    if visits < 1:
        raise ConfigError(f"visits must be a positive integer, got {visits}")
    if users is not None and users < 1:
        raise ConfigError(f"users must be a positive integer, got {users}")
    traces = []
    for seed in seeds:
        world = make_world(seed)
        rng = np.random.default_rng([seed, 1])
        n = world.n_users if users is None else min(users, world.n_users)
        world.population = np.sort(rng.choice(world.n_users, size=n, replace=False))
        visitors = world.population[rng.integers(n, size=visits)]
        uniforms = rng.random((visits, world.config.slots))
        for name in policies:
            t0 = time.perf_counter()
            policy = make_policy(name, seed, world)
            trace = run_policy(world, policy, visitors, uniforms, seed=seed,
                               checkpoints=checkpoints)
            trace.key = name
            traces.append(trace)
            if progress is not None:
                progress(f"seed {seed} {trace.name}: {trace.clicks.sum():.0f} clicks, "
                         f"regret {trace.regret.sum():.1f}, discovery "
                         f"{trace.discovery[-1]:.3f} ({time.perf_counter() - t0:.1f}s)")
    return traces


# ---------------------------------------------------------------------------------- reporting
def format_table(rows: Sequence[dict[str, Any]], baseline: str = "greedy") -> str:
    """A markdown table: mean ± 95% t half-width over seeds, and ratios to ``baseline``."""
    base = next((r for r in rows if r["key"] == baseline), None)

    def ratio(r: dict[str, Any], key: str) -> str:
        if base is None or not base[key]:
            return "-"
        return f"{r[key] / base[key]:.2f}"

    lines = ["| policy | clicks | regret | discovery | new-item discovery | clicks / "
             f"{baseline} | discovery / {baseline} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['reward']:.0f} ± {r['reward_ci']:.0f} | "
            f"{r['regret']:.0f} ± {r['regret_ci']:.0f} | "
            f"{r['discovery']:.3f} ± {r['discovery_ci']:.3f} | "
            f"{r['new_discovery']:.3f} ± {r['new_discovery_ci']:.3f} | "
            f"{ratio(r, 'reward')} | {ratio(r, 'discovery')} |")
    return "\n".join(lines)


def verdict(rows: Sequence[dict[str, Any]], serendip: Sequence[str], libraries: Sequence[str],
            baseline: str = "greedy") -> list[str]:
    """Plain sentences on the targets: the best serendip policy (by clicks) against
    ``baseline`` (clicks above with intervals apart, discovery at least twice) and against
    each library (more discovery at equal or better clicks: the paired-by-seed interval of
    the click difference reaches zero or above, and that of the discovery difference lies
    above zero)."""
    by = {r["key"]: r for r in rows}
    if baseline not in by or not any(s in by for s in serendip):
        return ["(the targets need greedy and at least one serendip policy in the run)"]
    g = by[baseline]
    best = max((by[s] for s in serendip if s in by), key=lambda r: r["reward"])
    seeds = min(len(best["reward_seeds"]), len(g["reward_seeds"]))
    apart = best["reward"] - best["reward_ci"] > g["reward"] + g["reward_ci"]
    above = best["reward"] > g["reward"]
    # with nothing found by the baseline, twice nothing is nothing: it takes some discovery
    twice = (best["discovery"] >= 2 * g["discovery"] if g["discovery"] > 0
             else best["discovery"] > 0)
    ratio = (f"{best['discovery'] / g['discovery']:.2f}x" if g["discovery"] > 0
             else f"{baseline} found none")
    clicks = (f"{'MET' if apart else 'NOT MET'} "
              f"({best['reward']:.0f} ± {best['reward_ci']:.0f} vs {g['reward']:.0f} ± "
              f"{g['reward_ci']:.0f}"
              f"{'' if apart else '; above, but the intervals overlap' if above else ''})"
              if seeds > 1 else
              f"cannot be judged from one seed (no interval; {best['reward']:.0f} vs "
              f"{g['reward']:.0f})")
    out = [
        f"Best serendip policy by clicks: {best['policy']}.",
        f"- clicks above {baseline} with intervals apart: {clicks}",
        f"- discovery at least 2x {baseline}'s: {'MET' if twice else 'NOT MET'} "
        f"({best['discovery']:.3f} vs {g['discovery']:.3f}, {ratio})",
    ]
    if len(best["reward_seeds"]) == len(g["reward_seeds"]) > 1:
        diff, half = t_interval(np.subtract(best["reward_seeds"], g["reward_seeds"]))
        out.append(f"- paired by seed (same world, visits and click draws): clicks minus "
                   f"{baseline}'s {diff:+.0f} ± {half:.0f} (95% t), "
                   f"{'above zero' if diff - half > 0 else 'not clearly above zero'}")
    for name in libraries:
        if name not in by:
            continue
        lib = by[name]
        dc, hc = _paired(best, lib, "reward")
        dd, hd = _paired(best, lib, "discovery")
        not_worse = dc + hc >= 0  # the paired interval of the click difference reaches 0
        more = dd - hd > 0  # discovery clearly higher
        ok = not_worse and more
        out.append(
            f"- against {lib['policy']}: serendip "
            f"{'discovers more at equal or better clicks' if ok else 'does NOT discover more at equal or better clicks'}"
            f" (paired by seed: clicks {dc:+.0f} ± {hc:.0f}, discovery {dd:+.3f} ± {hd:.3f})")
    out += _ablation_lines(by, best, g)
    return out


def _ablation_lines(by: dict[str, dict[str, Any]], best: dict[str, Any],
                    greedy: dict[str, Any]) -> list[str]:
    """Where the best policy's gain comes from, when the run holds the ablations: the same
    model shown greedily (exploration's own share) and greedy with position-aware learning."""
    out = []
    model = by.get(ABLATIONS.get(best["key"], ""))
    if model is not None:
        dc, hc = _paired(best, model, "reward")
        dd, hd = _paired(best, model, "discovery")
        both = best["key"].endswith("+new")
        what = "exploration and the new-item budget" if both else "exploration"
        s_ = "" if both else "s"  # verbs agree with one or two subjects
        if len(best.get("reward_seeds", [])) < 2:
            verdict_ = "cannot be judged from one seed (no interval)"
        else:
            verdict_ = (f"earn{s_} clicks" if dc - hc > 0 else f"cost{s_} clicks"
                        if dc + hc < 0 else f"neither clearly earn{s_} nor cost{s_} clicks")
        out.append(f"- {what} {'together' if both else 'itself'}: {best['policy']} minus "
                   f"the same model shown "
                   f"greedily ({model['policy']}), paired by seed: clicks {dc:+.0f} ± {hc:.0f}, "
                   f"discovery {dd:+.3f} ± {hd:.3f}; in this world {what} {verdict_}")
    pos = by.get(ABLATIONS.get(greedy["key"], ""))
    if pos is not None:
        dc, hc = _paired(pos, greedy, "reward")
        out.append(f"- position-aware learning alone: {pos['policy']} minus {greedy['policy']}, "
                   f"paired by seed: clicks {dc:+.0f} ± {hc:.0f}")
    return out


def _paired(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, float]:
    """Mean and 95% t half-width of a's minus b's per-seed values (seeds in the same order);
    the plain difference of means with no interval when there is one seed."""
    va, vb = a.get(key + "_seeds", []), b.get(key + "_seeds", [])
    if len(va) == len(vb) > 1:
        return t_interval(np.subtract(va, vb))
    return float(a[key] - b[key]), 0.0


def timing(names: Sequence[str], candidates: int = 1000, reps: int = 200,
           seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict[str, tuple[float, float, float]]:
    """Per policy: median and 90th percentile ms to select a slate from ``candidates`` random
    feature rows, and median ms per feedback event (a slate's update divided by its slots),
    pooled over ``reps`` slates from each of ``seeds`` (a learning policy's cost follows
    what it has learnt, which differs from one run to the next)."""
    d, k = len(FEATURES), WorldConfig().slots
    out = {}
    for name in names:
        if name == "oracle":
            continue
        sel, upd = [], []
        label = name
        for seed in seeds:
            rng = np.random.default_rng(seed)
            policy = make_policy(name, seed)
            label = policy.name
            for _ in range(reps):
                x = rng.random((candidates, d))
                x[:, 0] = 1.0
                items = rng.choice(100_000, size=candidates, replace=False)
                ctx = SlateContext(int(rng.integers(1000)), items, x,
                                   rng.random(candidates) < 0.1)
                t0 = time.perf_counter()
                choice = policy.select(ctx, k)
                t1 = time.perf_counter()
                policy.update(ctx, choice,
                              (rng.random(choice.positions.size) < 0.2).astype(float))
                t2 = time.perf_counter()
                sel.append(t1 - t0)
                upd.append((t2 - t1) / max(choice.positions.size, 1))
        out[label] = (1e3 * float(np.median(sel)), 1e3 * float(np.median(upd)),
                      1e3 * float(np.quantile(sel, 0.9)))
    return out


def timing_in_world(world: World, names: Sequence[str], learn: int = 400, reps: int = 200,
                    seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Per policy, as ``timing`` but in ``world``: the policy first learns from ``learn``
    visits of the world's own clicks, then its next ``reps`` selections and updates are
    timed (median and 90th percentile ms per slate, median ms per event).  What a policy has
    learnt decides how peaked its lists are and so what its propensities cost; here that is
    what the world taught it, where ``timing``'s random rows and clicks teach it nothing."""
    if learn < 0 or reps < 1:
        raise ConfigError(f"timing needs learn >= 0 and reps >= 1, got {learn} and {reps}")
    rng = np.random.default_rng([seed, 2])
    visitors = rng.choice(world.n_users, size=learn + reps)
    uniforms = rng.random((learn + reps, world.config.slots))
    out = {}
    for name in names:
        if name == "oracle":
            continue
        policy = make_policy(name, seed, world)
        trace = run_policy(world, policy, visitors, uniforms, seed=seed, keep_times=True)
        timed = [t for t in trace.times if t[0] >= learn]
        if not timed:
            raise DataError("the world offered no candidates on the timed visits")
        sel = [t[1] for t in timed]
        upd = [t[2] for t in timed]
        out[policy.name] = (1e3 * float(np.median(sel)), 1e3 * float(np.median(upd)),
                            1e3 * float(np.quantile(sel, 0.9)))
    return out


def plot_traces(traces: Sequence[Trace], path: str | Any) -> None:
    """Two panels, means over seeds: cumulative clicks per visit, discovery at checkpoints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.5))
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for n, name in enumerate(dict.fromkeys(t.name for t in traces)):
        ts = [t for t in traces if t.name == name]
        # serendip's solid, the libraries' dashed, the rest (oracle, random, greedy) dotted
        style = ("-" if ts[0].key in SERENDIP_POLICIES else
                 "--" if ts[0].key in LIBRARY_POLICIES else ":")
        kw = {"label": name, "color": colours[n % len(colours)], "linestyle": style}
        cum = np.mean([np.cumsum(t.clicks) for t in ts], axis=0)
        a.plot(np.arange(1, cum.size + 1), cum, **kw)
        b.plot(ts[0].checkpoints, np.mean([t.discovery for t in ts], axis=0), **kw)
    a.set_xlabel("visit")
    a.set_ylabel("cumulative clicks (mean over seeds)")
    b.set_xlabel("visit")
    b.set_ylabel("discovery: relevant tail/new items clicked per person")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
