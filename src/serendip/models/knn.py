"""Item-based k-nearest-neighbours (Sarwar et al. 2001; Deshpande & Karypis 2004).

With ``dp_epsilon`` set, the co-count matrix ``X'X`` is replaced by the (epsilon, delta)-DP
noisy Gram of ``serendip.robust.private_gram`` (each user clipped to ``dp_clip`` sampled
interactions, symmetric Gaussian noise calibrated to the clipped sensitivity
``sqrt(dp_clip (dp_clip + 1) / 2)``); negative noisy counts are set to 0 (post-processing), and the
similarities, norms and neighbour lists are computed from it alone, so they carry the same
guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models._util import check_dense_items, history_matrix
from serendip.models.base import BatchScorer
from serendip.robust import private_gram
from serendip.types import Query

__all__ = ["ItemKNN", "ItemKNNConfig"]


class ItemKNNConfig(ComponentConfig):
    neighbors: int = Field(100, ge=1, le=10_000, description="neighbours kept per item")
    shrinkage: float = Field(10.0, ge=0, le=1e6, description="shrinks similarities of rare pairs")
    half_life: float | None = Field(None, gt=0, le=1e6, description="recency weighting of history")
    max_items: int = Field(40_000, ge=1, le=10**7, description="largest catalog to train on")
    dp_epsilon: float | None = Field(
        None, gt=0, le=1e4,
        description="use an (epsilon, delta)-DP co-count matrix (None = exact, no privacy)",
    )
    dp_delta: float = Field(1e-6, gt=0, lt=1, description="delta of the DP guarantee")
    dp_clip: int = Field(
        100, ge=1, le=100_000, description="interactions kept per user (sampled) under DP")
    seed: int = Field(0, ge=0, description="seed of the DP clipping sample and noise")


class ItemKNN(BatchScorer):
    """Cosine item-item similarity on the binary matrix, top-``neighbors`` kept per item;
    score = sum of similarities to the user's history items."""

    name = "knn"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def train(self, data: Dataset) -> None:
        check_dense_items(self.name, data.n_items, self.config.max_items)
        cfg = self.config
        if cfg.dp_epsilon is None:
            x = data.matrix
            co = (x.T @ x).toarray().astype(np.float64)
        else:
            co = private_gram(data.matrix, cfg.dp_epsilon, cfg.dp_delta, cfg.dp_clip,
                              cfg.seed).gram
            np.clip(co, 0.0, None, out=co)  # post-processing: counts are not negative
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
