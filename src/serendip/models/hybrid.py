"""Hybrid scorer: a weighted blend of per-user standardised scores of other scorers.

Blending z-scores rather than raw scores makes weights comparable across models whose
scales differ by orders of magnitude (EASE weights vs cosines vs transition probabilities).
``tail_boost`` moves weight toward the text-based models for rarely seen items, so that
collaborative strength reaches the tail and cold items through their language-model vectors
(a popularity-gated form of dual-view fusion, cf. LLM-ESR, Liu et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from serendip.errors import ConfigError
from serendip.models._util import standardize
from serendip.models.base import BatchScorer
from serendip.models.retrieval import Retriever, _top
from serendip.types import ItemList, Query

__all__ = ["Hybrid", "TEXT_MODELS"]

#: Scorers whose scores come from item text, and so reach cold items.
TEXT_MODELS = ("textcf", "semantic")


class Hybrid(BatchScorer):
    """Blends trained scorers; built by the pipeline from a preset, not trained on its own."""

    name = "hybrid"

    def __init__(
        self,
        scorers: Mapping[str, BatchScorer],
        weights: Mapping[str, float],
        popularity: np.ndarray,
        tail_boost: float = 0.0,
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
        # gate in [0, 1]: 1 for never-seen items, 1/2 at the median popularity of seen items
        seen = popularity[popularity > 0]
        med = float(np.median(seen)) if seen.size else 1.0
        self._gate = tail_boost * med / (med + popularity)
        self._state = {}

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

    def _views(self, query: Query, retriever: Retriever) -> list[_View]:
        views = []
        for name, w in self.weights.items():
            scorer = self.scorers[name]
            key = retriever.space_of.get(name)
            if key is not None:
                space = retriever.spaces[key]
                qv, off = scorer.query_factors([query])
                q, b = qv[0], float(off[0])
                mu, sd = space.stats(q, b)
                form = scorer.factor_space()
                assert form is not None
                own = form[1]
                views.append(_View(name, w, mu, sd, _linear_values(own, q, b), key, q))
                continue
            sparse = scorer.sparse_scores([query])
            if sparse is not None:
                row = sparse.tocsr()[0]
                data = np.asarray(row.data, dtype=np.float64)
                n = retriever.n_items
                mu = float(data.sum()) / n
                var = float((data**2).sum()) / n - mu * mu
                dense = np.zeros(n)
                dense[row.indices] = data
                views.append(_View(name, w, mu, np.sqrt(max(var, 0.0)), dense.__getitem__,
                                   None, None, np.asarray(row.indices), data))
                continue
            full = scorer.score_many([query])[0].astype(np.float64)
            finite = full[np.isfinite(full)]
            mu = float(finite.mean()) if finite.size else 0.0
            sd = float(finite.std()) if finite.size else 0.0
            views.append(_View(name, w, mu, sd, full.__getitem__, None, None, None, full))
        return views

    def _sources(self, views: list[_View], retriever: Retriever
                 ) -> list[Callable[[int], np.ndarray]]:
        """One candidate source per factor space (queries summed with their blend weights)
        and one per other scorer."""
        combined: dict[str, np.ndarray] = {}
        out: list[Callable[[int], np.ndarray]] = []
        for v in views:
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
        return out

    def _blend(self, views: list[_View], items: np.ndarray) -> np.ndarray:
        total = np.zeros(items.size)
        for v in views:
            z = (np.asarray(v.values(items), dtype=np.float64) - v.mu) / v.scale
            z = np.where(np.isfinite(z), z, -np.inf)
            if v.name in TEXT_MODELS:
                z = z * (1.0 + self._gate[items])
            total += v.weight * z
        return total

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        total: np.ndarray | None = None
        for name, w in self.weights.items():
            z = standardize(self.scorers[name].score_many(queries))
            if name in TEXT_MODELS:
                z = z * (1.0 + self._gate[None, :])
            total = w * z if total is None else total + w * z
        assert total is not None
        return total



@dataclass
class _View:
    """One blended scorer, seen from one query: its z-score statistics and how to read it."""

    name: str
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


def _top_of(items: np.ndarray | None, scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best of ``items`` (all items when None) by ``scores``."""
    best = _top(scores, n)
    return best if items is None else items[best]


def _linear_values(items: np.ndarray, q: np.ndarray, b: float
                   ) -> Callable[[np.ndarray], np.ndarray]:
    q32 = q.astype(items.dtype)

    def values(idx: np.ndarray) -> np.ndarray:
        return np.asarray(items[idx] @ q32, dtype=np.float64) + b

    return values
