"""Text-to-collaborative bilinear model: collaborative strength for tail and cold items.

Item-item weights are restricted to the span of the items' language-model vectors,
B = E W E^T, and W is fitted so that the user's history reconstructs the interaction matrix,
min ||X - X E W E^T||^2 + l2 ||W||^2 (a low-rank, text-parameterised EASE).  Because W lives
in text space, an item with no interactions still gets a collaborative score from its text.
The ridge problem has a closed form in the eigenbases of (XE)'(XE) and E'E.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models._util import history_matrix, rows_times
from serendip.models.base import TEXT_SPACE, BatchScorer
from serendip.models.semantic import normalized_vectors
from serendip.types import Query

__all__ = ["TextCF", "TextCFConfig"]

log = logging.getLogger(__name__)


class TextCFConfig(ComponentConfig):
    l2: float = Field(100.0, gt=0, le=1e9, description="ridge penalty on W")
    half_life: float | None = Field(None, gt=0, le=1e6, description="recency weighting")
    bias: bool = Field(True, description="append a constant feature (learns a popularity prior from text)")


class TextCF(BatchScorer):
    """score(u, j) = (x_u E) W e_j with W the bilinear ridge solution (see module doc)."""

    name = "textcf"
    config_class = TextCFConfig
    config: TextCFConfig

    def _features(self, data: Dataset) -> np.ndarray:
        """The unit item vectors (and the constant bias feature), float32, built in place:
        one catalog-sized array, not a chain of copies."""
        if data.item_vectors is None:
            normalized_vectors(data, self.name)  # raises the one-line error
        v = data.item_vectors
        assert v is not None
        n, d = v.shape
        e = np.empty((n, d + 1 if self.config.bias else d), dtype=np.float32)
        e[:, :d] = v
        block = 65_536
        for a in range(0, n, block):
            rows = e[a : a + block, :d]
            norm = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
            rows /= np.where(norm > 0, norm, 1.0)[:, None].astype(np.float32)
        if self.config.bias:
            e[:, d] = 1.0
        return e

    def train(self, data: Dataset) -> None:
        t0 = time.perf_counter()
        e = self._features(data)
        x = data.matrix.astype(np.float32)
        gram = np.zeros((e.shape[1], e.shape[1]))
        for s in range(0, x.shape[0], 65_536):  # (XE)'(XE), a block of users at a time
            a = np.asarray(x[s : s + 65_536] @ e, dtype=np.float64)  # sums over one history
            gram += a.T @ a
        sa, ua = np.linalg.eigh(gram)
        ee = np.zeros((e.shape[1], e.shape[1]))
        for s in range(0, e.shape[0], 65_536):  # E'E in float64, a block of items at a time
            b = e[s : s + 65_536].astype(np.float64)
            ee += b.T @ b
        se, ue = np.linalg.eigh(ee)
        rhs = ua.T @ gram @ ue
        w_t = rhs / (np.outer(np.clip(sa, 0, None), np.clip(se, 0, None)) + self.config.l2)
        w = ua @ w_t @ ue.T
        self._set_state(features=e, weights=w.astype(np.float32))
        log.info("TextCF: %d items, %d dims in %.2fs", e.shape[0], e.shape[1],
                 time.perf_counter() - t0)

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        st = self._require_trained()
        e = st["features"]
        h = history_matrix(queries, e.shape[0], self.config.half_life)
        q = np.asarray(rows_times(np.asarray(h @ e), st["weights"]), dtype=np.float32)
        return np.asarray(rows_times(q, e.T), dtype=np.float64)

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        # the unit text vectors; the bias feature (a constant 1) becomes the offset
        e = self._require_trained()["features"]
        return TEXT_SPACE, (e[:, :-1] if self.config.bias else e)

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        st = self._require_trained()
        e, w = st["features"], st["weights"]
        h = history_matrix(queries, e.shape[0], self.config.half_life)
        q = np.asarray(rows_times(np.asarray(h @ e), w), dtype=np.float64)
        if self.config.bias:
            return q[:, :-1], q[:, -1].copy()
        return q, np.zeros(len(queries))
