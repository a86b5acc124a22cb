"""What serving derives from one fitted model, once: :class:`ModelState`.

A request reads the engine's current state once and works on that object only, so a retrain
that swaps in a new state never changes a request half-way.  The state is read-only after
construction except the ``excluded`` mask (items deleted from the store since the fit) and
the ``erased_users`` set (people whose data was erased since the fit).

Badges on a recommended item (thresholds are relative, so they mean the same on any catalog):

- ``tail``: outside the head, the 20% most popular items of the training data
  (Abdollahpouri et al.'s short head, as in the APLT metric).
- ``novel``: self-information ``-log2(users(i) / n_users)`` above the mean self-information
  of the user's history (of the training interactions for a user without history): the item
  is less known than what this user usually picks.
- ``serendipitous``: unexpectedness ``1 - mean cosine(item, history)`` (encoder space) at or
  above the 75th percentile of the whole catalog's unexpectedness for this user, no closer
  than cosine ``SERENDIPITY_MAX_NEAREST`` (0.6, in ``serving``) to any one item of the history,
  *and* relevance (the blend's score before re-ranking) at or above the list's median: unlike
  the user's history, yet judged a good match.  Needs a history.  On catalogs over
  ``REFERENCE_ITEMS`` items the percentile is taken over a fixed random sample of that many
  items (its rank error is about half a percentile), so a request never scans the catalog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, SerendipError
from serendip.eval.metrics import head_by_item_share
from serendip.models.ease import EASE
from serendip.pipeline import PRESETS, Pipeline, Preset, Recommender, load_preset
from serendip.rerank.base import maybe_unit_vectors
from serendip.store.base import EVENT_TYPES
from serendip.text.templates import cell_text, natural_title

__all__ = [
    "ModelState", "NotReadyError", "TextEncoder", "natural_title", "TITLE_COLUMNS",
    "NEGATIVE_TYPES", "POSITIVE_TYPES", "HEAD_SHARE", "SERENDIPITY_QUANTILE", "REFERENCE_ITEMS",
]

log = logging.getLogger(__name__)

#: Event types that say "not this": never history, and their items are not recommended.
NEGATIVE_TYPES = ("skip", "dislike")
POSITIVE_TYPES = tuple(t for t in EVENT_TYPES if t not in NEGATIVE_TYPES)
#: Share of the most popular items that forms the head (the "tail" badge is its complement).
HEAD_SHARE = 0.2
#: Unexpectedness quantile (over the catalog, for this user) that earns "serendipitous".
SERENDIPITY_QUANTILE = 0.75
#: Catalogs larger than this take per-user reference statistics from a sample of this size.
REFERENCE_ITEMS = 8192
#: Item columns read as the title, first match wins.
TITLE_COLUMNS = ("title", "name", "movie_title", "headline")

class NotReadyError(SerendipError, RuntimeError):
    """No model is loaded yet (still seeding or fitting, or the start failed)."""


class TextEncoder(Protocol):
    """What the engine needs from an encoder (``serendip.text.Encoder`` or a test double)."""

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray: ...

    def encode_items(self, data: Dataset, template: str | None = None,
                     progress: bool = True) -> np.ndarray: ...


class ModelState:
    """A fitted model plus what serving derives from it once (read-only after construction,
    except the ``excluded`` mask of items deleted from the store since the fit)."""

    def __init__(self, rec: Recommender, fitted_at: float, store_item_ids: set[str] | None,
                 presets: dict[str, Preset] | None = None):
        data = rec.data
        self.rec = rec
        self.fitted_at = fitted_at
        self.n_items = data.n_items
        self.item_ids: list[str] = [str(x) for x in data.item_ids]
        self.item_pos: dict[str, int] = {iid: i for i, iid in enumerate(self.item_ids)}
        self.user_pos: dict[str, int] = {str(u): i for i, u in enumerate(data.user_ids)}
        self.titles = self._titles(data)
        v = maybe_unit_vectors(data, "service")
        self.vectors = v if v is not None else np.zeros((self.n_items, 1), np.float32)
        pop = np.asarray(data.item_popularity, dtype=np.float64)
        self.popularity = pop
        self.n_users = max(int(data.n_users), 1)
        self.self_info = -np.log2(np.maximum(pop, 1.0) / self.n_users)
        # the mean novelty of what users actually interacted with (popularity-weighted)
        self.mean_info = float((pop * self.self_info).sum() / pop.sum()) if pop.sum() > 0 else 0.0
        self.head = head_by_item_share(pop, HEAD_SHARE)
        sorted_pop = np.sort(pop)
        self.percentile = 100.0 * np.searchsorted(sorted_pop, pop, side="right") / max(pop.size, 1)
        #: share of items (in %) strictly less popular than each item
        self.less_popular_share = (100.0 * np.searchsorted(sorted_pop, pop, side="left")
                                   / max(pop.size, 1))
        self.excluded = np.zeros(self.n_items, dtype=bool)
        if store_item_ids is not None:
            for i, iid in enumerate(self.item_ids):
                if iid not in store_item_ids:
                    self.excluded[i] = True
        self.collab = self._collaborative(rec)
        # a preset that blends a model this fit does not have is reported, not fatal
        self.pipelines: dict[str, Pipeline] = {}
        self.unavailable: dict[str, str] = {}
        for name, preset in (presets or {n: load_preset(n) for n in PRESETS}).items():
            try:
                if name in PRESETS and preset == load_preset(name):  # shipped: may be adapted
                    self.pipelines[name] = rec.pipeline(name)
                else:
                    self.pipelines[name] = rec.pipeline(preset)
            except ConfigError as e:
                self.unavailable[name] = str(e)
                log.warning("preset %r is not available on this model: %s", name, e)
        if not self.pipelines:
            raise ConfigError(f"no preset can be built on this model: {self.unavailable}")
        # a fixed sample of items for per-request reference statistics on large catalogs
        if self.n_items > REFERENCE_ITEMS:
            rng = np.random.default_rng(0)
            self.reference = np.sort(rng.choice(self.n_items, REFERENCE_ITEMS, replace=False))
        else:
            self.reference = np.arange(self.n_items)
        self.reference_vectors = np.ascontiguousarray(self.vectors[self.reference])
        self.retriever = rec.retriever()  # built now, not by the first request
        self._filters: dict[str, dict[str, np.ndarray]] = {}
        self._filters_lock = threading.Lock()
        title_col = next((c for c in TITLE_COLUMNS if c in data.items.columns), None)
        self._field_columns = [c for c in data.items.columns if c not in ("item_id", title_col)]
        self._field_rows: dict[int, dict[str, str]] = {}
        #: users whose data was erased since this model was fitted: served as new users
        self.erased_users: set[str] = set()

    @staticmethod
    def _titles(data: Dataset) -> list[str]:
        ids = [str(x) for x in data.item_ids]
        for c in TITLE_COLUMNS:
            if c in data.items.columns:
                vals = [natural_title(cell_text(x)) for x in data.items[c].tolist()]
                return [v if v else i for v, i in zip(vals, ids, strict=True)]
        return ids

    def fields(self, i: int) -> dict[str, str]:
        """The item's own catalog fields other than its id and title (for cards and reasons)."""
        got = self._field_rows.get(i)
        if got is None:
            row = self.rec.data.items.iloc[i]
            got = {str(c): cell_text(row[c]) for c in self._field_columns}
            got = {c: v for c, v in got.items() if v}
            if len(self._field_rows) < 100_000:
                self._field_rows[i] = got
        return got

    @staticmethod
    def _collaborative(rec: Recommender) -> np.ndarray | None:
        """EASE's item-item weights if the model has an EASE scorer (any recency variant)."""
        for scorer in rec.scorers.values():
            if isinstance(scorer, EASE) and scorer.is_trained:
                return scorer._require_trained()["weights"]
        return None

    # ------------------------------------------------------------------- lookups
    def user_index(self, user_id: str | None) -> int | None:
        """The user's row in the model, or None (unknown, anonymous or erased)."""
        if user_id is None or user_id in self.erased_users:
            return None
        return self.user_pos.get(user_id)

    def index(self, item_id: str) -> int | None:
        i = self.item_pos.get(item_id)
        return None if i is None or self.excluded[i] else i

    def filter_mask(self, filters: Sequence[str]) -> np.ndarray | None:
        """Items matching every ``field:value`` filter ('|'-separated fields match any part)."""
        if not filters:
            return None
        mask = np.ones(self.n_items, dtype=bool)
        columns = [c for c in self.rec.data.items.columns if c != "item_id"]
        for f in filters:
            name, sep, value = f.partition(":")
            name, value = name.strip(), value.strip().casefold()
            if not sep or not name or not value:
                raise ConfigError(f"filter must look like 'field:value', got {f!r}")
            if name not in columns:
                raise ConfigError(f"filter field {name!r} is not an item field; fields: {columns}")
            index = self._filter_index(name)
            hit = index.get(value)
            m = np.zeros(self.n_items, dtype=bool)
            if hit is not None:
                m[hit] = True
            mask &= m
        return mask

    def _filter_index(self, column: str) -> dict[str, np.ndarray]:
        with self._filters_lock:
            got = self._filters.get(column)
            if got is None:
                acc: dict[str, list[int]] = {}
                for i, raw in enumerate(self.rec.data.items[column].tolist()):
                    text = cell_text(raw)
                    tokens = {text.strip().casefold()} | {
                        t.strip().casefold() for t in text.split("|") if t.strip()
                    }
                    for t in tokens:
                        if t:
                            acc.setdefault(t, []).append(i)
                got = {k: np.asarray(v, dtype=np.int64) for k, v in acc.items()}
                self._filters[column] = got
            return got
