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

import numpy as np
from pydantic import Field

from serendip.component import Component, ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError
from serendip.types import ItemList, Query

__all__ = ["EpsilonSlate", "EpsilonSlateConfig", "EXPLORE_REASON", "EXPLORE_NEW_REASON"]

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
