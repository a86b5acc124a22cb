"""Scorers that score many queries at once (used by evaluation and batch recommend).

Besides ``score_many`` (every item for every query), a scorer may expose one of two cheaper
forms that let a large catalog be served without scoring every item (see ``retrieval``):

- ``factor_space`` / ``query_factors``: the scores are linear in fixed item factors,
  ``score(q, j) = query(q) . items[j] + offset(q)`` (ALS, semantic, TextCF, popularity);
- ``sparse_scores``: only a few items get a nonzero score (the transition model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from serendip.component import Scorer
from serendip.types import Query

__all__ = ["BatchScorer", "TEXT_SPACE"]

#: Shared factor-space key of scorers whose item factors are the unit text vectors.
TEXT_SPACE = "text"


class BatchScorer(Scorer):
    """A scorer whose natural form is a batch: ``score_many`` is primary, ``score`` a row of it."""

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def score(self, query: Query) -> np.ndarray:
        return self.score_many([query])[0]

    def factor_space(self) -> tuple[str | None, np.ndarray] | None:
        """``(shared key or None, item factors n_items x d)`` when scores are linear in them.

        Scorers that return the same shared key have the same item factors (up to float
        rounding) and share one search index; ``None`` means the factors are private.
        """
        return None

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        """``(query vectors n_queries x d, offsets n_queries)`` for ``factor_space``."""
        raise NotImplementedError(f"{type(self).__name__} has no factor form")

    def sparse_scores(self, queries: Sequence[Query]) -> sp.csr_matrix | None:
        """Scores as a sparse matrix (zero where absent), when that is their natural form."""
        return None
