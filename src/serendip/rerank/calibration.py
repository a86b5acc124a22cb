"""Calibrated recommendations (Steck 2018): a list whose genre mix matches the user's history.

Greedily maximises ``(1 - lam) * sum_S rel - lam * KL(p || q~)``, with ``p(g|u)`` the genre
mix of the history, ``q(g|u)`` that of the list (each item's genres weighted 1/|genres|) and
``q~ = (1 - alpha) q + alpha p``.  Without item categories, or for a user whose history has
no genres, there is nothing to calibrate to and the top-k by relevance is returned.

Genre shares are held as a sparse item x genre matrix within the bounds of
``serendip.limits`` (``base.category_matrix``), and each call works only on the genres of the
history and of the candidates, so neither memory nor latency grows with the catalog's number
of genres.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.data.dataset import Dataset
from serendip.rerank.base import (
    Candidates,
    GreedyReranker,
    RerankConfig,
    Selection,
    csr_rows,
    csr_state,
    genre_shares,
    names_state,
    relevance_reason,
    restrict_columns,
)
from serendip.types import Query

__all__ = [
    "Calibration", "CalibrationConfig", "kl_divergence", "CalibrationState", "history_mix",
    "genre_rows",
]


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

    Only genres with ``p > 0`` enter the KL, so only those columns are kept, as sparse rows:
    each step costs the number of those genres plus the candidates' entries among them, never
    candidates x genres.
    """

    def __init__(self, p: np.ndarray, genres: sp.csr_matrix | np.ndarray, alpha: float,
                 row_mass: np.ndarray | None = None):
        """``p`` is the history's mix over the columns of ``genres`` (one row per candidate).
        ``genres`` may hold only some genre columns (those of ``p``); ``row_mass`` is then
        each candidate's genre mass over all genres, which normalises the list's mix."""
        p = np.asarray(p, dtype=np.float64)
        rows = sp.csr_matrix(genres, dtype=np.float64)
        rows.sum_duplicates()
        self.alpha = alpha
        self._n = rows.shape[0]
        self._row_mass = (np.asarray(rows.sum(axis=1)).ravel() if row_mass is None
                          else np.asarray(row_mass, dtype=np.float64))
        self._cols = np.flatnonzero(p > 0)  # state columns -> columns of ``p``
        if self._cols.size < p.size:
            rows = restrict_columns(rows, self._cols)
        rows.sort_indices()
        self._pp = p[self._cols]
        self._indptr = rows.indptr
        self._indices = rows.indices.astype(np.int64)
        self._data = rows.data
        self._row_of = np.repeat(np.arange(self._n), np.diff(rows.indptr))
        # the candidates' distinct masses (few: 0 and 1 for shares), found once, not per step
        self._masses, inverse = np.unique(self._row_mass, return_inverse=True)
        self._mass_of = inverse.reshape(-1)
        self._const = float(self._pp @ np.log(self._pp))
        self.mass_sum = np.zeros(self._pp.size)
        self.mass_total = 0.0
        self.kl = float(kl_divergence(self._pp, self.mass_sum, alpha)[0])

    def kl_if_added(self) -> np.ndarray:
        """KL(p || q~) of the list plus each candidate in turn.

        A candidate changes the mix's normaliser for every genre but its entries only for its
        own genres: the sum over genres is taken once per distinct normaliser, then corrected
        on the candidate's entries."""
        a, alpha, pp, ms = 1.0 - self.alpha, self.alpha, self._pp, self.mass_sum
        total = self.mass_total + self._masses  # per distinct mass, as per candidate
        uniq = np.where(total > 0, total, 1.0)
        base = np.log(a * (ms[None, :] / uniq[:, None]) + alpha * pp[None, :]) @ pp
        denom = uniq[self._mass_of]
        idx = self._indices
        d = denom[self._row_of]
        ms_e, pp_e = ms[idx], pp[idx]
        corr = pp_e * (np.log(a * ((ms_e + self._data) / d) + alpha * pp_e)
                       - np.log(a * (ms_e / d) + alpha * pp_e))
        s = base[self._mass_of] + np.bincount(self._row_of, weights=corr, minlength=self._n)
        return np.asarray(self._const - s)

    def _entries(self, j: int) -> slice:
        return slice(int(self._indptr[j]), int(self._indptr[j + 1]))

    def add(self, j: int, kl_new: float) -> None:
        e = self._entries(j)
        self.mass_sum = self.mass_sum.copy()
        np.add.at(self.mass_sum, self._indices[e], self._data[e])
        self.mass_total += float(self._row_mass[j])
        self.kl = kl_new

    def missing_genre(self, j: int) -> int | None:
        """The genre of item ``j`` (a column of ``p``) that the list so far most
        under-represents, if any."""
        e = self._entries(j)
        idx = self._indices[e][self._data[e] > 0]
        if idx.size == 0:
            return None
        total = self.mass_total
        q = self.mass_sum[idx] / total if total > 0 else self.mass_sum[idx]
        deficit = self._pp[idx] - q
        g = int(np.argmax(deficit))
        return int(self._cols[idx[g]]) if deficit[g] > 0 else None


def history_mix(genres: sp.csr_matrix, history: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """p(g|u), the genre mix of the history, as (sorted genre columns, their shares > 0);
    None when the history carries no genre."""
    if history.size == 0 or genres.shape[1] == 0:
        return None
    sub = csr_rows(genres, history)
    if sub.nnz == 0:
        return None
    cols, inv = np.unique(sub.indices, return_inverse=True)
    p = np.bincount(inv.reshape(-1), weights=sub.data.astype(np.float64), minlength=cols.size)
    keep = p > 0
    cols, p = cols[keep].astype(np.int64), p[keep]
    total = p.sum()
    return (cols, p / total) if total > 0 else None


def genre_rows(genres: sp.csr_matrix, items: np.ndarray, cols: np.ndarray
               ) -> tuple[sp.csr_matrix, np.ndarray]:
    """The items' genre shares over the sorted columns ``cols`` only, and each item's genre
    mass over all genres (1 for an item with genres, else 0: shares sum to 1)."""
    sub = csr_rows(genres, items)
    mass = (np.diff(sub.indptr) > 0).astype(np.float64)
    return restrict_columns(sub, cols), mass


def history_count(genres: sp.csr_matrix, history: np.ndarray, col: int) -> tuple[int, int]:
    """(items of the history in category ``col``, items in the history)."""
    hist = np.unique(history)
    rows = csr_rows(genres, hist)
    hit = (rows.indices == int(col)) & (rows.data != 0)
    owner = np.repeat(np.arange(hist.size), np.diff(rows.indptr))
    return int(np.unique(owner[hit]).size), int(hist.size)


def interest_reason(name: str, count: int, total: int) -> str:
    """Why a pick restores a category the list under-serves: how many of the person's items
    are in it (a count of items, which a person can check, not a share of category mass)."""
    return f"brings back your interest in {name} ({count} of the {total} you chose)"


class Calibration(GreedyReranker):
    """Steck's calibrated re-ranking: fixes lists that over-serve a user's main genre."""

    name = "calibration"
    config_class = CalibrationConfig
    config: CalibrationConfig

    def train(self, data: Dataset) -> None:
        genres, names = genre_shares(data, self.name)
        self._set_state(n_items=np.asarray(data.n_items, dtype=np.int64),
                        **csr_state("genres", genres), **names_state("category", names))

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        n = cand.items.size
        mix = history_mix(self._rows("genres"), cand.history)
        if mix is None:
            return Selection(np.arange(k), cand.rel[:k], [relevance_reason(i, n) for i in range(k)])
        cols, p = mix
        names = self._category_names
        rows, mass = genre_rows(self._rows("genres"), cand.items, cols)
        cal = CalibrationState(p, rows, self.config.alpha, row_mass=mass)
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
                reasons.append(interest_reason(names[int(cols[g])], *history_count(
                    self._rows("genres"), cand.history, int(cols[g]))))
            picks.append(j)
            values.append(val[j])
            avail[j] = False
            cal.add(j, float(kl_new[j]))
        return Selection(np.asarray(picks), np.asarray(values), reasons)
