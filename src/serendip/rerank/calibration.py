"""Calibrated recommendations (Steck 2018): a list whose genre mix matches the user's history.

Greedily maximises ``(1 - lam) * sum_S rel - lam * KL(p || q~)``, with ``p(g|u)`` the genre
mix of the history, ``q(g|u)`` that of the list (each item's genres weighted 1/|genres|) and
``q~ = (1 - alpha) q + alpha p``.  Without item categories, or for a user whose history has
no genres, there is nothing to calibrate to and the top-k by relevance is returned.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from serendip.data.dataset import Dataset
from serendip.rerank.base import (
    Candidates,
    GreedyReranker,
    RerankConfig,
    Selection,
    genre_shares,
    relevance_reason,
)
from serendip.types import Query

__all__ = ["Calibration", "CalibrationConfig", "kl_divergence", "CalibrationState"]


class CalibrationConfig(RerankConfig):
    strength: float = Field(
        0.9, ge=0, le=1, description="calibration weight lam reached at discovery = 1"
    )
    alpha: float = Field(
        0.01, gt=0, lt=1, description="smoothing of the list's genre mix toward the history's"
    )


def kl_divergence(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """KL(p || (1 - alpha) q + alpha p) for each row of ``q`` (Steck 2018, eq. 5)."""
    mask = p > 0
    pp = p[mask]
    qt = (1.0 - alpha) * np.atleast_2d(q)[:, mask] + alpha * pp
    return np.asarray((pp * (np.log(pp) - np.log(qt))).sum(axis=1))


class CalibrationState:
    """Running genre mix of a list being built, and the KL of every one-item extension.

    Only genres with ``p > 0`` enter the KL, so those columns are kept apart once.
    """

    def __init__(self, p: np.ndarray, genres: np.ndarray, alpha: float,
                 row_mass: np.ndarray | None = None):
        """``genres`` may hold only some genre columns (those of ``p``); ``row_mass`` is then
        each candidate's genre mass over all genres, which normalises the list's mix."""
        self.p, self.genres, self.alpha = p, genres, alpha
        mask = p > 0
        self._pp = p[mask]
        self._cols = genres[:, mask]
        self._row_mass = genres.sum(axis=1) if row_mass is None else row_mass
        self._const = float(self._pp @ np.log(self._pp))
        self.mass_sum = np.zeros(p.size)
        self.mass_total = 0.0
        self.kl = float(kl_divergence(p, self.mass_sum, alpha)[0])

    def kl_if_added(self) -> np.ndarray:
        total = self.mass_total + self._row_mass
        q = (self.mass_sum[self.p > 0] + self._cols) / np.where(total > 0, total, 1.0)[:, None]
        qt = (1.0 - self.alpha) * q + self.alpha * self._pp
        return np.asarray(self._const - np.log(qt) @ self._pp)

    def add(self, j: int, kl_new: float) -> None:
        self.mass_sum = self.mass_sum + self.genres[j]
        self.mass_total += float(self._row_mass[j])
        self.kl = kl_new

    def missing_genre(self, j: int) -> int | None:
        """The genre of item ``j`` that the list so far most under-represents, if any."""
        total = self.mass_total
        q = self.mass_sum / total if total > 0 else self.mass_sum
        deficit = np.where(self.genres[j] > 0, self.p - q, -np.inf)
        g = int(np.argmax(deficit))
        return g if deficit[g] > 0 else None


def history_mix(genres: np.ndarray, history: np.ndarray) -> np.ndarray | None:
    """p(g|u): the genre mix of the history, or None when it carries no genre."""
    if history.size == 0 or genres.shape[1] == 0:
        return None
    p = genres[history].sum(axis=0).astype(np.float64)
    total = p.sum()
    return p / total if total > 0 else None


def interest_reason(name: str, share: float) -> str:
    return f"brings back your interest in {name} ({share:.0%} of your history)"


class Calibration(GreedyReranker):
    """Steck's calibrated re-ranking: fixes lists that over-serve a user's main genre."""

    name = "calibration"
    config_class = CalibrationConfig
    config: CalibrationConfig

    def train(self, data: Dataset) -> None:
        genres, names = genre_shares(data)
        self._set_state(n_items=np.asarray(data.n_items, dtype=np.int64), genres=genres, category_names=names)

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        state = self._require_trained()
        n = cand.items.size
        p = history_mix(state["genres"], cand.history)
        if p is None:
            return Selection(np.arange(k), cand.rel[:k], [relevance_reason(i, n) for i in range(k)])
        names = state["category_names"]
        cal = CalibrationState(p, state["genres"][cand.items].astype(np.float64), self.config.alpha)
        avail = np.ones(n, dtype=bool)
        picks, values, reasons = [], [], []
        for _ in range(k):
            kl_new = cal.kl_if_added()
            val = np.where(avail, (1.0 - lam) * cand.rel - lam * (kl_new - cal.kl), -np.inf)
            j = int(np.argmax(val))
            g = None if j == int(np.argmax(avail)) else cal.missing_genre(j)
            if g is None:
                reasons.append(relevance_reason(j, n))
            else:
                reasons.append(interest_reason(str(names[g]), float(p[g])))
            picks.append(j)
            values.append(val[j])
            avail[j] = False
            cal.add(j, float(kl_new[j]))
        return Selection(np.asarray(picks), np.asarray(values), reasons)
