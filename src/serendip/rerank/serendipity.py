"""Serendipity re-ranking: promote items that are relevant *and* unexpected for the user.

``score = (1 - lam) * rel + lam * rel * unexp`` with ``unexp = 1 - mean cosine(i, history)``
in the encoder space (the unexpectedness of Kaminskas & Bridge 2016), clipped to [0, 1].
The product makes an item count only when it is both, following Ge et al. (2010)'s reading
of serendipity as "unexpected and useful".  Without history every item is equally unexpected
and the list is the top-k by relevance.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.models._util import row_dots
from serendip.rerank.base import (
    Candidates,
    RerankConfig,
    Rows,
    Selection,
    VectorReranker,
    local_columns,
    relevance_reason,
)
from serendip.types import Query

__all__ = ["Serendipity", "SerendipityConfig", "history_similarity", "unexpected_reason"]


class SerendipityConfig(RerankConfig):
    strength: float = Field(
        0.8, ge=0, le=1, description="serendipity weight lam reached at discovery = 1"
    )
    surprise_threshold: float = Field(
        0.5, ge=0, le=1,
        description="unexpectedness above which an item's reason calls it unexpected",
    )


def history_similarity(vectors: Rows, items: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Mean cosine of each item to the history items (unit vectors: a dot with the mean).

    Sparse vectors are read over the columns of these rows only."""
    if sp.issparse(vectors):
        rows = local_columns(vectors[np.concatenate([history, items])]).astype(np.float64)
        centre_ = np.asarray(rows[: history.size].mean(axis=0)).ravel()
        return np.asarray(rows[history.size:] @ centre_).ravel()
    centre = vectors[history].astype(np.float64).mean(axis=0)
    return np.asarray(row_dots(vectors[items].astype(np.float64), centre))


def unexpected_reason(similarity: float) -> str:
    return "unlike what you usually choose, yet a good match"


class Serendipity(VectorReranker):
    """Re-sorts candidates by relevance boosted by their unexpectedness to the user."""

    name = "serendipity"
    config_class = SerendipityConfig
    config: SerendipityConfig

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        n = cand.items.size
        if cand.history.size == 0:
            return Selection(np.arange(k), cand.rel[:k], [relevance_reason(i, n) for i in range(k)])
        sim = history_similarity(self._rows("vectors"), cand.items, cand.history)
        unexp = np.clip(1.0 - sim, 0.0, 1.0)
        val = (1.0 - lam) * cand.rel + lam * cand.rel * unexp
        picks = np.argsort(-val, kind="stable")[:k]
        reasons = [
            unexpected_reason(float(sim[j])) if unexp[j] >= self.config.surprise_threshold
            else relevance_reason(int(j), n)
            for j in picks
        ]
        return Selection(picks, val[picks], reasons)
