"""The catalog as the service sees it: items written to the store, deletions applied at once.

An upsert or a deletion commits to the store first, then updates the served state's
``excluded`` mask, so this instance stops serving a deleted item immediately; other instances
on the same store notice through the catalog version (``Lifecycle.sync_catalog``).  New items
reach lists through a retrain (their text must be encoded and fitted).

With a generator configured, :class:`Enricher` describes thin new items in the background:
an upsert queues the items whose own text is short (never waiting for the generator), one
thread asks the generator for a description from the item's fields and the text of the items
nearest to it, checks it (``serendip.enrich.describe_record``) and stores it as the item's
``generated_description`` field, leaving every other field as it was.  The next retrain encodes
it with the rest.  The queue is bounded; a full queue, a failed or refused generation, or an
item changed meanwhile is logged and skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

from serendip.data.dataset import CATEGORY_COLUMNS
from serendip.enrich import GENERATED_COLUMN, describe_record, record_is_thin, record_text
from serendip.errors import UnknownIdError
from serendip.limits import check_categories, parse_categories
from serendip.service.lifecycle import Lifecycle
from serendip.service.state import TITLE_COLUMNS, ModelState, natural_title
from serendip.store.base import ItemRecord, Store

__all__ = ["Catalog", "Enricher"]

log = logging.getLogger(__name__)

#: Nearest items whose text goes into a description prompt.
ENRICH_NEIGHBOURS = 5


class Enricher:
    """Generated descriptions for thin new items, off the request path (see the module
    docstring).  ``described``, ``failed``, ``skipped`` and ``dropped`` count the outcomes."""

    def __init__(self, store: Store, lifecycle: Lifecycle, generator: object,
                 max_queue: int = 1000, min_chars: int = 80) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.generator = generator
        self.min_chars = int(min_chars)
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max(1, int(max_queue)))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.described = self.failed = self.skipped = self.dropped = 0

    def submit(self, records: Sequence[ItemRecord]) -> int:
        """Queue the thin items among ``records`` (never blocks); returns how many."""
        n = 0
        for r in records:
            if self._closed or not record_is_thin(r.fields, self.min_chars):
                continue
            try:
                self._queue.put_nowait(r.item_id)
                n += 1
            except queue.Full:
                self.dropped += 1
                log.warning("description queue full (%d items): item %r is not described",
                            self._queue.maxsize, r.item_id)
        if n:
            self._ensure_thread()
        return n

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="serendip-enrich",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item_id = self._queue.get()
            try:
                if item_id is None:
                    return
                self._describe(item_id)
            except Exception as e:  # one item's failure never stops the others
                self.failed += 1
                log.warning("item %r: description failed: %s", item_id, e)
            finally:
                self._queue.task_done()

    def _describe(self, item_id: str) -> None:
        rec = self.store.get_item(item_id)
        if rec is None or not record_is_thin(rec.fields, self.min_chars):
            self.skipped += 1
            return
        text, why = describe_record(self.generator,  # type: ignore[arg-type]
                                    rec.fields, self._neighbours(rec.fields))
        if text is None:
            self.failed += 1
            log.warning("item %r: no description kept: %s", item_id, why)
            return
        with self.lifecycle.lock:  # upserts of this instance hold it too
            now = self.store.get_item(item_id)
            if now is None or now.fields != rec.fields:
                self.skipped += 1  # changed meanwhile: a new upsert queued it again if thin
                return
            self.store.upsert_items([ItemRecord(item_id,
                                                {**rec.fields, GENERATED_COLUMN: text})])
        self.described += 1

    def _neighbours(self, fields: dict[str, str]) -> list[str]:
        """The text of the served items nearest to the item's own text (none before the
        encoder is loaded: describing never loads it)."""
        s = self.lifecycle.current
        if s is None or not self.lifecycle.encoder_loaded:
            return []
        v = np.asarray(self.lifecycle.encoder().encode([record_text(fields)], progress=False)[0])
        if v.shape != s.vectors.shape[1:]:
            return []
        sims = (s.vectors @ v).astype(np.float64)
        sims[s.excluded] = -np.inf
        order = np.argsort(-sims, kind="stable")[:ENRICH_NEIGHBOURS]
        return [". ".join([s.titles[j], *s.fields(int(j)).values()])
                for j in order.tolist() if np.isfinite(sims[j])]

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is worked off; False when ``timeout`` passed first."""
        end = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop after the item being described (those still queued are dropped)."""
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
                self._queue.task_done()
            except queue.Empty:
                break
        if self._thread is not None and self._thread.is_alive():
            self._queue.put_nowait(None)


class Catalog:
    """Item writes and look-ups: store first, then the served state."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self.store = store
        self.lifecycle = lifecycle
        # the store's category names per field, as of a catalog version (see _check)
        self._categories: tuple[int | None, dict[str, frozenset[str]]] = (None, {})
        #: describes thin new items when a generator is configured (set by the engine)
        self.enricher: Enricher | None = None

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
        if self.enricher is not None:  # after the commit, never waiting for the generator
            self.enricher.submit(records)
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
