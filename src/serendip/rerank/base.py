"""What every reranker shares: the discovery knob, input checks, and the greedy output format.

A reranker receives scored candidates, picks ``k`` of them best first, writes its objective
value into ``scores`` (made non-increasing), keeps the input score in ``fields["relevance"]``
and appends one human-readable reason per item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig, Reranker
from serendip.data.dataset import Dataset
from serendip.errors import DataError, UnknownIdError
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
    "genre_shares",
    "head_mask",
    "relevance_reason",
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
    return "only 1 person has" if n == 1 else f"only {n} people have"


def relevance_reason(position: int, n: int) -> str:
    """The reason for a pick made on relevance: its rank among the candidates."""
    return f"a top match for your taste (#{position + 1} of {n} by relevance)"


def unit_vectors(data: Dataset, who: str) -> np.ndarray:
    """Row-normalised item vectors (encoder space), falling back to normalised genre rows.

    Zero rows stay zero (cosine 0 to everything).  With neither source, raise DataError.
    """
    v = maybe_unit_vectors(data, who, required=True)
    assert v is not None
    return v


def maybe_unit_vectors(data: Dataset, who: str, *, required: bool = False) -> np.ndarray | None:
    """Like ``unit_vectors`` but returns None when the dataset has neither source."""
    if data.item_vectors is not None:
        v = np.asarray(data.item_vectors, dtype=np.float32)
    elif data.item_categories is not None and data.item_categories.shape[1] > 0:
        log.info("%s: no item vectors, using genre indicator vectors for similarity", who)
        v = data.item_categories.toarray().astype(np.float32)
    elif required:
        raise DataError(
            f"{who} needs item vectors (Dataset.with_item_vectors) or item categories; "
            f"{data!r} has neither"
        )
    else:
        return None
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def genre_shares(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Dense item x genre distribution p(g|i) (each genre 1/|genres|) and the genre names.

    Items without genres get an all-zero row; a dataset without categories gives zero columns.
    """
    cats = data.item_categories
    if cats is None or cats.shape[1] == 0:
        return np.zeros((data.n_items, 0), np.float32), np.zeros(0, dtype="<U1")
    m = cats.toarray().astype(np.float32)
    counts = m.sum(axis=1, keepdims=True)
    m = m / np.where(counts > 0, counts, 1.0)
    return m, np.asarray(data.category_names, dtype=np.str_)


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
        vectors = unit_vectors(data, self.name)
        self._set_state(n_items=np.asarray(data.n_items, dtype=np.int64), vectors=vectors)
