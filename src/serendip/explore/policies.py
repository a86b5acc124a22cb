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
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from serendip.component import Component, ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError
from serendip.types import ItemList, Query

__all__ = ["EpsilonSlate", "EpsilonSlateConfig", "EXPLORE_REASON"]

EXPLORE_REASON = "exploring: shown to learn whether you like it"


class EpsilonSlateConfig(ComponentConfig):
    epsilon: float = Field(0.1, ge=0, le=1, description="chance that a slot shows a pool item")
    pool: int = Field(50, ge=1, le=10_000,
                      description="exploration pool: the best candidates after the list")
    seed: int | None = Field(None, ge=0, description="fixed seed (replays, tests); None: fresh")


class EpsilonSlate(Component):
    """Slot-wise epsilon-greedy over an exploration pool, with exact marginal propensities."""

    name = "epsilon_slate"
    config_class = EpsilonSlateConfig
    config: EpsilonSlateConfig

    def train(self, data: Dataset) -> None:
        self._set_state(seed=np.asarray(-1 if self.config.seed is None else self.config.seed))

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
        eps = self.config.epsilon if epsilon is None else float(epsilon)
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"epsilon must lie in [0, 1], got {epsilon!r}")
        pool = self._pool(ranked, pool)
        k, m = len(ranked), len(pool)
        perm = self._rng.permutation(m)
        explore = (self._rng.random(k) < eps) & (np.arange(k) < m)
        pos = np.arange(k)
        src_pool = perm[pos[explore]]
        items = ranked.items.copy()
        items[explore] = pool.items[src_pool]
        reasons = ranked.reason_lists()
        pool_reasons = pool.reason_lists()
        for slot, j in zip(pos[explore].tolist(), src_pool.tolist(), strict=True):
            reasons[slot] = [EXPLORE_REASON, *pool_reasons[j]]
        prop = np.where(pos < m, 1.0 - eps, 1.0)
        prop[explore] = eps / m if m else 0.0
        fields: dict[str, np.ndarray] = {}
        relevance = np.asarray(ranked.fields.get("relevance", ranked.scores), dtype=np.float64)
        fields["relevance"] = relevance.copy()
        fields["relevance"][explore] = pool.fields.get("relevance", pool.scores)[src_pool]
        for name, values in ranked.fields.items():
            if name != "relevance" and name in pool.fields:  # fields the pool cannot fill go
                merged = np.asarray(values).copy()
                merged[explore] = np.asarray(pool.fields[name])[src_pool]
                fields[name] = merged
        fields["propensity"] = prop
        fields["explored"] = explore
        return ItemList(items, ranked.scores.copy(), tuple(tuple(r) for r in reasons), fields)

    def _pool(self, ranked: ItemList, pool: ItemList) -> ItemList:
        """The exploration pool: ``pool`` without the ranked items, its first ``pool`` entries."""
        rest = pool.exclude(ranked.items)
        return rest.take(np.arange(min(len(rest), self.config.pool)))

    def action_dist(self, ranked: ItemList, pool: ItemList, epsilon: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """This policy's distribution over items per slot, for evaluating it off-policy.

        Returns ``(items, probs)``: the candidate items (ranked, then pool) and a
        ``len(items) x k`` array whose column p is the distribution of slot p (sums to 1).
        """
        eps = self.config.epsilon if epsilon is None else float(epsilon)
        pool = self._pool(ranked, pool)
        k, m = len(ranked), len(pool)
        items = np.concatenate([ranked.items, pool.items])
        probs = np.zeros((items.size, k))
        for p in range(k):
            if p < m:
                probs[p, p] = 1.0 - eps
                probs[k:, p] = eps / m
            else:
                probs[p, p] = 1.0
        return items, probs
