"""Helpers shared by the scorers: history weighting and batched user vectors."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from serendip.errors import DataError
from serendip.types import Query

__all__ = ["history_weights", "history_matrix", "standardize", "check_dense_items",
           "available_memory", "row_dots", "quadratic_form", "rows_times"]


def row_dots(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``rows @ q`` (one dot product per row, in the rows' precision), by numpy's own loops
    rather than BLAS, so the bits do not depend on the number of BLAS threads.

    OpenBLAS splits a matrix-vector product among its threads, and the rows a thread is left
    with past its last full block of rows take another code path with another summation
    order: with one thread and with two, 1,500 rows gave different last bits.  On the request
    path that would make a list depend on how many threads made it (a Ray worker with one,
    the command with all), so the products that decide a list are taken here.
    """
    return np.einsum("ij,j->i", rows, q)


def rows_times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for dense 2-d ``a`` and ``b``, with the same bits whatever the number of BLAS
    threads: a single row (one person's scores or query, where OpenBLAS runs a
    matrix-vector product whose last bits depend on its threads) by numpy's own loops; more
    rows by BLAS's matrix-matrix product, each of whose elements is summed in an order that
    does not depend on the threads."""
    if a.ndim == 2 and a.shape[0] == 1:
        return np.einsum("ij,jk->ik", a, b)
    return np.asarray(a @ b)


def quadratic_form(q: np.ndarray, m: np.ndarray) -> float:
    """``q @ m @ q`` by numpy's own loops (thread-independent, as ``row_dots``)."""
    return float(np.einsum("i,i->", row_dots(m, q), q))


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``), or
    None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_dense_items(who: str, n_items: int, max_items: int) -> None:
    """Refuse a dense items x items model on a catalog too large for it, or for the memory
    free right now, before allocating (running out of memory inside the linear algebra kills
    the process instead of raising)."""
    need = n_items * n_items * 8 * 3  # float64 Gram, the inversion's copy, its result
    gb = need / 1e9
    if n_items > max_items:
        raise DataError(
            f"{who} builds dense {n_items:,} x {n_items:,} matrices (about {gb:,.0f} GB) and is "
            f"limited to max_items={max_items:,}; use als, textcf and semantic for this catalog "
            f"(or raise {who}.max_items)"
        )
    free = available_memory()
    if free is not None and need > free:
        raise DataError(
            f"{who} needs about {gb:,.1f} GB for dense {n_items:,} x {n_items:,} matrices but "
            f"{free / 1e9:,.1f} GB of memory is available; leave {who} out of the models for "
            f"this catalog (als, textcf and semantic scale to it) or free memory"
        )


def history_weights(n: int, half_life: float | None) -> np.ndarray:
    """Weight of each history position (oldest first): 1, or 0.5 ** (age / half_life).

    Age counts interactions back from the most recent one, so the last item weighs 1.
    """
    if half_life is None or n == 0:
        return np.ones(n, dtype=np.float32)
    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    return (0.5 ** (age / half_life)).astype(np.float32)


def history_matrix(
    queries: Sequence[Query], n_items: int, half_life: float | None = None
) -> sp.csr_matrix:
    """One sparse row per query: (recency-weighted) indicator of the history items."""
    indptr = [0]
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for q in queries:
        h = q.history
        w = history_weights(len(h), half_life)
        # a repeated item keeps its most recent weight
        _, last = np.unique(h[::-1], return_index=True)
        keep = len(h) - 1 - last
        cols.append(h[keep])
        vals.append(w[keep])
        indptr.append(indptr[-1] + len(keep))
    return sp.csr_matrix(
        (
            np.concatenate(vals) if vals else np.zeros(0, np.float32),
            np.concatenate(cols) if cols else np.zeros(0, np.int64),
            np.asarray(indptr),
        ),
        shape=(len(queries), n_items),
    )


def standardize(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores over finite entries (rows of a 2-D array, or one 1-D row)."""
    s = np.atleast_2d(scores).astype(np.float64)
    finite = np.isfinite(s)
    x = np.where(finite, s, np.nan)
    mu = np.nanmean(x, axis=1, keepdims=True)
    sd = np.nanstd(x, axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    z = np.where(finite, (s - mu) / sd, -np.inf)
    return z.reshape(scores.shape)
