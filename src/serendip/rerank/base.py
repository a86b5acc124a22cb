"""What every reranker shares: the discovery knob, input checks, and the greedy output format.

A reranker receives scored candidates, picks ``k`` of them best first, writes its objective
value into ``scores`` (made non-increasing), keeps the input score in ``fields["relevance"]``
and appends one human-readable reason per item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, TypeAlias, overload

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.component import ComponentConfig, Reranker
from serendip.data.dataset import Dataset
from serendip.errors import DataError, UnknownIdError
from serendip.limits import MAX_CATEGORIES_PER_ITEM, MAX_CATEGORIES_TOTAL
from serendip.models._util import row_dots
from serendip.types import ItemList, Query

__all__ = [
    "RerankConfig",
    "GreedyReranker",
    "VectorReranker",
    "Candidates",
    "Selection",
    "minmax",
    "unit_vectors",
    "maybe_unit_vectors",
    "Rows",
    "category_matrix",
    "genre_shares",
    "restrict_columns",
    "local_columns",
    "take_rows",
    "dots_with_row",
    "row_columns",
    "row_norms_sq",
    "csr_state",
    "rows_state",
    "names_state",
    "head_mask",
    "relevance_reason", "RELEVANCE_REASONS", "RELEVANCE_TOP", "RELEVANCE_GOOD",
    "people",
]

log = logging.getLogger(__name__)


class RerankConfig(ComponentConfig):
    """The trade-off shared by every reranker: ``lam = strength * discovery``."""

    discovery: float = Field(
        0.5, ge=0, le=1,
        description="default discovery level when the query gives none (0 = pure relevance)",
    )
    strength: float = Field(
        0.5, ge=0, le=1,
        description="trade-off weight reached at discovery = 1 (how far the reranker goes)",
    )


@dataclass(frozen=True)
class Candidates:
    """The finite-scored candidates of one call, sorted by input score (best first)."""

    items: np.ndarray  # item indices
    rel: np.ndarray  # input scores min-max normalised to [0, 1]
    history: np.ndarray  # the query's history, unique item indices


@dataclass(frozen=True)
class Selection:
    """What a reranker chose: positions into ``Candidates``, objective values, one reason each."""

    picks: np.ndarray
    values: np.ndarray
    reasons: list[str]


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant list maps to all ones (every candidate equally relevant)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.ones_like(x)
    return (x - lo) / (hi - lo)


def people(n: float) -> str:
    n = int(n)
    if n == 0:
        return "nobody has"
    return "only 1 person has" if n == 1 else f"only {n:,} people have"


#: What a pick made on relevance says (``relevance_reason``).  A reason is a sentence fragment
#: for a person: no scores, no ranks.  For someone without history the pipeline rewords these,
#: since their "relevance" is popularity, not taste.
RELEVANCE_TOP = "one of your closest matches"
RELEVANCE_GOOD = "a good match for you"
RELEVANCE_REASONS = (RELEVANCE_TOP, RELEVANCE_GOOD)
#: Candidates within this share of the top (at least the first 10) are "closest matches".
TOP_SHARE = 0.05


def relevance_reason(position: int, n: int) -> str:
    """The reason for a pick made on relevance: among the closest matches, or a good one."""
    return RELEVANCE_TOP if position < max(10, TOP_SHARE * n) else RELEVANCE_GOOD


#: Item vectors as rerankers hold them: dense (encoder vectors) or sparse (category rows).
Rows: TypeAlias = np.ndarray | sp.csr_matrix


@overload
def unit_vectors(data: Dataset, who: str, *, sparse: Literal[False] = ...) -> np.ndarray: ...
@overload
def unit_vectors(data: Dataset, who: str, *, sparse: bool) -> Rows: ...
def unit_vectors(data: Dataset, who: str, *, sparse: bool = False) -> Rows:
    """Row-normalised item vectors (encoder space), falling back to normalised genre rows.

    Zero rows stay zero (cosine 0 to everything).  With neither source, raise DataError.
    ``sparse=True`` returns the genre fallback as a CSR matrix (encoder vectors stay dense).
    """
    v = maybe_unit_vectors(data, who, required=True, sparse=sparse)
    assert v is not None
    return v


@overload
def maybe_unit_vectors(data: Dataset, who: str, *, required: bool = ...,
                       sparse: Literal[False] = ...) -> np.ndarray | None: ...
@overload
def maybe_unit_vectors(data: Dataset, who: str, *, required: bool = ...,
                       sparse: bool) -> Rows | None: ...
def maybe_unit_vectors(data: Dataset, who: str, *, required: bool = False,
                       sparse: bool = False) -> Rows | None:
    """Like ``unit_vectors`` but returns None when the dataset has neither source.

    The genre fallback reads the bounded category matrix (``category_matrix``); dense, it
    still takes ``n_items x n_categories`` floats, so callers that can should ask for
    ``sparse=True`` (memory proportional to the (item, category) pairs).
    """
    if data.item_vectors is not None:
        v = np.asarray(data.item_vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    cats = category_matrix(data, who)
    if cats is not None:
        log.info("%s: no item vectors, using genre indicator vectors for similarity", who)
        m = cats[0]
        counts = np.diff(m.indptr)
        scale = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
        unit = sp.csr_matrix(
            (np.repeat(scale, counts).astype(np.float32), m.indices, m.indptr), shape=m.shape
        )
        return unit if sparse else unit.toarray()
    if required:
        raise DataError(
            f"{who} needs item vectors (Dataset.with_item_vectors) or item categories; "
            f"{data!r} has neither"
        )
    return None


def _row_entries(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``m.data`` / ``m.indices`` of the entries of ``rows`` (in that order,
    repeats allowed), and the gathered rows' ``indptr``."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    starts = m.indptr[rows].astype(np.int64)
    counts = m.indptr[rows + 1].astype(np.int64) - starts
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    pos = np.repeat(starts - indptr[:-1], counts) + np.arange(int(indptr[-1]), dtype=np.int64)
    return pos, indptr


def csr_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """``m[rows]`` (rows in the given order, repeats allowed), gathered with numpy: the same
    matrix as scipy's row indexing without its per-call checks, which cost more than the
    gather on a request's few hundred rows."""
    pos, indptr = _row_entries(m, rows)
    return sp.csr_matrix((m.data[pos], m.indices[pos], indptr), shape=(indptr.size - 1, m.shape[1]))


def row_columns(m: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """The column of every stored entry of ``m[rows]``, row after row (``csr_rows(m,
    rows).indices`` without building the matrix, whose constructor costs more than the
    gather on a list's few rows)."""
    pos, _ = _row_entries(m, rows)
    return np.asarray(m.indices[pos])


def restrict_columns(m: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """The entries of ``m`` in the sorted columns ``cols``, renumbered 0..len(cols)-1."""
    m = sp.csr_matrix(m)
    cols = np.asarray(cols, dtype=np.int64)
    pos = np.searchsorted(cols, m.indices)
    hit = pos < cols.size
    hit[hit] = cols[pos[hit]] == m.indices[hit]
    counts = np.bincount(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[hit],
                         minlength=m.shape[0])
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((m.data[hit], pos[hit], indptr), shape=(m.shape[0], cols.size))


def local_columns(m: sp.csr_matrix) -> sp.csr_matrix:
    """The same rows over only the columns they use (renumbered in order), so that work on
    them is proportional to their entries, not to the width of the matrix they came from."""
    cols, inv = np.unique(m.indices, return_inverse=True)
    return sp.csr_matrix((m.data, inv.reshape(-1), m.indptr), shape=(m.shape[0], cols.size))


def take_rows(vectors: Rows, items: np.ndarray) -> Rows:
    """Rows ``items`` of the vectors; sparse rows come in float64 over their own columns."""
    if sp.issparse(vectors):
        return local_columns(vectors[items]).astype(np.float64)
    return vectors[items]


def dots_with_row(vecs: Rows, j: int) -> np.ndarray:
    """``vecs @ vecs[j]``: the dot product of every row with row ``j``."""
    if sp.issparse(vecs):
        return np.asarray(vecs @ vecs[j].toarray().ravel()).ravel()
    return np.asarray(row_dots(vecs, vecs[j]))


def row_norms_sq(vecs: Rows) -> np.ndarray:
    """The squared norm of every row."""
    if isinstance(vecs, np.ndarray):
        return np.einsum("ij,ij->i", vecs, vecs)
    return np.asarray(vecs.multiply(vecs).sum(axis=1)).ravel()


def category_matrix(data: Dataset, who: str) -> tuple[sp.csr_matrix, list[str]] | None:
    """The item x category 0/1 matrix (CSR) and the category names, within the limits.

    Over ``MAX_CATEGORIES_TOTAL`` categories, only the most frequent are kept (ties: name
    order); an item over ``MAX_CATEGORIES_PER_ITEM`` keeps its most frequent ones.  Each cut
    logs a warning.  None when the dataset has no category column or no category.
    """
    cats = data.item_categories
    if cats is None or cats.shape[1] == 0:
        return None
    m = sp.csr_matrix(cats, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    names = list(data.category_names)
    if m.shape[1] > MAX_CATEGORIES_TOTAL:
        freq = np.bincount(m.indices, minlength=m.shape[1])
        keep = np.sort(np.argsort(-freq, kind="stable")[:MAX_CATEGORIES_TOTAL])
        log.warning(
            "%s: the items carry %d distinct categories; keeping the %d most frequent "
            "(MAX_CATEGORIES_TOTAL), the other %d are ignored",
            who, m.shape[1], MAX_CATEGORIES_TOTAL, m.shape[1] - MAX_CATEGORIES_TOTAL,
        )
        m = restrict_columns(m, keep)
        names = [names[i] for i in keep]
    counts = np.diff(m.indptr)
    if m.shape[0] and counts.max() > MAX_CATEGORIES_PER_ITEM:
        freq = np.bincount(m.indices, minlength=m.shape[1])
        row = np.repeat(np.arange(m.shape[0]), counts)
        order = np.lexsort((m.indices, -freq[m.indices], row))  # by row, most frequent first
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size) - m.indptr[row[order]]
        keep_entry = rank < MAX_CATEGORIES_PER_ITEM
        log.warning(
            "%s: %d item(s) carry more than %d categories (up to %d); each keeps its %d most "
            "frequent (MAX_CATEGORIES_PER_ITEM)",
            who, int((counts > MAX_CATEGORIES_PER_ITEM).sum()), MAX_CATEGORIES_PER_ITEM,
            int(counts.max()), MAX_CATEGORIES_PER_ITEM,
        )
        indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.minimum(counts, MAX_CATEGORIES_PER_ITEM), out=indptr[1:])
        m = sp.csr_matrix((m.data[keep_entry], m.indices[keep_entry], indptr), shape=m.shape)
    m.sort_indices()
    return m, names


def genre_shares(data: Dataset, who: str = "rerank") -> tuple[sp.csr_matrix, list[str]]:
    """Sparse item x genre distribution p(g|i) (each genre 1/|genres|) and the genre names.

    Items without genres get an empty row; a dataset without categories gives zero columns.
    The genres are those of ``category_matrix`` (bounded in number, per item and in total).
    """
    cats = category_matrix(data, who)
    if cats is None:
        return sp.csr_matrix((data.n_items, 0), dtype=np.float64), []
    m, names = cats
    counts = np.diff(m.indptr)
    shares = np.repeat(1.0 / np.maximum(counts, 1), counts)
    return sp.csr_matrix((shares, m.indices, m.indptr), shape=m.shape), names


def csr_state(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays for a component's saved state (see ``state_rows``)."""
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices.astype(np.int32),
        f"{prefix}_indptr": m.indptr.astype(np.int64),
        f"{prefix}_ncols": np.asarray(m.shape[1], dtype=np.int64),
    }


def rows_state(prefix: str, rows: Rows) -> dict[str, np.ndarray]:
    """Dense rows are saved as they are, sparse ones as ``csr_state``."""
    return csr_state(prefix, rows) if sp.issparse(rows) else {prefix: rows}


def names_state(prefix: str, names: list[str]) -> dict[str, np.ndarray]:
    """Strings as one UTF-8 byte array plus offsets (a fixed-width string array would take
    ``len(names) x longest name`` characters)."""
    encoded = [n.encode("utf-8") for n in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {f"{prefix}_text": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
            f"{prefix}_offsets": offsets}


def _state_names(state: dict[str, np.ndarray], prefix: str) -> list[str]:
    if f"{prefix}_offsets" in state:
        raw = state[f"{prefix}_text"].tobytes()
        off = state[f"{prefix}_offsets"].tolist()
        return [raw[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:], strict=True)]
    if f"{prefix}_names" in state:  # older state: a fixed-width string array
        return [str(x) for x in state[f"{prefix}_names"]]
    return []


def head_mask(popularity: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` most popular items (ties broken by index), as a boolean mask."""
    n = popularity.size
    n_head = int(np.ceil(share * n))
    order = np.argsort(-popularity, kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_head]] = True
    return mask


class GreedyReranker(Reranker):
    """Template for the rerankers: checks input, handles lam = 0, formats the output list.

    Subclasses implement ``select``; candidates with score ``-inf`` (unscorable) are never
    reranked, only appended last when fewer than ``k`` finite ones exist.
    """

    config: RerankConfig
    _csr: dict[str, sp.csr_matrix]
    _category_names: list[str]

    def _after_load(self) -> None:
        """Rebuild the sparse matrices and category names held as plain arrays."""
        st = self._require_trained()
        self._csr = {}
        for key in st:
            if key.endswith("_indptr"):
                prefix = key[: -len("_indptr")]
                indptr = st[key]
                self._csr[prefix] = sp.csr_matrix(
                    (st[f"{prefix}_data"], st[f"{prefix}_indices"], indptr),
                    shape=(indptr.size - 1, int(st[f"{prefix}_ncols"])),
                )
        if "genres" in st:  # older state: a dense item x genre matrix
            self._csr["genres"] = sp.csr_matrix(np.asarray(st["genres"], dtype=np.float64))
        self._category_names = _state_names(st, "category")

    def _rows(self, name: str) -> Rows:
        """A trained matrix by name: sparse when saved as ``csr_state``, else dense."""
        st = self._require_trained()
        return self._csr[name] if name in self._csr else st[name]

    def trade_off(self, query: Query) -> float:
        """``lam = strength * discovery``, the query's discovery overriding the default."""
        d = query.discovery if query.discovery is not None else self.config.discovery
        return float(self.config.strength * d)

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        raise NotImplementedError  # pragma: no cover

    def _n_items(self) -> int:
        """Catalog size at training time; every reranker stores it as ``n_items``."""
        return int(self._require_trained()["n_items"])

    def __call__(self, query: Query, items: ItemList, k: int, *, record: bool = True
                 ) -> ItemList:
        """The ``k`` picks.  ``record`` matters only to rerankers that remember their lists
        (multi-objective with exposure): False reranks without remembering, e.g. to compute a
        policy's distribution off-line."""
        self._require_trained()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
        n_items = self._n_items()
        scores = items.scores
        bad = np.isnan(scores) | (scores == np.inf)
        if bad.any():
            raise ValueError(
                f"candidate scores must be finite or -inf, got {scores[bad][0]!r} "
                f"for item {int(items.items[bad][0])}"
            )
        if len(items) and (items.items.min() < 0 or items.items.max() >= n_items):
            wrong = items.items[(items.items < 0) | (items.items >= n_items)]
            raise UnknownIdError(
                f"candidate item index {int(wrong[0])} is outside the trained catalog "
                f"of {n_items} items"
            )
        if np.unique(items.items).size != len(items):
            vals, counts = np.unique(items.items, return_counts=True)
            raise ValueError(f"candidate item {int(vals[counts > 1][0])} appears more than once")
        history = np.unique(query.history)
        if history.size and (history[0] < 0 or history[-1] >= n_items):
            wrong = history[(history < 0) | (history >= n_items)]
            raise UnknownIdError(
                f"history item index {int(wrong[0])} is outside the trained catalog "
                f"of {n_items} items"
            )

        order = np.argsort(-scores, kind="stable")
        ranked = items.take(order)
        n_finite = int(np.isfinite(ranked.scores).sum())  # -inf sort last
        m = min(k, n_finite)
        rel = minmax(ranked.scores[:n_finite])
        cand = Candidates(ranked.items[:n_finite], rel, history)
        lam = self.trade_off(query)
        if lam <= 0.0 or m == 0:
            sel = Selection(
                np.arange(m), rel[:m].copy(), [relevance_reason(i, n_finite) for i in range(m)]
            )
        else:
            sel = self.select(query, cand, m, lam)
        picks = np.asarray(sel.picks, dtype=np.int64)
        values = np.asarray(sel.values, dtype=np.float64)
        reasons = list(sel.reasons)
        n_fill = min(k, len(ranked)) - m
        if n_fill > 0:
            picks = np.concatenate([picks, np.arange(n_finite, n_finite + n_fill)])
            values = np.concatenate([values, np.full(n_fill, -np.inf)])
            reasons += ["listed to fill the list: no relevance score"] * n_fill
        # greedy marginal gains need not be monotone (calibration); report the running minimum
        values = np.minimum.accumulate(values) if values.size else values
        out = ranked.take(picks)
        old = out.reason_lists()
        return ItemList(
            out.items,
            values,
            tuple((*r, why) for r, why in zip(old, reasons, strict=True)),
            {**out.fields, "relevance": out.scores},
        )


class VectorReranker(GreedyReranker):
    """A greedy reranker whose only learned state is the unit item vectors."""

    def train(self, data: Dataset) -> None:
        vectors = unit_vectors(data, self.name, sparse=True)
        self._set_state(n_items=np.asarray(data.n_items, dtype=np.int64),
                        **rows_state("vectors", vectors))
