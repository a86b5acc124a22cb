"""EASE: a closed-form linear item-item autoencoder (Steck 2019, "Embarrassingly Shallow
Autoencoders for Sparse Data"), with optional recency weighting of the user's history and an
optional differentially private Gram matrix.

With ``dp_epsilon`` set, training reads the data only through ``serendip.robust.private_gram``:
each user keeps at most ``dp_clip`` interactions (sampled with ``seed``), so adding or removing
one user changes the upper triangle of ``G = X'X`` (diagonal included) by at most
``Delta = sqrt(dp_clip (dp_clip + 1) / 2)`` in L2 norm, and symmetric Gaussian noise of scale
``sigma`` is added, the smallest ``sigma`` with

    Phi(Delta/(2 sigma) - eps sigma/Delta) - exp(eps) Phi(-Delta/(2 sigma) - eps sigma/Delta)
        <= delta

(the analytic Gaussian mechanism, Balle & Wang 2018).  The noisy Gram is then projected onto
the positive semi-definite matrices (negative eigenvalues set to 0) and the penalty grows by
``dp_l2_noise * sigma * sqrt(n_items)`` (about the noise matrix's spectral norm, a public
quantity) so that ``G + lambda I`` is dominated by signal where it can be; the weights are a function of the noisy Gram only, so they are
(dp_epsilon, dp_delta)-differentially private for adding or removing one user.
"""

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
from serendip.robust import private_gram
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
    dp_epsilon: float | None = Field(
        None, gt=0, le=1e4,
        description="train on an (epsilon, delta)-DP Gram matrix (None = exact, no privacy)",
    )
    dp_delta: float = Field(1e-6, gt=0, lt=1, description="delta of the DP guarantee")
    dp_clip: int = Field(
        100, ge=1, le=100_000, description="interactions kept per user (sampled) under DP")
    dp_l2_noise: float = Field(
        2.0, ge=0, le=1e3,
        description="under DP, add dp_l2_noise * sigma * sqrt(n_items) to l2 (the noise "
                    "matrix's spectral scale; public, so free of privacy cost)",
    )
    seed: int = Field(0, ge=0, description="seed of the DP clipping sample and noise")


class EASE(BatchScorer):
    """B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1; score = x_u B with diag(B) = 0."""

    name = "ease"
    config_class = EASEConfig
    config: EASEConfig

    def train(self, data: Dataset) -> None:
        t0 = time.perf_counter()
        check_dense_items(self.name, data.n_items, self.config.max_items)
        cfg = self.config
        l2 = self.config.l2
        if cfg.dp_epsilon is None:
            x = data.matrix
            g = (x.T @ x).toarray().astype(np.float64)
        else:
            pg = private_gram(data.matrix, cfg.dp_epsilon, cfg.dp_delta, cfg.dp_clip, cfg.seed)
            w, v = np.linalg.eigh(pg.gram)
            g = (v * np.clip(w, 0.0, None)) @ v.T  # post-processing: nearest PSD matrix
            l2 = l2 + cfg.dp_l2_noise * pg.sigma * float(np.sqrt(data.n_items))
        g[np.diag_indices_from(g)] += l2
        p = np.linalg.inv(g)
        del g  # the largest catalogs need every copy gone that can go
        p /= -np.diag(p)[None, :]  # B = -P / diag(P), in place
        p[np.diag_indices_from(p)] = 0.0
        self._set_state(weights=p.astype(np.float32))
        log.info("EASE: %d items in %.2fs", data.n_items, time.perf_counter() - t0)

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        b = self._require_trained()["weights"]
        h = history_matrix(queries, b.shape[0], self.config.half_life)
        return np.asarray(h @ b, dtype=np.float64)
