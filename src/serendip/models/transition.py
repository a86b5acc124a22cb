"""Item-to-item transitions: what people consume next after what this user consumed last.

A first-order, windowed Markov model (in the spirit of FPMC's transition term, Rendle 2010,
without the factorisation): T[a, b] counts b following a within ``window`` steps of a user's
history, weighted 1/gap, rows normalised.  Scores sum the rows of the user's most recent
items with a geometric decay, so it captures sequence and recency that EASE ignores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["Transition", "TransitionConfig"]


class TransitionConfig(ComponentConfig):
    window: int = Field(5, ge=1, le=100, description="how many later items count as 'next'")
    recent: int = Field(5, ge=1, le=100, description="how many recent history items vote")
    decay: float = Field(0.6, gt=0, le=1, description="vote weight decay per step back")
    smoothing: float = Field(5.0, ge=0, le=1e6, description="added to row sums when normalising")
    max_next: int | None = Field(
        None, ge=1, le=10_000_000,
        description="keep only each item's strongest successors (after normalising; ties by "
        "item order); None keeps all. Bounds a request's work on a large catalog, where a "
        "popular item is followed by hundreds of thousands of others")


class Transition(BatchScorer):
    name = "transition"
    config_class = TransitionConfig
    config: TransitionConfig

    def train(self, data: Dataset) -> None:
        c = self.config
        rows, cols, vals = [], [], []
        for u in range(data.n_users):
            h = data.history(u)
            for gap in range(1, c.window + 1):
                if len(h) > gap:
                    rows.append(h[:-gap])
                    cols.append(h[gap:])
                    vals.append(np.full(len(h) - gap, 1.0 / gap))
        n = data.n_items
        if rows:
            t = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
            )
        else:
            t = sp.csr_matrix((n, n))
        t.sum_duplicates()
        rs = np.asarray(t.sum(axis=1)).ravel() + c.smoothing
        t = sp.diags(1.0 / np.where(rs > 0, rs, 1.0)) @ t
        t = t.tocsr().astype(np.float32)
        if c.max_next is not None:
            t.sort_indices()
            t = strongest_per_row(t, c.max_next)
        self._set_state(data=t.data, indices=t.indices, indptr=t.indptr, shape=np.asarray(t.shape))

    def _after_load(self) -> None:
        st = self._state
        assert st is not None
        self._t = sp.csr_matrix(
            (st["data"], st["indices"], st["indptr"]), shape=tuple(int(x) for x in st["shape"])
        )

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        return np.asarray(self.sparse_scores(queries).toarray(), dtype=np.float64)

    def sparse_scores(self, queries: Sequence[Query]) -> sp.csr_matrix:
        """The decayed sum of the rows of each query's recent items, read row by row (work in
        the rows' nonzeros, not in the catalog size), columns sorted."""
        self._require_trained()
        c = self.config
        t = self._t
        indptr, cols, vals = [0], [], []
        for q in queries:
            recent = np.asarray(q.history[-c.recent :][::-1], dtype=np.int64)
            starts, ends = t.indptr[recent], t.indptr[recent + 1]
            idx = np.concatenate([t.indices[a:b] for a, b in zip(starts, ends, strict=True)]
                                 + [np.zeros(0, t.indices.dtype)])
            val = np.concatenate([t.data[a:b].astype(np.float64) * c.decay**step for step, (a, b)
                                  in enumerate(zip(starts, ends, strict=True))]
                                 + [np.zeros(0)])
            items, inverse = np.unique(idx, return_inverse=True)
            cols.append(items.astype(np.int64))
            vals.append(np.bincount(inverse, weights=val, minlength=items.size))
            indptr.append(indptr[-1] + items.size)
        return sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), np.asarray(indptr)),
                             shape=(len(queries), t.shape[0]))


def strongest_per_row(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """``m`` (sorted indices) with only each row's ``keep`` largest entries, ties going to the
    lower column; the kept entries stay in column order."""
    counts = np.diff(m.indptr)
    if counts.size == 0 or int(counts.max()) <= keep:
        return m
    row = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((-m.data, row))  # by row, then value descending; stable: column order
    rank = np.arange(m.nnz) - m.indptr[row[order]]
    kept = np.zeros(m.nnz, dtype=bool)
    kept[order[rank < keep]] = True
    indptr = np.zeros(m.shape[0] + 1, dtype=m.indptr.dtype)
    np.cumsum(np.minimum(counts, keep), out=indptr[1:])
    return sp.csr_matrix((m.data[kept], m.indices[kept], indptr), shape=m.shape)
