"""Scorers that score many queries at once (used by evaluation and batch recommend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serendip.component import Scorer
from serendip.types import Query

__all__ = ["BatchScorer"]


class BatchScorer(Scorer):
    """A scorer whose natural form is a batch: ``score_many`` is primary, ``score`` a row of it."""

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def score(self, query: Query) -> np.ndarray:
        return self.score_many([query])[0]
