"""Semantic scorer: the user's history as a point in the language-model space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import DataError
from serendip.models._util import history_weights, rows_times
from serendip.models.base import TEXT_SPACE, BatchScorer
from serendip.types import Query

__all__ = ["Semantic", "SemanticConfig", "normalized_vectors"]


def normalized_vectors(data: Dataset, who: str) -> np.ndarray:
    if data.item_vectors is None:
        raise DataError(f"{who} needs item vectors: encode the catalog first (Encoder)")
    v = np.asarray(data.item_vectors, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))[:, None]
    if n.size and float(np.abs(n - 1.0).max()) <= 1e-6:
        # already unit vectors: shared, not copied (a million of them is gigabytes), read-only
        # so that nothing can change the catalog's vectors through a model or the reverse
        shared = v.view()
        shared.flags.writeable = False
        return shared
    return (v / np.where(n > 0, n, 1.0)).astype(np.float32)


class SemanticConfig(ComponentConfig):
    half_life: float | None = Field(
        20.0, gt=0, le=1e6, description="recency weighting of history vectors (None = mean)"
    )


class Semantic(BatchScorer):
    """score = cosine(recency-weighted mean of history item vectors, item vector)."""

    name = "semantic"
    config_class = SemanticConfig
    config: SemanticConfig

    def train(self, data: Dataset) -> None:
        self._set_state(vectors=normalized_vectors(data, self.name))

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        v = self._require_trained()["vectors"]
        if len(history) == 0:
            return np.zeros(v.shape[1], dtype=np.float32)
        w = history_weights(len(history), self.config.half_life)
        u = rows_times(w[None, :], v[history])[0]  # the same bits on any number of threads
        n = np.linalg.norm(u)
        return u / n if n > 0 else u

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        return TEXT_SPACE, self._require_trained()["vectors"]

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        u = np.stack([self.user_vector(q.history) for q in queries]).astype(np.float64)
        return u, np.zeros(len(queries))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        v = self._require_trained()["vectors"]
        u = np.stack([self.user_vector(q.history) for q in queries])
        return np.asarray(rows_times(u, v.T), dtype=np.float64)
