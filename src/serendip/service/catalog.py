"""The catalog as the service sees it: items written to the store, deletions applied at once.

An upsert or a deletion commits to the store first, then updates the served state's
``excluded`` mask, so this instance stops serving a deleted item immediately; other instances
on the same store notice through the catalog version (``Lifecycle.sync_catalog``).  New items
reach lists through a retrain (their text must be encoded and fitted).
"""

from __future__ import annotations

from collections.abc import Sequence

from serendip.data.dataset import CATEGORY_COLUMNS
from serendip.errors import UnknownIdError
from serendip.limits import check_categories, parse_categories
from serendip.service.lifecycle import Lifecycle
from serendip.service.state import TITLE_COLUMNS, ModelState, natural_title
from serendip.store.base import ItemRecord, Store

__all__ = ["Catalog"]


class Catalog:
    """Item writes and look-ups: store first, then the served state."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self.store = store
        self.lifecycle = lifecycle

    def upsert(self, records: Sequence[ItemRecord]) -> int:
        """Write items (all or none); more categories per item or in total than the limits
        (``serendip.limits``) is an error naming the item and the limit."""
        cfg = self.lifecycle.config.fit_config
        _check_categories(records, self.lifecycle.current,
                          cfg.category_column if cfg is not None else None)
        with self.lifecycle.lock:
            n = self.store.upsert_items(records)
            s = self.lifecycle.current
            if s is not None:
                for r in records:
                    i = s.item_pos.get(r.item_id)
                    if i is not None:
                        s.excluded[i] = False
        return n

    def delete(self, item_id: str) -> int:
        with self.lifecycle.lock:
            n = self.store.delete_items([item_id])
            if n == 0:
                raise UnknownIdError(f"unknown item id {item_id!r}")
            s = self.lifecycle.current
            if s is not None and item_id in s.item_pos:
                s.excluded[s.item_pos[item_id]] = True
        return n

    def check_exist(self, item_ids: Sequence[str]) -> None:
        """Raise UnknownIdError naming up to five ids that are neither served nor stored."""
        s = self.lifecycle.current
        missing = []
        for iid in dict.fromkeys(item_ids):
            if s is not None and s.index(iid) is not None:
                continue
            if self.store.get_item(iid) is None:
                missing.append(iid)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise UnknownIdError(f"unknown item id(s): {shown}")

    def title(self, item_id: str, s: ModelState | None = None) -> str:
        s = s or self.lifecycle.current
        if s is not None:
            i = s.item_pos.get(item_id)
            if i is not None:
                return s.titles[i]
        rec = self.store.get_item(item_id)
        if rec is not None:
            for c in TITLE_COLUMNS:
                if rec.fields.get(c):
                    return natural_title(rec.fields[c])
        return item_id


def _check_categories(records: Sequence[ItemRecord], s: ModelState | None,
                      configured: str | None) -> None:
    """Bound the categories (genres, tags) per item and in total, per category field: the
    calibration and multi-objective rerankers keep an item x category structure."""
    columns = {c for c in CATEGORY_COLUMNS}
    if configured:
        columns.add(configured)
    for col in sorted(columns):
        values = [(r.item_id, r.fields[col]) for r in records if col in r.fields]
        if not values:
            continue
        check_categories(values, existing=_model_categories(s, col))


def _model_categories(s: ModelState | None, col: str) -> frozenset[str]:
    """The category names of the model's catalog in field ``col`` (cached per model)."""
    if s is None or col not in s.rec.data.items.columns:
        return frozenset()
    cache: dict[str, frozenset[str]] = s.__dict__.setdefault("_category_names", {})
    got = cache.get(col)
    if got is None:
        names: set[str] = set()
        for v in s.rec.data.items[col].tolist():
            names.update(parse_categories(v))
        got = cache[col] = frozenset(names)
    return got
