"""Hybrid scorer: a weighted blend of per-user standardised scores of other scorers.

Blending z-scores rather than raw scores makes weights comparable across models whose
scales differ by orders of magnitude (EASE weights vs cosines vs transition probabilities).
``tail_boost`` moves weight toward the text-based models for rarely seen items, so that
collaborative strength reaches the tail and cold items through their language-model vectors
(a popularity-gated form of dual-view fusion, cf. LLM-ESR, Liu et al. 2024).

``cold_fill`` puts items nobody used in training on the same scale as the others.  A
collaborative member (EASE, ALS, ItemKNN, transition, popularity) gives such an item a constant
score, so its z-score sits at the bottom and the blend buries it however well its text
matches.  With ``cold_fill`` each such member's z-score of a cold item is replaced by the
member's own z-score at the quantile where the text-to-collaborative model (TextCF, else
Semantic) places that item for the same user: an item the text side ranks above 99 % of the
seen items gets the member's 99th-percentile score.  Matching quantiles rather than copying the
text model's z-score keeps the scale right when the member's scores are heavy-tailed (EASE on a
catalog with bestsellers: a z of 3 is middling there).  Quantiles are taken over the seen items
(a fixed, evenly spaced sample of ``COLD_REFERENCE`` of them in larger catalogs, so the
retrieval path computes the same numbers) and interpolated, so the fill is continuous in the
scores.  The text model is taken from the trained scorers even when the preset gives it no
weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

from serendip.errors import ConfigError
from serendip.models._util import row_dots, standardize
from serendip.models.base import BatchScorer
from serendip.models.retrieval import Retriever, _top
from serendip.types import ItemList, Query

__all__ = ["Hybrid", "TEXT_MODELS", "COLD_MODELS", "COLD_SOURCES", "COLD_REFERENCE"]

#: Scorers whose scores come from item text, and so reach cold items.
TEXT_MODELS = ("textcf", "semantic")
#: Scorers (by type) that score never-seen items through their text on their own; ``cold_fill``
#: leaves their z-scores as they are.
COLD_MODELS = (*TEXT_MODELS, "two_tower", "sequential")
#: Where ``cold_fill`` takes its estimate from, first available first.
COLD_SOURCES = ("textcf", "semantic")
#: Most seen items ``cold_fill`` matches quantiles over (an evenly spaced sample above this).
COLD_REFERENCE = 2048


def _kind(scorer: BatchScorer) -> str:
    """The scorer's type name (an instance may be named otherwise, e.g. ``ease_recent``)."""
    return str(getattr(scorer, "name", ""))


class Hybrid(BatchScorer):
    """Blends trained scorers; built by the pipeline from a preset, not trained on its own.

    ``scorers`` may hold more models than ``weights`` names: the others are not blended, but
    ``cold_fill`` may read its text model among them.
    """

    name = "hybrid"

    def __init__(
        self,
        scorers: Mapping[str, BatchScorer],
        weights: Mapping[str, float],
        popularity: np.ndarray,
        tail_boost: float = 0.0,
        cold_fill: bool = True,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(scorers))
        if unknown:
            raise ConfigError(
                f"blend names untrained model(s) {unknown}; trained: {sorted(scorers)}"
            )
        bad = {k: v for k, v in weights.items() if not np.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(f"blend weights must be finite and >= 0, got {bad}")
        if not any(v > 0 for v in weights.values()):
            raise ConfigError(f"blend needs at least one positive weight, got {dict(weights)}")
        self.scorers = {k: scorers[k] for k, v in weights.items() if v > 0}
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.kinds = {k: _kind(s) for k, s in self.scorers.items()}
        popularity = np.asarray(popularity, dtype=np.float64)
        # gate in [0, 1]: 1 for never-seen items, 1/2 at the median popularity of seen items
        seen = popularity[popularity > 0]
        med = float(np.median(seen)) if seen.size else 1.0
        self._gate = tail_boost * med / (med + popularity)
        self.cold_fill = bool(cold_fill)
        #: never-seen items (None when there are none, or cold_fill is off or has no source)
        self.cold: np.ndarray | None = None
        self.cold_items = np.zeros(0, dtype=np.int64)
        #: the trained scorer cold_fill reads (name and model), None when not filling
        self.cold_source: tuple[str, BatchScorer] | None = None
        #: the seen items whose scores define the quantiles (all, or an even sample)
        self.reference = np.zeros(0, dtype=np.int64)
        filled = [k for k, kind in self.kinds.items() if kind not in COLD_MODELS]
        seen_items = np.flatnonzero(popularity > 0)
        if self.cold_fill and filled and seen_items.size < popularity.size and seen_items.size:
            self.cold_source = _cold_source(scorers, self.weights)
            if self.cold_source is not None:
                self.cold = popularity == 0
                self.cold_items = np.flatnonzero(self.cold)
                pick = np.linspace(0, seen_items.size - 1, min(seen_items.size, COLD_REFERENCE))
                self.reference = seen_items[np.unique(np.round(pick).astype(np.int64))]
        self._state = {}
        #: member name -> (where its factor rows lie, a contiguous copy of the reference
        #: items' rows)
        self._reference_rows: dict[str, tuple[tuple[object, ...], np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- retrieval path
    def retrieve(self, query: Query, retriever: Retriever, n: int,
                 allowed: np.ndarray | None = None) -> ItemList:
        """The ``n`` best items by the blend among retrieved candidates, scored exactly.

        History items and items outside ``allowed`` (a boolean mask) are left out.  When the
        sources return fewer than ``n`` admissible items (a narrow filter, a long history), every
        admissible item is scored instead, so the list is never short.
        """
        n_items = retriever.n_items
        blocked = np.zeros(n_items, dtype=bool) if allowed is None else ~allowed
        blocked[query.history] = True
        n_open = int(n_items - np.count_nonzero(blocked))
        want = min(int(n), n_open)
        if want <= 0:
            return ItemList.empty()
        views = self._views(query, retriever)
        per = max(retriever.config.per_source, want) + int(np.unique(query.history).size)
        if n_open <= per:
            cand = np.flatnonzero(~blocked)
        else:
            pools = [source(per) for source in self._sources(views, retriever)]
            cand = np.unique(np.concatenate(pools)) if pools else np.zeros(0, np.int64)
            cand = cand[~blocked[cand]]
            if cand.size < want:
                cand = np.flatnonzero(~blocked)
        scores = self._blend(views, cand)
        return ItemList(cand, scores).top(want)

    def score_items(self, query: Query, retriever: Retriever, items: np.ndarray) -> np.ndarray:
        """Blend scores of ``items`` for one query, equal to ``score_many`` on those items."""
        items = np.asarray(items, dtype=np.int64)
        return self._blend(self._views(query, retriever), items)

    def _views(self, query: Query, retriever: Retriever) -> _Views:
        members = [self._view(name, self.scorers[name], w, query, retriever)
                   for name, w in self.weights.items()]
        fill = None
        if self.cold is not None and self.cold_source is not None:
            src, scorer = self.cold_source
            fill = next((v for v in members if v.name == src), None)
            if fill is None:  # a model the preset does not blend: seen, never searched
                fill = self._view(src, scorer, 0.0, query, retriever)
            fill_ref = self._reference_z(fill)
            fill.ranks = _Ranks(fill_ref)
            fill.ref_spread = float(np.std(_finite(fill_ref)))
            for v in members:
                if v.kind not in COLD_MODELS:
                    v.ref_sorted = _sorted_finite(self._reference_z(v))
        return _Views(members, fill)

    def _reference_z(self, v: _View) -> np.ndarray:
        """``v.z(self.reference)``.  A factor view reads a contiguous copy of the reference
        items' rows, made once per member, instead of gathering them from across the catalog
        on every request (on a million items most of that gather is cache misses); the
        product is the same."""
        if v.rows is None or v.query is None:
            return v.z(self.reference)
        # keyed by the rows' memory, not the array object: a scorer may hand out a new view
        # of the same factors on every request
        key = (v.rows.__array_interface__["data"][0], v.rows.shape, v.rows.strides,
               v.rows.dtype.str)
        got = self._reference_rows.get(v.name)
        if got is None or got[0] != key:
            got = (key, np.ascontiguousarray(v.rows[self.reference]), v.rows)
            self._reference_rows[v.name] = got  # holding the rows: their memory is not reused
        values = np.asarray(row_dots(got[1], v.query.astype(v.rows.dtype)),
                            dtype=np.float64) + v.offset
        z = (values - v.mu) / v.scale
        return np.where(np.isfinite(z), z, -np.inf)

    @staticmethod
    def _view(name: str, scorer: BatchScorer, w: float, query: Query,
              retriever: Retriever) -> _View:
        kind = _kind(scorer)
        key = retriever.space_of.get(name)
        if key is not None:
            space = retriever.spaces[key]
            qv, off = scorer.query_factors([query])
            q, b = qv[0], float(off[0])
            mu, sd = space.stats(q, b)
            form = scorer.factor_space()
            assert form is not None
            own = form[1]
            return _View(name, kind, w, mu, sd, _linear_values(own, q, b), key, q,
                         rows=own, offset=b)
        sparse = scorer.sparse_scores([query])
        if sparse is not None:
            row = sp.csr_matrix(sparse)  # one query: the matrix is its row (no indexing copy)
            row.sum_duplicates()  # sorted, unique columns
            data = np.asarray(row.data, dtype=np.float64)
            support = np.asarray(row.indices, dtype=np.int64)
            n = retriever.n_items
            mu = float(data.sum()) / n
            var = float((data**2).sum()) / n - mu * mu
            return _View(name, kind, w, mu, np.sqrt(max(var, 0.0)),
                         partial(_sparse_values, support, data), None, None, support, data)
        full = scorer.score_many([query])[0].astype(np.float64)
        finite = full[np.isfinite(full)]
        mu = float(finite.mean()) if finite.size else 0.0
        sd = float(finite.std()) if finite.size else 0.0
        return _View(name, kind, w, mu, sd, full.__getitem__, None, None, None, full)

    def _sources(self, views: _Views, retriever: Retriever
                 ) -> list[Callable[[int], np.ndarray]]:
        """One candidate source per factor space (queries summed with their blend weights),
        one per other scorer, and with ``cold_fill`` the cold items by their exact blend."""
        combined: dict[str, np.ndarray] = {}
        out: list[Callable[[int], np.ndarray]] = []
        for v in views.members:
            if v.space is not None and v.query is not None:
                contribution = (v.weight / v.scale) * v.query
                combined[v.space] = combined.get(v.space, 0.0) + contribution
            elif v.support is not None and v.support_values is not None:
                out.append(partial(_top_of, v.support, v.support_values))
            elif v.support_values is not None:
                full = v.support_values
                out.append(partial(_top_of, None, np.where(np.isfinite(full), full, -np.inf)))
        for key, q in combined.items():
            out.append(partial(retriever.spaces[key].search, q))
        if views.fill is not None and self.cold is not None:
            # the searches above rank by the members' own scores, where cold items sit low
            search = self._cold_search(views, retriever)
            if search is not None:
                out.append(search)
            else:  # an exact scan: O(cold items x dims), finds the ones filled high
                cold = self.cold_items
                out.append(partial(_top_of, cold, self._blend(views, cold)))
        return out

    def _cold_search(self, views: _Views, retriever: Retriever
                     ) -> Callable[[int], np.ndarray] | None:
        """A search of the never-seen items' own rows (an index, or an exact scan of their
        contiguous vectors when few) for the ones the blend fills high, or None when the
        retriever holds none for the fill source's space (then every one is blended exactly).

        On a never-seen item the blend is ``G(s) + q_t . x``: ``s = q_f . x`` the fill
        source's score, ``G`` the (nondecreasing) quantile map that fills the other members,
        and ``q_t`` the text members' queries with their weights, scales and the cold items'
        gate.  ``G`` is replaced by its slope, the ratio of the reference scores' spreads (a
        quantile map between two standardized score sets is near the identity), giving one
        linear query; the items it finds are then scored exactly like every candidate.
        """
        fill = views.fill
        assert fill is not None
        if fill.space is None or fill.query is None or fill.ref_spread is None:
            return None
        space = retriever.cold_space(fill.space, self.cold_items)
        if space is None:
            return None
        gate = float(self._gate[self.cold_items[0]])  # one value for every never-seen item
        slope = sum(v.weight * float(np.std(v.ref_sorted)) for v in views.members
                    if v.ref_sorted is not None)
        spread = fill.ref_spread if fill.ref_spread > 0 else 1.0
        q = (slope / spread / fill.scale) * fill.query
        for v in views.members:
            if v.space == fill.space and v.query is not None and v.kind in TEXT_MODELS:
                q = q + (v.weight * (1.0 + gate) / v.scale) * v.query
        return partial(space.search, q)

    def _blend(self, views: _Views, items: np.ndarray) -> np.ndarray:
        total = np.zeros(items.size)
        pos = cold = warm = fill_z = None
        if views.fill is not None and views.fill.ranks is not None and self.cold is not None:
            cold = self.cold[items]
            if cold.any():
                fill_z = views.fill.z(items[cold])
                pos = views.fill.ranks.position(fill_z)
                warm = ~cold
        for v in views.members:
            if pos is not None and cold is not None and warm is not None:
                if v.ref_sorted is not None:  # filled: the cold items' scores are not read
                    z = np.empty(items.size)
                    z[cold] = _value_at(v.ref_sorted, pos)
                    if warm.any():
                        z[warm] = v.z(items[warm])
                elif v is views.fill:  # the fill source blended: its cold scores are known
                    z = np.empty(items.size)
                    z[cold] = fill_z
                    if warm.any():
                        z[warm] = v.z(items[warm])
                else:
                    z = v.z(items)
            else:
                z = v.z(items)
            if v.kind in TEXT_MODELS:
                z = z * (1.0 + self._gate[items])
            total += v.weight * z
        return total

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        zs = {name: standardize(self.scorers[name].score_many(queries))
              for name in self.weights}
        pos = None
        if self.cold is not None and self.cold_source is not None:
            src, scorer = self.cold_source
            text = zs[src] if src in zs else standardize(scorer.score_many(queries))
            ref = text[:, self.reference]
            pos = np.stack([_Ranks(ref[r]).position(text[r, self.cold])
                            for r in range(text.shape[0])])
        total: np.ndarray | None = None
        for name, w in self.weights.items():
            z, kind = zs[name], self.kinds[name]
            if pos is not None and kind not in COLD_MODELS:
                ref = z[:, self.reference]
                z = z.copy()
                for r in range(z.shape[0]):
                    z[r, self.cold] = _value_at(_sorted_finite(ref[r]), pos[r])
            if kind in TEXT_MODELS:
                z = z * (1.0 + self._gate[None, :])
            total = w * z if total is None else total + w * z
        assert total is not None
        return total


def _cold_source(scorers: Mapping[str, BatchScorer], weights: Mapping[str, float]
                 ) -> tuple[str, BatchScorer] | None:
    """The trained text model ``cold_fill`` reads: TextCF before Semantic; among models of one
    type, one the blend weighs (the heaviest), else the one named as its type, else the first."""
    for kind in COLD_SOURCES:
        named = [k for k, s in scorers.items() if _kind(s) == kind and s.is_trained]
        if not named:
            continue
        blended = [k for k in named if weights.get(k, 0.0) > 0]
        if blended:
            best = max(blended, key=lambda k: weights[k])
        else:
            best = kind if kind in named else named[0]
        return best, scorers[best]
    return None


@dataclass
class _View:
    """One blended scorer, seen from one query: its z-score statistics and how to read it."""

    name: str
    kind: str
    weight: float
    mu: float
    sd: float
    values: Callable[[np.ndarray], np.ndarray]  # scores of the given items
    space: str | None = None  # factor space key (linear scorers)
    query: np.ndarray | None = None  # query vector in that space
    support: np.ndarray | None = None  # items with nonzero scores (sparse scorers)
    support_values: np.ndarray | None = None  # their scores (or every item's, dense scorers)

    @property
    def scale(self) -> float:
        return self.sd if self.sd > 0 else 1.0  # as ``standardize``: constant scores give 0

    rows: np.ndarray | None = None  # a factor view: the items' factor rows
    offset: float = 0.0  # a factor view: the query's constant term
    ranks: _Ranks | None = None  # the cold_fill source: quantile positions of its scores
    ref_sorted: np.ndarray | None = None  # a filled member: its sorted reference z-scores
    ref_spread: float | None = None  # the cold_fill source: spread of its reference z-scores

    def z(self, items: np.ndarray) -> np.ndarray:
        """The z-scores of ``items`` (``-inf`` where the scorer gives no finite score)."""
        z = (np.asarray(self.values(items), dtype=np.float64) - self.mu) / self.scale
        return np.where(np.isfinite(z), z, -np.inf)


class _Ranks:
    """Where a score falls among the reference scores of one query, as a fractional position
    in their sorted order: tied scores share their mean position, and a score between two
    reference scores is interpolated, so the position is continuous in the score."""

    def __init__(self, reference: np.ndarray) -> None:
        ref = np.sort(_finite(reference))
        self.n = ref.size
        self.values, first, counts = np.unique(ref, return_index=True, return_counts=True)
        self.positions = first + (counts - 1) / 2.0

    def position(self, scores: np.ndarray) -> np.ndarray:
        if self.n == 0:
            return np.zeros(np.shape(scores))
        return np.interp(_finite(scores), self.values, self.positions)


def _finite(x: np.ndarray) -> np.ndarray:
    """``x`` with non-finite entries set to its smallest finite value (0 if none)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    if ok.all():
        return x
    return np.where(ok, x, float(x[ok].min()) if ok.any() else 0.0)


def _sorted_finite(x: np.ndarray) -> np.ndarray:
    return np.sort(_finite(x))


def _value_at(ref_sorted: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The sorted reference scores read at fractional positions (linear interpolation)."""
    if ref_sorted.size == 0:
        return np.zeros(np.shape(position))
    return np.interp(position, np.arange(ref_sorted.size), ref_sorted)


@dataclass
class _Views:
    """The blended scorers seen from one query, and the one ``cold_fill`` reads (if any)."""

    members: list[_View]
    fill: _View | None = field(default=None)


def _top_of(items: np.ndarray | None, scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best of ``items`` (all items when None) by ``scores``."""
    best = _top(scores, n)
    return best if items is None else items[best]


def _sparse_values(support: np.ndarray, data: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Scores of ``idx`` from a sparse row (sorted ``support``, its ``data``; 0 elsewhere),
    without a catalog-sized array."""
    idx = np.asarray(idx, dtype=np.int64)
    if support.size == 0:
        return np.zeros(idx.shape)
    pos = np.minimum(np.searchsorted(support, idx), support.size - 1)
    return np.where(support[pos] == idx, data[pos], 0.0)


def _linear_values(items: np.ndarray, q: np.ndarray, b: float
                   ) -> Callable[[np.ndarray], np.ndarray]:
    q32 = q.astype(items.dtype)

    def values(idx: np.ndarray) -> np.ndarray:
        return np.asarray(row_dots(items[idx], q32), dtype=np.float64) + b

    return values
