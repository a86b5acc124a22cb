"""Personalised long-tail promotion by xQuAD over head/tail groups (Abdollahpouri et al. 2019).

Groups: the head (the ``head_share`` most popular training items) and the tail.  A user's
group preference ``P(g|u)`` is the group's share of their history; the greedy score is
``(1 - lam) * rel + lam * sum_g P(g|u) * P(i in g) * cover_g(S)``.  The binary variant uses
``cover_g = prod_{j in S} (1 - 1[j in g])`` (a group counts as covered after one pick); the
smooth variant (the default) uses ``1 - |S in g| / |S|``, the group's missing share of the list.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from serendip.data.dataset import Dataset
from serendip.rerank.base import (
    Candidates,
    GreedyReranker,
    RerankConfig,
    Selection,
    head_mask,
    relevance_reason,
)
from serendip.types import Query

__all__ = ["TailXQuAD", "TailXQuADConfig", "tail_reason"]


class TailXQuADConfig(RerankConfig):
    strength: float = Field(
        0.8, ge=0, le=1, description="coverage weight lam reached at discovery = 1"
    )
    head_share: float = Field(
        0.2, gt=0, lt=1, description="fraction of the catalog (most popular first) in the head"
    )
    binary: bool = Field(
        False, description="binary xQuAD (a group is covered after one pick) instead of smooth"
    )
    prior_tail: float = Field(
        0.5, ge=0, le=1, description="P(tail|u) for a user without history"
    )


def tail_reason(popularity: float) -> str:
    n = int(popularity)
    if n == 0:
        return "nobody has chosen it yet"
    return f"few people have found it yet ({n:,} so far)"


class TailXQuAD(GreedyReranker):
    """xQuAD with head and tail as the two aspects: raises the tail share, per user."""

    name = "xquad_tail"
    config_class = TailXQuADConfig
    config: TailXQuADConfig

    def train(self, data: Dataset) -> None:
        pop = data.item_popularity.astype(np.float64)
        self._set_state(
            n_items=np.asarray(data.n_items, dtype=np.int64),
            popularity=pop,
            head=head_mask(pop, self.config.head_share),
        )

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        state = self._require_trained()
        head_all = state["head"]
        n = cand.items.size
        if cand.history.size:
            p_tail = float(1.0 - head_all[cand.history].mean())
        else:
            p_tail = self.config.prior_tail
        pref = np.array([1.0 - p_tail, p_tail])  # (head, tail)
        member = np.stack([head_all[cand.items], ~head_all[cand.items]]).astype(np.float64)
        gain_base = pref[:, None] * member  # P(g|u) * P(i in g)
        counts = np.zeros(2)
        cover = np.ones(2)
        avail = np.ones(n, dtype=bool)
        picks, values, reasons = [], [], []
        pop = state["popularity"][cand.items]
        for t in range(k):
            val = (1.0 - lam) * cand.rel + lam * (cover @ gain_base)
            val = np.where(avail, val, -np.inf)
            j = int(np.argmax(val))
            picks.append(j)
            values.append(val[j])
            reasons.append(tail_reason(pop[j]) if member[1, j] else relevance_reason(j, n))
            avail[j] = False
            counts += member[:, j]
            if self.config.binary:
                cover = (counts == 0).astype(np.float64)
            else:
                cover = 1.0 - counts / (t + 1)
        return Selection(np.asarray(picks), np.asarray(values), reasons)
