"""Determinantal point process re-ranking by fast greedy MAP inference (Chen, Zhang & Zhou 2018).

The kernel is ``L = diag(q) S diag(q)`` with ``S = (1 + cos) / 2`` (the Gram matrix of the
vectors ``[1, v] / sqrt(2)``, hence PSD with unit diagonal) and quality
``q_i = exp(alpha * (rel_i - 1))``.  Following the paper's relevance/diversity trade-off
(its section 4), ``log det L_Y = 2 alpha * sum_Y rel + log det S_Y + const``, so with
``alpha = (1 - lam) / (2 lam)`` maximising it is maximising
``(1 - lam) * sum_Y rel + lam * log det S_Y``: lam -> 0 is pure relevance (alpha -> inf),
lam = 1 pure diversity (alpha = 0).  The shift ``rel - 1`` only rescales every candidate
equally and keeps ``q <= 1`` so large alpha cannot overflow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from serendip.rerank.base import (
    Candidates,
    RerankConfig,
    Selection,
    VectorReranker,
    dots_with_row,
    relevance_reason,
    row_norms_sq,
    take_rows,
)
from serendip.rerank.mmr import variety_reason
from serendip.types import Query

__all__ = ["DPP", "DPPConfig", "dpp_alpha", "dpp_kernel", "greedy_map"]


class DPPConfig(RerankConfig):
    strength: float = Field(
        0.5, ge=0, le=1, description="diversity weight lam reached at discovery = 1"
    )
    eps: float = Field(
        1e-10, gt=0, le=1e-2,
        description="stop the greedy search once the best marginal det gain d^2 is <= eps; "
        "the rest of the list is filled by relevance",
    )


def dpp_alpha(lam: float) -> float:
    """Quality exponent for trade-off ``lam`` in (0, 1]: ``alpha = (1 - lam) / (2 lam)``."""
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"lam must lie in (0, 1] for a DPP kernel, got {lam!r}")
    # capped so that a vanishing lam gives a huge but finite exponent (inf * 0 would be NaN)
    return min((1.0 - lam) / (2.0 * lam), 1e12)


def dpp_kernel(vectors: np.ndarray, rel: np.ndarray, lam: float) -> np.ndarray:
    """The full kernel ``L = diag(q) S diag(q)`` (for tests and small inputs)."""
    q = np.exp(dpp_alpha(lam) * (np.asarray(rel, np.float64) - 1.0))
    v = np.asarray(vectors, np.float64)
    s = (1.0 + v @ v.T) / 2.0
    return q[:, None] * s * q[None, :]


def greedy_map(
    diag: np.ndarray, row: Callable[[int], np.ndarray], k: int, eps: float
) -> tuple[list[int], list[float]]:
    """Algorithm 1 of Chen et al. (2018): greedy MAP with incremental Cholesky, O(N k^2).

    ``row(j)`` returns kernel row ``L[j, :]``.  Returns the picked indices and each pick's
    marginal gain ``d_j^2 = det(L_{Y+j}) / det(L_Y)``; stops early once the gain is <= eps.
    """
    n = diag.size
    k = min(k, n)
    c = np.zeros((k, n))
    d2 = np.asarray(diag, np.float64).copy()
    picks: list[int] = []
    gains: list[float] = []
    j = int(np.argmax(d2))
    while d2[j] > eps:
        picks.append(j)
        gains.append(float(d2[j]))
        t = len(picks) - 1
        if len(picks) == k:
            break
        e = (row(j) - c[:t].T @ c[:t, j]) / np.sqrt(d2[j])
        c[t] = e
        d2 = d2 - e * e
        d2[picks] = -np.inf
        j = int(np.argmax(d2))
    return picks, gains


class DPP(VectorReranker):
    """Relevance-weighted DPP: the list with the largest det of its kernel, picked greedily."""

    name = "dpp"
    config_class = DPPConfig
    config: DPPConfig

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        vecs = take_rows(self._rows("vectors"), cand.items).astype(np.float64)
        n = cand.items.size
        q = np.exp(dpp_alpha(lam) * (cand.rel - 1.0))
        sq = row_norms_sq(vecs)
        max_sim = np.full(n, -np.inf)
        cos_rows: dict[int, np.ndarray] = {}

        def row(j: int) -> np.ndarray:
            cos = dots_with_row(vecs, j)
            cos_rows[j] = cos
            return q[j] * (1.0 + cos) / 2.0 * q

        picks, gains = greedy_map(q * q * (1.0 + sq) / 2.0, row, k, self.config.eps)
        # lam * log d^2 = (1 - lam) * (rel - 1) + lam * log(det-gain of S): the objective
        values = [lam * np.log(g) + (1.0 - lam) for g in gains]
        reasons = []
        avail = np.ones(n, dtype=bool)
        for j in picks:
            best_rel = int(np.argmax(avail))
            reasons.append(
                relevance_reason(j, n) if j == best_rel or not np.isfinite(max_sim[j])
                else variety_reason(float(max_sim[j]))
            )
            avail[j] = False
            np.maximum(max_sim, cos_rows.get(j, dots_with_row(vecs, j)), out=max_sim)
        # early stop: fill by relevance, below every greedy pick
        rest = np.flatnonzero(avail)[: k - len(picks)]
        floor = values[-1] if values else 0.0
        for j in rest:
            picks.append(int(j))
            values.append(floor)
            reasons.append(relevance_reason(int(j), n))
        return Selection(np.asarray(picks, dtype=np.int64), np.asarray(values), reasons)
