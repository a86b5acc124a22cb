"""EASE: a closed-form linear item-item autoencoder (Steck 2019, "Embarrassingly Shallow
Autoencoders for Sparse Data"), with optional recency weighting of the user's history."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models._util import check_dense_items, history_matrix
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["EASE", "EASEConfig"]

log = logging.getLogger(__name__)


class EASEConfig(ComponentConfig):
    l2: float = Field(500.0, gt=0, le=1e7, description="L2 penalty lambda on the item weights")
    half_life: float | None = Field(
        None, gt=0, le=1e6,
        description="weight history items by 0.5**(age/half_life) at scoring (None = binary)",
    )
    max_items: int = Field(40_000, ge=1, le=10**7, description="largest catalog to train on")


class EASE(BatchScorer):
    """B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1; score = x_u B with diag(B) = 0."""

    name = "ease"
    config_class = EASEConfig
    config: EASEConfig

    def train(self, data: Dataset) -> None:
        t0 = time.perf_counter()
        check_dense_items(self.name, data.n_items, self.config.max_items)
        x = data.matrix
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.config.l2
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self._set_state(weights=b.astype(np.float32))
        log.info("EASE: %d items in %.2fs", data.n_items, time.perf_counter() - t0)

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        b = self._require_trained()["weights"]
        h = history_matrix(queries, b.shape[0], self.config.half_life)
        return np.asarray(h @ b, dtype=np.float64)
