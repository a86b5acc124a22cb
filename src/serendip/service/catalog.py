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
        # the store's category names per field, as of a catalog version (see _check)
        self._categories: tuple[int | None, dict[str, frozenset[str]]] = (None, {})

    def upsert(self, records: Sequence[ItemRecord]) -> int:
        """Write items (all or none); more categories per item or in total than the limits
        (``serendip.limits``) is an error naming the item and the limit."""
        cfg = self.lifecycle.config.fit_config
        with self.lifecycle.lock:
            before = self._check(records, cfg.category_column if cfg is not None else None)
            n = self.store.upsert_items(records)
            self._remember(records, before)
            s = self.lifecycle.current
            if s is not None:
                for r in records:
                    i = s.item_pos.get(r.item_id)
                    if i is not None:
                        s.excluded[i] = False
        return n

    def _remember(self, records: Sequence[ItemRecord], before: int | None) -> None:
        """After an upsert: add its category names to the cache when nothing else changed
        the catalog meanwhile (its version moved by exactly this write), else forget it."""
        version, names = self._categories
        if before is None or version != before:
            return
        after = self.store.catalog_version()
        if after != before + 1:
            self._categories = (None, {})
            return
        grown = dict(names)
        for col in grown:
            extra = {c for r in records if col in r.fields for c in parse_categories(r.fields[col])}
            grown[col] = grown[col] | extra
        self._categories = (after, grown)

    def _check(self, records: Sequence[ItemRecord], configured: str | None) -> int | None:
        """Bound the categories (genres, tags) per item and, counting what the store already
        holds (any instance may have written it), in total, per category field: the
        calibration and multi-objective rerankers keep an item x category structure."""
        columns = set(CATEGORY_COLUMNS) | ({configured} if configured else set())
        wanted = sorted(c for c in columns if any(c in r.fields for r in records))
        if not wanted:
            return None
        version = self.store.catalog_version()
        seen_version, names = self._categories
        if seen_version != version or not set(wanted) <= set(names):
            frame = self.store.items_frame()
            names = {}
            for col in sorted(columns):
                got: set[str] = set()
                if col in frame.columns:
                    for v in frame[col].tolist():
                        got.update(parse_categories(v))
                names[col] = frozenset(got)
            self._categories = (version, names)
        for col in wanted:
            check_categories([(r.item_id, r.fields[col]) for r in records if col in r.fields],
                             existing=names.get(col, frozenset()))
        return version

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
