"""Maximal Marginal Relevance (Carbonell & Goldstein 1998): relevance minus redundancy."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from serendip.rerank.base import (
    Candidates,
    RerankConfig,
    Selection,
    VectorReranker,
    dots_with_row,
    relevance_reason,
    take_rows,
)
from serendip.types import Query

__all__ = ["MMR", "MMRConfig"]


class MMRConfig(RerankConfig):
    strength: float = Field(
        0.6, ge=0, le=1, description="redundancy weight lam reached at discovery = 1"
    )


#: What a pick made for variety says; the pipeline adds what sets it apart when the catalog
#: has categories ("unlike the rest of this list: a documentary").
VARIETY = "unlike the rest of this list"


def variety_reason(max_sim: float) -> str:
    """The reason for a pick made for variety (``max_sim``: its closest cosine to the others)."""
    return VARIETY


class MMR(VectorReranker):
    """Greedy argmax of (1 - lam) * rel - lam * max cosine to the items already picked.

    Cosine is taken in the encoder space (genre vectors when the dataset has no vectors).
    """

    name = "mmr"
    config_class = MMRConfig
    config: MMRConfig

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        vecs = take_rows(self._rows("vectors"), cand.items)
        n = cand.items.size
        base = (1.0 - lam) * cand.rel
        max_sim = np.zeros(n)  # max over the empty set counts as 0 (no redundancy yet)
        avail = np.ones(n, dtype=bool)
        picks, values, reasons = [], [], []
        for _ in range(k):
            val = np.where(avail, base - lam * max_sim, -np.inf)
            j = int(np.argmax(val))
            best_rel = int(np.argmax(avail))  # candidates are sorted by relevance
            picks.append(j)
            values.append(val[j])
            reasons.append(
                relevance_reason(j, n) if j == best_rel else variety_reason(float(max_sim[j]))
            )
            avail[j] = False
            sim = dots_with_row(vecs, j)
            if len(picks) == 1:
                max_sim = sim.astype(np.float64)
            else:
                np.maximum(max_sim, sim, out=max_sim)
        return Selection(np.asarray(picks), np.asarray(values), reasons)
