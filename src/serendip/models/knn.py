"""Item-based k-nearest-neighbours (Sarwar et al. 2001; Deshpande & Karypis 2004)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models._util import check_dense_items, history_matrix
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["ItemKNN", "ItemKNNConfig"]


class ItemKNNConfig(ComponentConfig):
    neighbors: int = Field(100, ge=1, le=10_000, description="neighbours kept per item")
    shrinkage: float = Field(10.0, ge=0, le=1e6, description="shrinks similarities of rare pairs")
    half_life: float | None = Field(None, gt=0, le=1e6, description="recency weighting of history")
    max_items: int = Field(40_000, ge=1, le=10**7, description="largest catalog to train on")


class ItemKNN(BatchScorer):
    """Cosine item-item similarity on the binary matrix, top-``neighbors`` kept per item;
    score = sum of similarities to the user's history items."""

    name = "knn"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def train(self, data: Dataset) -> None:
        check_dense_items(self.name, data.n_items, self.config.max_items)
        x = data.matrix
        co = (x.T @ x).toarray().astype(np.float64)
        norms = np.sqrt(np.diag(co))
        denom = np.outer(norms, norms) + self.config.shrinkage
        sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
        np.fill_diagonal(sim, 0.0)
        k = min(self.config.neighbors, sim.shape[0] - 1)
        if k < sim.shape[0] - 1:
            # keep, for each target column, the k largest similarities
            thresh = -np.partition(-sim, k - 1, axis=0)[k - 1 : k, :]
            sim = np.where(sim >= thresh, sim, 0.0)
        self._set_state(similarity=sim.astype(np.float32))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        s = self._require_trained()["similarity"]
        h = history_matrix(queries, s.shape[0], self.config.half_life)
        return np.asarray(sp.csr_matrix(h) @ s, dtype=np.float64)
