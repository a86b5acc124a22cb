"""Exploration policies: randomised lists whose every slot carries its exact propensity.

A recommender that only ever shows its best guesses never learns whether it was wrong about
the items it ranks just below them, and logs from such a policy cannot evaluate any other
policy.  ``EpsilonSlate`` shows, in each slot independently and with probability ``epsilon``,
an item from the *exploration pool* (the next candidates after the list, typically fresher and
rarer items) instead of the ranked one, and records the marginal probability of what it showed
in that slot, which is what slot-level inverse-propensity estimators need (Li et al. 2010's
replay logic; Swaminathan et al. 2017 for slates).

Which pool item a slot shows is the slot's entry in one uniformly random permutation of the
pool, so no item appears twice and the marginals are exact and simple:

- the ranked item at slot p:              1 - epsilon   (1 when the pool has no p-th entry),
- any pool item j at slot p (p < m):      epsilon / m,  m = pool size.

New items (never used in training) wait longest for anyone to show them, and a pool of the
next-best candidates rarely holds them.  With ``new_items = nu > 0`` the candidates after the
list are split in two pools: N, the new items among them (at most ``pool``, best first), and R,
the others (at most ``pool``).  An explored slot p draws from N with probability nu and from R
otherwise, each pool through its own uniform permutation; a pool without a p-th entry leaves its
share to the other.  With ``m_N = |N|``, ``m_R = |R|``, the marginals stay exact:

- a new item at slot p:                   epsilon * nu / m_N         (p < m_R and p < m_N),
                                          epsilon / m_N              (p >= m_R, p < m_N),
- another pool item at slot p:            epsilon * (1 - nu) / m_R   (p < m_R and p < m_N),
                                          epsilon / m_R              (p < m_R, p >= m_N),
- the ranked item: one minus the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import Field

from serendip.component import Component, ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError
from serendip.types import ItemList, Query

__all__ = [
    "EpsilonSlate", "EpsilonSlateConfig", "EXPLORE_REASON", "EXPLORE_NEW_REASON",
    "SlateContext", "SlateChoice", "SlatePolicy", "RandomSlate", "RidgeSlate",
    "EpsilonGreedySlate", "ThompsonSlate", "UCBSlate", "SquareCBSlate", "PersonalThompsonSlate",
    "HierSquareCBSlate", "squarecb_slate", "NewItemBudget", "Examination", "SlotSums",
]

EXPLORE_REASON = "exploring: shown to learn whether you like it"
EXPLORE_NEW_REASON = "exploring a new arrival: shown to learn whether you like it"


class EpsilonSlateConfig(ComponentConfig):
    epsilon: float = Field(0.1, ge=0, le=1, description="chance that a slot shows a pool item")
    pool: int = Field(50, ge=1, le=10_000,
                      description="exploration pool: the best candidates after the list")
    seed: int | None = Field(None, ge=0, description="fixed seed (replays, tests); None: fresh")
    new_items: float = Field(
        0.0, ge=0, le=1,
        description="share of explored slots drawn from the new (never used) items among the "
                    "candidates after the list, when there are any",
    )


class EpsilonSlate(Component):
    """Slot-wise epsilon-greedy over an exploration pool, with exact marginal propensities."""

    name = "epsilon_slate"
    config_class = EpsilonSlateConfig
    config: EpsilonSlateConfig

    def train(self, data: Dataset) -> None:
        self._set_state(seed=np.asarray(-1 if self.config.seed is None else self.config.seed),
                        new=np.asarray(data.item_popularity == 0))

    def _after_load(self) -> None:
        self._rng = np.random.default_rng(self.config.seed)

    def __call__(self, query: Query, ranked: ItemList, pool: ItemList,  # type: ignore[override]
                 epsilon: float | None = None) -> ItemList:
        """The list to show: ``ranked`` with some slots replaced from ``pool``.

        Adds the fields ``propensity`` (marginal probability of the item in its slot) and
        ``explored`` (True where a pool item was shown), and a reason on explored items.
        Scores stay the ranked list's slot scores (so they keep their order and scale); an
        explored item's own score goes into ``relevance``, which holds the candidates' input
        score for every slot.
        """
        self._require_trained()
        eps = self._epsilon(epsilon)
        rest, others, new = self._pools(ranked, pool)
        k = len(ranked)
        p_other, p_new = self._slot_rates(k, others.size, new.size, eps)
        perm = self._rng.permutation(others.size)
        u = self._rng.random(k)
        # drawn after the others, so a seed gives the same lists as before new_items existed
        perm_new = self._rng.permutation(new.size) if new.size else new
        from_new = u < p_new
        from_other = ~from_new & (u < p_new + p_other)
        explore = from_new | from_other
        pos = np.arange(k)
        src = np.zeros(k, dtype=np.int64)  # position in ``rest`` of each explored slot's item
        src[from_other] = others[perm[pos[from_other]]]
        src[from_new] = new[perm_new[pos[from_new]]]
        src_pool = src[explore]
        items = ranked.items.copy()
        items[explore] = rest.items[src_pool]
        reasons = ranked.reason_lists()
        pool_reasons = rest.reason_lists()
        for slot in pos[explore].tolist():
            why = EXPLORE_NEW_REASON if from_new[slot] else EXPLORE_REASON
            reasons[slot] = [why, *pool_reasons[int(src[slot])]]
        prop = 1.0 - p_other - p_new
        prop[from_other] = p_other[from_other] / max(others.size, 1)
        prop[from_new] = p_new[from_new] / max(new.size, 1)
        fields: dict[str, np.ndarray] = {}
        relevance = np.asarray(ranked.fields.get("relevance", ranked.scores), dtype=np.float64)
        fields["relevance"] = relevance.copy()
        fields["relevance"][explore] = rest.fields.get("relevance", rest.scores)[src_pool]
        for name, values in ranked.fields.items():
            if name != "relevance" and name in rest.fields:  # fields the pool cannot fill go
                merged = np.asarray(values).copy()
                merged[explore] = np.asarray(rest.fields[name])[src_pool]
                fields[name] = merged
        fields["propensity"] = prop
        fields["explored"] = explore
        return ItemList(items, ranked.scores.copy(), tuple(tuple(r) for r in reasons), fields)

    def _epsilon(self, epsilon: float | None) -> float:
        eps = self.config.epsilon if epsilon is None else float(epsilon)
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"epsilon must lie in [0, 1], got {epsilon!r}")
        return eps

    def _pools(self, ranked: ItemList, pool: ItemList) -> tuple[ItemList, np.ndarray, np.ndarray]:
        """``pool`` without the ranked items, and the positions in it of the two exploration
        pools: the others (the first ``pool`` entries, or the first ``pool`` that are not new)
        and, with ``new_items`` > 0, the first ``pool`` new items."""
        rest = pool.exclude(ranked.items)
        size = self.config.pool
        if self.config.new_items <= 0:
            return rest, np.arange(min(len(rest), size)), np.zeros(0, dtype=np.int64)
        known = self._require_trained().get("new")
        is_new = np.zeros(len(rest), dtype=bool)
        if known is not None and len(rest):
            inside = rest.items < known.size
            is_new[inside] = known[rest.items[inside]]
        return rest, np.flatnonzero(~is_new)[:size], np.flatnonzero(is_new)[:size]

    def _slot_rates(self, k: int, m_other: int, m_new: int, eps: float
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Per slot, the chance of showing an item of the other pool and of the new pool."""
        nu = self.config.new_items
        pos = np.arange(k)
        can_other, can_new = pos < m_other, pos < m_new
        both = can_other & can_new
        p_new = np.where(both, eps * nu, np.where(can_new, eps, 0.0))
        p_other = np.where(both, eps * (1.0 - nu), np.where(can_other, eps, 0.0))
        return p_other, p_new

    def action_dist(self, ranked: ItemList, pool: ItemList, epsilon: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """This policy's distribution over items per slot, for evaluating it off-policy.

        Returns ``(items, probs)``: the candidate items (ranked, then the exploration pool:
        the others, then the new items) and a ``len(items) x k`` array whose column p is the
        distribution of slot p (sums to 1).
        """
        eps = self._epsilon(epsilon)
        rest, others, new = self._pools(ranked, pool)
        k, m_o, m_n = len(ranked), others.size, new.size
        p_other, p_new = self._slot_rates(k, m_o, m_n, eps)
        items = np.concatenate([ranked.items, rest.items[others], rest.items[new]])
        probs = np.zeros((items.size, k))
        for p in range(k):
            probs[p, p] = 1.0 - p_other[p] - p_new[p]
            if m_o:
                probs[k : k + m_o, p] = p_other[p] / m_o
            if m_n:
                probs[k + m_o :, p] = p_new[p] / m_n
        return items, probs


# ---------------------------------------------------------------------------------------------
# Slate policies over feature matrices (the simulator's contract)
#
# ``EpsilonSlate`` and ``LinearTS`` act on a pipeline's ItemLists.  The policies below act on
# what any contextual bandit sees: for one visit, a ``candidates x features`` matrix, the
# visitor, and which candidates are new; they return the positions of the ``k`` candidates to
# show, best slot first, and the probability of what each slot shows.  The simulator
# (``serendip.explore.simulator``) and the benchmark give every policy, serendip's and the
# libraries', the same matrices, so a difference in reward is a difference in policy.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlateContext:
    """One visit: who, the candidates' item ids and feature rows, which candidates are new."""

    user: int
    items: np.ndarray
    features: np.ndarray
    new: np.ndarray


@dataclass(frozen=True)
class SlateChoice:
    """Positions into the candidates, slot 0 first, and each slot's propensity: the policy's
    probability of showing that candidate in that slot (``nan`` where it has no closed form,
    as for Thompson sampling)."""

    positions: np.ndarray
    propensity: np.ndarray


class SlatePolicy(Protocol):
    name: str

    def select(self, ctx: SlateContext, k: int) -> SlateChoice: ...

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None: ...


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first (ties by position)."""
    k = min(k, scores.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))].astype(np.int64)


class RandomSlate:
    """k candidates uniformly without replacement: every candidate has 1/n in every slot."""

    def __init__(self, seed: int | None = None, name: str = "random") -> None:
        self.name = name
        self._rng = np.random.default_rng(seed)

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        n = len(ctx.items)
        pos = self._rng.permutation(n)[: min(k, n)]
        return SlateChoice(pos, np.full(pos.size, 1.0 / max(n, 1)))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        return None


class Examination:
    """How much less a lower slot is looked at, learnt from the clicks (a position-based model).

    A click at slot p needs the slot examined (probability ``e_p``, ``e_0 = 1``) and the item
    liked (its *appeal*, what the policy predicts), so ``E[reward] = e_p * appeal``.  Fitting
    the reward itself, as if every slot were the top one, credits the top slot's items with the
    slot's visibility and blames what is shown low (a new item in the last slot learns it is
    bad).  Per slot the class keeps the clicks and the appeal predicted for the items shown
    there, both decayed by ``decay`` per slate so that the predictions of an early, poorer
    model fade; their ratio, divided by slot 0's, estimates ``e_p`` (each sum starts at
    ``pseudo`` with ratio 1, and the estimate is kept in [0.05, 1]: no slot is looked at
    more than the top one).

    The simulator's policies keep their regression sums per slot and weigh them with the
    current rates (``SlotSums``): minimising ``sum (r - e_p x'w)^2`` adds ``e_p^2 x x'`` to
    ``A`` and ``e_p r x`` to ``b``, so the weights estimate the top-slot appeal, and every
    past slate is reweighed when the rates move.  The served ``LinearTS`` (``positions``)
    weighs each slate once, with the rates of its time, since per-slot sums for every item
    and person it keeps would multiply its memory by the slots.
    """

    def __init__(self, pseudo: float = 2.0, decay: float = 0.9998) -> None:
        if not (pseudo > 0 and np.isfinite(pseudo)):
            raise ConfigError(f"pseudo must be a positive number, got {pseudo}")
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"decay must lie in (0, 1], got {decay}")
        self.pseudo = pseudo
        self.decay = decay
        self.clicks = np.zeros(0)  # decayed sums, without the pseudo-counts
        self.appeal = np.zeros(0)

    def _grow(self, n: int) -> None:
        if n > self.clicks.size:
            self.clicks = np.concatenate([self.clicks, np.zeros(n - self.clicks.size)])
            self.appeal = np.concatenate([self.appeal, np.zeros(n - self.appeal.size)])

    def rates(self, n: int) -> np.ndarray:
        """``e_0 .. e_{n-1}``."""
        self._grow(max(n, 1))
        ratio = (self.pseudo + self.clicks) / (self.pseudo + self.appeal)
        return np.asarray(np.clip(ratio[:n] / ratio[0], 0.05, 1.0))

    def observe(self, appeal: np.ndarray, rewards: np.ndarray) -> None:
        """Count one slate (slot order: predicted appeal, rewards)."""
        r = np.asarray(rewards, dtype=np.float64)
        self.observe_at(np.arange(r.size), appeal, r)

    def observe_at(self, slots: np.ndarray, appeal: np.ndarray, rewards: np.ndarray) -> None:
        """Count one slate whose rows sit in ``slots`` (what came before decays once)."""
        slots = _slot_indices(slots)
        self._grow(int(slots.max()) + 1 if slots.size else 0)
        self.clicks *= self.decay
        self.appeal *= self.decay
        np.add.at(self.clicks, slots, np.asarray(rewards, dtype=np.float64))
        np.add.at(self.appeal, slots, np.clip(np.asarray(appeal, dtype=np.float64), 0.01, 1.0))

    def credit(self, slot: int) -> None:
        """A click that arrives after its slate was counted (as shown, no click)."""
        at = int(_slot_indices(np.array([slot]))[0])
        self._grow(at + 1)
        self.clicks[at] += 1.0

    def rates_at(self, slots: np.ndarray) -> np.ndarray:
        slots = _slot_indices(slots)
        return self.rates(int(slots.max()) + 1 if slots.size else 1)[slots]

    def state(self) -> np.ndarray:
        """``2 x slots``: the decayed click and appeal sums (to save and restore)."""
        return np.vstack([self.clicks, self.appeal])

    def set_state(self, state: np.ndarray) -> None:
        got = np.asarray(state, dtype=np.float64)
        if got.ndim != 2 or got.shape[0] != 2:
            raise DataError(f"examination state must be 2 x slots, got shape {got.shape}")
        bad = ~(np.isfinite(got) & (got >= 0))
        if bad.any():
            raise DataError(f"examination state must hold finite sums >= 0, got "
                            f"{float(got[bad][0]):g}")
        self.clicks, self.appeal = got[0].copy(), got[1].copy()


def _slot_indices(slots: np.ndarray) -> np.ndarray:
    """Slots as indices, checked: whole numbers from 0."""
    got = np.asarray(slots)
    if got.size and not (np.isfinite(got).all() and (got >= 0).all()
                         and (got == np.floor(got)).all()):
        bad = got[~(np.isfinite(got) & (got >= 0) & (got == np.floor(got)))]
        raise DataError(f"a slot must be a whole number from 0, got {float(bad[0]):g}")
    return got.astype(np.int64)


class SlotSums:
    """A linear part's regression sums kept per slot, so they can be weighed by examination
    rates that are still being learnt: per slot p, ``xx_p = sum x x'``, ``xr_p = sum r x`` and
    ``xo_p = sum o x`` (``o``: what the other parts of the model predicted for the row, the
    backfitting offset).  ``weighed(e)`` gives ``(sum e_p^2 xx_p, sum e_p xr_p - e_p^2 xo_p)``,
    the normal equations of ``r ~ e_p (x'w + o)``."""

    def __init__(self, dim: int) -> None:
        self.xx = np.zeros((0, dim, dim))
        self.xr = np.zeros((0, dim))
        self.xo = np.zeros((0, dim))

    def add(self, x: np.ndarray, r: np.ndarray, o: np.ndarray) -> None:
        n = r.size
        if n > self.xr.shape[0]:
            grow = n - self.xr.shape[0]
            d = self.xr.shape[1]
            self.xx = np.concatenate([self.xx, np.zeros((grow, d, d))])
            self.xr = np.concatenate([self.xr, np.zeros((grow, d))])
            self.xo = np.concatenate([self.xo, np.zeros((grow, d))])
        self.xx[:n] += x[:, :, None] * x[:, None, :]
        self.xr[:n] += r[:, None] * x
        self.xo[:n] += o[:, None] * x

    def weighed(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.xr.shape[0]
        e = e[:n]
        return (np.einsum("p,pij->ij", e * e, self.xx),
                e @ self.xr - (e * e) @ self.xo)


class RidgeSlate:
    """Ridge regression of a slot's reward on its features, shown greedily (no exploration).

    The running sums ``A = prior I + sum x x'`` and ``b = prior m0 + sum r x`` are the ones
    ``LinearTS`` keeps; the prior mean ``m0`` puts weight 1 on the relevance feature (the
    first column after the bias, by convention of the simulator) so learning starts from the
    base model's order, as the adaptive preset does.

    ``positions=True`` learns each slot's examination rate too (``Examination``) and fits the
    top-slot appeal: the rows of a slate are weighed by their slot's rate.
    """

    def __init__(self, dim: int, *, prior: float = 1.0, prior_mean: np.ndarray | None = None,
                 seed: int | None = None, name: str = "greedy",
                 positions: bool = False) -> None:
        if dim < 1:
            raise ConfigError(f"feature dimension must be positive, got {dim}")
        if not (prior > 0 and np.isfinite(prior)):
            raise ConfigError(f"prior must be a positive number, got {prior}")
        self.name = name
        self.dim = dim
        m0 = np.zeros(dim) if prior_mean is None else np.asarray(prior_mean, dtype=np.float64)
        if m0.shape != (dim,):
            raise ConfigError(f"prior_mean needs {dim} values, got {m0.shape}")
        self.A = np.eye(dim) * prior
        self.b = prior * m0
        self._rng = np.random.default_rng(seed)
        self.examination = Examination() if positions else None
        self._prior_A, self._prior_b = self.A.copy(), self.b.copy()
        self._sums = SlotSums(dim) if positions else None

    def mean(self) -> np.ndarray:
        return np.linalg.solve(self.A, self.b)

    def mean_scores(self, ctx: SlateContext) -> np.ndarray:
        return np.asarray(ctx.features @ self.mean(), dtype=np.float64)

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        pos = _top(self.mean_scores(ctx), k)
        return SlateChoice(pos, np.ones(pos.size))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        x = ctx.features[choice.positions]
        r = np.asarray(rewards, dtype=np.float64)
        if x.shape[0] != r.size or x.shape[1] != self.dim:
            raise DataError(f"update needs {x.shape[0]} rewards for {self.dim}-feature rows, "
                            f"got {r.size}")
        if self.examination is None:
            self.A += x.T @ x
            self.b += x.T @ r
            return
        self.examination.observe(x @ self.mean(), r)
        self._add_shared(x, r, np.zeros(r.size))

    def _add_shared(self, x: np.ndarray, r: np.ndarray, other: np.ndarray) -> None:
        """Position-aware: add the rows to the per-slot sums and reweigh them all."""
        assert self._sums is not None and self.examination is not None
        self._sums.add(x, r, other)
        xx, xr = self._sums.weighed(self.examination.rates(self._sums.xr.shape[0]))
        self.A = self._prior_A + xx
        self.b = self._prior_b + xr


class EpsilonGreedySlate(RidgeSlate):
    """The greedy list with each slot, with probability epsilon, showing instead the slot's
    entry of a uniform permutation of the other candidates (``EpsilonSlate``'s marginals:
    ranked item 1 - epsilon, each other candidate epsilon / m)."""

    def __init__(self, dim: int, *, epsilon: float = 0.1, **kw: Any) -> None:
        kw.setdefault("name", "epsilon-greedy")
        super().__init__(dim, **kw)
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        scores = self.mean_scores(ctx)
        ranked = _top(scores, k)
        rest = np.setdiff1d(np.arange(scores.size), ranked)
        m = rest.size
        perm = rest[self._rng.permutation(m)]
        swap = (self._rng.random(ranked.size) < self.epsilon) & (np.arange(ranked.size) < m)
        pos = ranked.copy()
        pos[swap] = perm[np.flatnonzero(swap)]
        prop = np.where(np.arange(ranked.size) < m, 1.0 - self.epsilon, 1.0)
        prop[swap] = self.epsilon / m
        return SlateChoice(pos, prop)


class ThompsonSlate(RidgeSlate):
    """``LinearTS``'s rule on a feature matrix: one draw from N(mean, noise^2 A^-1) per visit,
    the k best candidates under it.  Propensities have no closed form (``nan``)."""

    def __init__(self, dim: int, *, noise: float = 0.25, **kw: Any) -> None:
        kw.setdefault("name", "serendip LinearTS")
        super().__init__(dim, **kw)
        self.noise = noise

    def draw(self) -> np.ndarray:
        chol = np.linalg.cholesky(np.linalg.inv(self.A))
        return np.asarray(self.mean() + self.noise * (chol @ self._rng.standard_normal(self.dim)))

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        pos = _top(ctx.features @ self.draw(), k)
        return SlateChoice(pos, np.full(pos.size, np.nan))


class UCBSlate(RidgeSlate):
    """LinUCB (Li et al. 2010) with shared weights: mean + alpha * sqrt(x' A^-1 x)."""

    def __init__(self, dim: int, *, alpha: float = 0.25, **kw: Any) -> None:
        kw.setdefault("name", "serendip LinUCB")
        super().__init__(dim, **kw)
        self.alpha = alpha

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        x = ctx.features
        inv = np.linalg.inv(self.A)
        width = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, inv, x), 0.0))
        pos = _top(x @ self.mean() + self.alpha * width, k)
        return SlateChoice(pos, np.ones(pos.size))


class _SquareCBExploration:
    """SquareCB's selection over a model's ``mean_scores``, mixed in before the model's class;
    ``gamma`` grows as ``gamma0 * sqrt(visits)``."""

    gamma0: float
    visits: int
    _rng: np.random.Generator
    mean_scores: Callable[[SlateContext], np.ndarray]

    def _start_squarecb(self, gamma0: float) -> None:
        if not (gamma0 > 0 and np.isfinite(gamma0)):
            raise ConfigError(f"gamma0 must be a positive number, got {gamma0}")
        self.gamma0 = gamma0
        self.visits = 0

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        self.visits += 1
        return squarecb_slate(self.mean_scores(ctx), k, self.gamma0 * np.sqrt(self.visits),
                              self._rng)


class SquareCBSlate(_SquareCBExploration, RidgeSlate):
    """SquareCB (Foster & Rakhlin 2020, "Beyond UCB") slot by slot over the ridge predictions.

    For each slot, among the candidates not yet placed (m of them) with predicted rewards y
    and best prediction y*, candidate a gets ``1 / (m + gamma (y* - y_a))`` and the best one the
    rest; the logged propensity is that probability, conditional on the slots above.
    ``gamma`` grows as ``gamma0 * sqrt(t)`` with the number of visits t, so exploration fades
    as the regression improves.
    """

    def __init__(self, dim: int, *, gamma0: float = 50.0, **kw: Any) -> None:
        kw.setdefault("name", "serendip SquareCB")
        super().__init__(dim, **kw)
        self._start_squarecb(gamma0)


def squarecb_slate(y: np.ndarray, k: int, gamma: float, rng: np.random.Generator
                   ) -> SlateChoice:
    """SquareCB's draw slot by slot over predicted rewards ``y``: among the m candidates not
    yet placed, candidate a gets ``1 / (m + gamma (y* - y_a))`` and the best one the rest;
    each slot's propensity is its probability given the slots above."""
    left = np.ones(y.size, dtype=bool)
    pos, prop = [], []
    for _ in range(min(k, y.size)):
        cand = np.flatnonzero(left)
        yc = y[cand]
        best = int(np.argmax(yc))
        p = 1.0 / (cand.size + gamma * (yc[best] - yc))
        p[best] = 0.0
        p[best] = max(1.0 - p.sum(), 0.0)
        p /= p.sum()
        j = int(rng.choice(cand.size, p=p))
        pos.append(int(cand[j]))
        prop.append(float(p[j]))
        left[cand[j]] = False
    return SlateChoice(np.array(pos, dtype=np.int64), np.array(prop))


class PersonalThompsonSlate(ThompsonSlate):
    """Thompson sampling over a shared model plus, optionally, each person's taste for the
    discovery features and each item's own appeal (a hierarchical posterior, fitted by
    backfitting the three parts on each other's residuals).

    - **Per person.**  A share of people reward novelty and others do not; one weight vector
      for everyone can only learn the average.  Each person gets ridge sums over the
      ``personal`` columns (e.g. novelty, tail, new), prior precision ``personal_prior``
      around 0; a visit draws the person's offsets, so people whose taste is still unknown
      are the ones explored.
    - **Per item** (``item_prior`` set).  Generic features cannot say that one film pleases
      more than its features suggest; each item gets a Gaussian offset with prior precision
      ``item_prior`` around 0, learnt from every showing, drawn per candidate.  This is what
      lets a new item's exposure pay: after a few showings its own offset says whether it is
      worth showing more.

    With ``positions=True`` the three parts fit the top-slot appeal (each row weighed by its
    slot's examination rate, see ``Examination``).  ``explore=False`` shows the best k by the
    posterior mean instead of a draw: the same model without exploration, to measure what the
    exploration itself earns.
    """

    def __init__(self, dim: int, *, personal: Sequence[int] = (), personal_prior: float = 25.0,
                 item_prior: float | None = None, explore: bool = True, **kw: Any) -> None:
        kw.setdefault("name", "serendip PersonalTS")
        super().__init__(dim, **kw)
        self.personal = np.asarray(personal, dtype=np.int64)
        if self.personal.size and (self.personal.min() < 0 or self.personal.max() >= dim):
            raise ConfigError(f"personal columns must lie in 0..{dim - 1}, got "
                              f"{self.personal.tolist()}")
        if not personal_prior > 0 or (item_prior is not None and not item_prior > 0):
            raise ConfigError(f"priors must be positive, got {personal_prior}, {item_prior}")
        self.personal_prior = personal_prior
        self.item_prior = item_prior
        self.explore = explore
        self._user: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._user_sums: dict[int, SlotSums] = {}
        self._item_n = np.zeros(0)
        self._item_b = np.zeros(0)
        # position-aware: per item and slot, showings, clicks and the other parts' predictions
        self._item_slots = np.zeros((3, 0, 0))

    def _stats(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The person's normal equations (position-aware: weighed by the current rates)."""
        m = self.personal.size
        if self.examination is not None:
            sums = self._user_sums.get(user)
            prior = np.eye(m) * self.personal_prior
            if sums is None:
                return prior, np.zeros(m)
            xx, xr = sums.weighed(self.examination.rates(sums.xr.shape[0]))
            return prior + xx, xr
        if user not in self._user:
            self._user[user] = (np.eye(m) * self.personal_prior, np.zeros(m))
        return self._user[user]

    def _grow(self, items: np.ndarray, slots: int = 0) -> None:
        top = int(items.max()) + 1 if items.size else 0
        if top > self._item_n.size:
            self._item_n = np.concatenate([self._item_n, np.zeros(top - self._item_n.size)])
            self._item_b = np.concatenate([self._item_b, np.zeros(top - self._item_b.size)])
        have = self._item_slots.shape
        if self.examination is not None and (top > have[1] or slots > have[2]):
            grown = np.zeros((3, max(top, have[1]), max(slots, have[2])))
            grown[:, : have[1], : have[2]] = self._item_slots
            self._item_slots = grown

    def _item_sums(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per item: the precision from its showings and the sum its offset's mean divides."""
        self._grow(items)
        if self.examination is None:
            return self._item_n[items], self._item_b[items]
        shows, clicks, other = self._item_slots[:, items]
        e = self.examination.rates(self._item_slots.shape[2])
        return shows @ (e * e), clicks @ e - other @ (e * e)

    def _item_mean(self, items: np.ndarray) -> np.ndarray:
        if self.item_prior is None:
            return np.zeros(items.size)
        n, b = self._item_sums(items)
        return np.asarray(b / (self.item_prior + n))

    def _personal_mean(self, user: int, x: np.ndarray) -> np.ndarray:
        if not self.personal.size:
            return np.zeros(x.shape[0])
        a, b = self._stats(user)
        return np.asarray(x[:, self.personal] @ np.linalg.solve(a, b))

    def mean_scores(self, ctx: SlateContext) -> np.ndarray:
        return (super().mean_scores(ctx) + self._item_mean(ctx.items)
                + self._personal_mean(ctx.user, ctx.features))

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        if not self.explore:
            pos = _top(self.mean_scores(ctx), k)
            return SlateChoice(pos, np.ones(pos.size))
        scores = ctx.features @ self.draw()
        if self.personal.size:
            a, b = self._stats(ctx.user)
            inv = np.linalg.inv(a)
            chol = np.linalg.cholesky(inv)
            w = inv @ b + self.noise * (chol @ self._rng.standard_normal(b.size))
            scores = scores + ctx.features[:, self.personal] @ w
        if self.item_prior is not None:
            n, b = self._item_sums(ctx.items)
            prec = self.item_prior + n
            mean = b / prec
            scores = scores + mean + self.noise * self._rng.standard_normal(mean.size) / np.sqrt(
                prec)
        pos = _top(scores, k)
        return SlateChoice(pos, np.full(pos.size, np.nan))

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        x = ctx.features[choice.positions]
        items = ctx.items[choice.positions]
        r = np.asarray(rewards, dtype=np.float64)
        shared = x @ self.mean()
        item = self._item_mean(items)
        person = self._personal_mean(ctx.user, x)
        if x.shape[0] != r.size:
            raise DataError(f"update needs {x.shape[0]} rewards, got {r.size}")
        if self.examination is not None:
            self._update_positions(ctx.user, x, items, r, shared, item, person)
            return
        self.A += x.T @ x
        self.b += x.T @ (r - item - person)
        if self.personal.size:
            a, b = self._stats(ctx.user)
            xp = x[:, self.personal]
            a += xp.T @ xp
            b += xp.T @ (r - shared - item)
        if self.item_prior is not None:
            np.add.at(self._item_n, items, 1.0)
            np.add.at(self._item_b, items, r - shared - person)

    def _update_positions(self, user: int, x: np.ndarray, items: np.ndarray, r: np.ndarray,
                          shared: np.ndarray, item: np.ndarray, person: np.ndarray) -> None:
        """Each part fits e_p * (its term) to the reward less e_p * (the other two's means),
        from per-slot sums weighed by the current rates."""
        assert self.examination is not None
        self.examination.observe(shared + item + person, r)
        self._add_shared(x, r, item + person)
        if self.personal.size:
            self._user_sums.setdefault(user, SlotSums(self.personal.size)).add(
                x[:, self.personal], r, shared + item)
        if self.item_prior is not None:
            slots = np.arange(r.size)
            self._grow(items, r.size)
            np.add.at(self._item_slots[0], (items, slots), 1.0)
            np.add.at(self._item_slots[1], (items, slots), r)
            np.add.at(self._item_slots[2], (items, slots), shared + person)


class HierSquareCBSlate(_SquareCBExploration, PersonalThompsonSlate):
    """SquareCB over the hierarchical model: ``PersonalThompsonSlate``'s posterior mean (the
    shared weights plus each person's and each item's offsets) as the prediction, explored
    slot by slot as ``SquareCBSlate`` explores a ridge prediction (``squarecb_slate``, gamma
    growing as ``gamma0 * sqrt(visits)``), with exact propensities.

    Thompson sampling explores by the posterior's width, and with an offset per item and per
    person that width stays large for every rarely shown candidate, so early visits go to
    candidates the model already ranks low.  SquareCB spends its exploration by the predicted
    gap instead, and less of it as visits accumulate; the offsets still learn from whatever
    is shown, including the new items exploration puts in a list.
    """

    def __init__(self, dim: int, *, gamma0: float = 50.0, **kw: Any) -> None:
        kw.setdefault("name", "serendip HierSquareCB")
        super().__init__(dim, **kw)
        self._start_squarecb(gamma0)


class NewItemBudget:
    """A measured exposure budget for new items on top of any slate policy.

    With probability ``share`` per visit, the last slot (``slot``) shows one of the ``top``
    new candidates not already in the base policy's list, chosen uniformly; the new items are
    ranked by the base policy's mean prediction when it has one, so the budget goes to the new
    items the model already finds most promising, and what they earn is learnt by the base
    policy like any other slot.  Exact propensities: ``share / m`` for the new item shown
    (``m = min(top, new candidates outside the list)``); the base item of that slot keeps its
    own propensity times ``1 - share``.
    """

    def __init__(self, base: SlatePolicy, *, share: float = 0.2, top: int = 5,
                 slot: int = -1, seed: int | None = None, name: str | None = None) -> None:
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"share must lie in [0, 1], got {share}")
        if top < 1:
            raise ConfigError(f"top must be a positive integer, got {top}")
        self.base = base
        self.share = share
        self.top = top
        self.slot = slot
        self.name = name or f"{base.name} + new-item budget"
        self._rng = np.random.default_rng(seed)

    def eligible(self, ctx: SlateContext, shown: np.ndarray) -> np.ndarray:
        """The positions the reserved slot draws from, given the base list."""
        new = np.flatnonzero(ctx.new)
        new = new[~np.isin(new, shown)]
        if new.size == 0:
            return new
        mean_scores = getattr(self.base, "mean_scores", None)
        order = _top(mean_scores(ctx)[new], new.size) if callable(mean_scores) else np.arange(new.size)
        return new[order[: self.top]]

    def select(self, ctx: SlateContext, k: int) -> SlateChoice:
        choice = self.base.select(ctx, k)
        pos, prop = choice.positions.copy(), np.asarray(choice.propensity, dtype=np.float64).copy()
        if pos.size == 0:
            return choice
        pool = self.eligible(ctx, pos)
        if pool.size == 0:
            return SlateChoice(pos, prop)
        slot = self.slot % pos.size
        if self._rng.random() < self.share:
            pos[slot] = pool[int(self._rng.integers(pool.size))]
            prop[slot] = self.share / pool.size
        else:
            prop[slot] *= 1.0 - self.share
        return SlateChoice(pos, prop)

    def update(self, ctx: SlateContext, choice: SlateChoice, rewards: np.ndarray) -> None:
        self.base.update(ctx, choice, rewards)
