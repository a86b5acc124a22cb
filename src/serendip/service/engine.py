"""The serving engine: the one object the HTTP layer talks to.

:class:`Engine` wires four parts with one job each, and the flow between them runs one way:

    HTTP (app.py) ──► Engine ──► Serving ──► pipeline (lists, search, explanations)
                                   │  reads
                                   ▼
                      Catalog, Feedback ──► Store (items; events, histories, erasure)
                                   │  read the current state of
                                   ▼
                      Lifecycle (seed, load or fit, retrain and swap, catalog sync, upkeep)

- ``Lifecycle`` (lifecycle.py) owns the current :class:`ModelState` and swaps it;
- ``Catalog`` (catalog.py) writes items and applies deletions to the served state at once;
- ``Feedback`` (feedback.py) stores events, reads histories, credits bandits, and erases or
  exports a person's data;
- ``Serving`` (serving.py) answers lists, similar items, search and explanations.

The engine adds what belongs to the edge: optional pseudonymised user ids (stored as keyed
hashes of the ids callers use, with the key kept outside the store), and the optional text
generator (``EngineConfig.generator``, docs/llm.md): built once, cached in the store, called
by Serving through a ``Runner`` that bounds each request's wait, and by the Catalog's
``Enricher`` in the background.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from serendip.llm import CachedGenerator, Generator, Runner, make_generator
from serendip.pipeline import FitConfig, Recommender
from serendip.privacy import pseudonymize
from serendip.service.catalog import Catalog, Enricher
from serendip.service.config import EngineConfig
from serendip.service.feedback import Feedback
from serendip.service.impressions import ImpressionWriter
from serendip.service.lifecycle import Job, Lifecycle
from serendip.service.serving import Serving
from serendip.service.state import (
    HEAD_SHARE,
    NEGATIVE_TYPES,
    POSITIVE_TYPES,
    SERENDIPITY_QUANTILE,
    ModelState,
    NotReadyError,
    TextEncoder,
)
from serendip.store.base import EventAck, EventRecord, ItemRecord, Store

__all__ = [
    "Engine", "EngineConfig", "ModelState", "NotReadyError", "TextEncoder", "Job",
    "NEGATIVE_TYPES", "POSITIVE_TYPES", "HEAD_SHARE", "SERENDIPITY_QUANTILE",
]


class Engine:
    """Owns the store and the four parts; every HTTP route calls one method here."""

    def __init__(
        self,
        store: Store,
        config: EngineConfig,
        *,
        recommender: Recommender | None = None,
        encoder: TextEncoder | None = None,
        impression_writer: ImpressionWriter | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.store = store
        self.config = config
        # Impressions are written in batches by a background thread, off the request path
        # (None: a writer over this store with the default batch size and interval).
        writer = impression_writer if impression_writer is not None else ImpressionWriter(store)
        self.lifecycle = Lifecycle(store, config, recommender=recommender, encoder=encoder)
        self.catalog = Catalog(store, self.lifecycle)
        self.feedback = Feedback(store, self.lifecycle, self.catalog)
        self.serving = Serving(store, self.lifecycle, self.catalog, self.feedback, writer)
        self.lifecycle.after_install.append(self.feedback.save_bandits)
        self._key = config.user_id_key
        # the generator (None: templates and rules): the descriptions and prose it writes are
        # cached in the store, keyed by (model, prompt hash), so nothing is generated twice
        if generator is None and config.generator is not None:
            generator = make_generator(config.generator)
        self.generator: CachedGenerator | None = None
        self.runner: Runner | None = None
        self.enricher: Enricher | None = None
        if generator is not None:
            self.generator = (generator if isinstance(generator, CachedGenerator)
                              else CachedGenerator(generator, store))
            workers = config.generator.max_concurrency if config.generator is not None else 4
            self.runner = Runner(config.generator_deadline, workers=workers)
            self.enricher = Enricher(store, self.lifecycle, self.generator,
                                     config.enrich_queue, config.enrich_min_chars)
            self.serving.generator = self.generator
            # a conversation's prompts are a person's own words: answered, never cached (the
            # generations table is not erased with a person; docs/llm.md)
            self.serving.conversation_generator = self.generator.generator
            self.serving.runner = self.runner
            self.catalog.enricher = self.enricher
        self._close_lock = threading.Lock()

    # ------------------------------------------------------------------- pseudonymised ids
    def uid(self, user_id: str) -> str:
        """The id stored for ``user_id``: itself, or its keyed hash when ids are pseudonymised."""
        return user_id if self._key is None else pseudonymize(user_id, self._key)

    def _uid_opt(self, user_id: str | None) -> str | None:
        return None if user_id is None else self.uid(user_id)

    # ------------------------------------------------------------------- lifecycle
    @property
    def state(self) -> ModelState:
        return self.lifecycle.state

    @property
    def ready(self) -> bool:
        return self.lifecycle.ready

    @property
    def version(self) -> int:
        return self.lifecycle.version

    @property
    def model_version(self) -> int | None:
        """The store's version of the served model when instances share a model directory
        (docs/deployment.md), else None."""
        return self.lifecycle.model_version if self.lifecycle.shared else None

    @property
    def start_error(self) -> str | None:
        return self.lifecycle.start_error

    @start_error.setter
    def start_error(self, value: str | None) -> None:
        self.lifecycle.start_error = value

    @property
    def impression_writer(self) -> ImpressionWriter:
        return self.serving.impression_writer

    @impression_writer.setter
    def impression_writer(self, writer: ImpressionWriter) -> None:
        self.serving.impression_writer = writer

    @property
    def on_impression(self) -> Any:
        return self.serving.on_impression

    @on_impression.setter
    def on_impression(self, value: Any) -> None:
        self.serving.on_impression = value

    @property
    def retraining(self) -> bool:
        return self.lifecycle.retraining

    def model_age(self) -> float | None:
        return self.lifecycle.model_age()

    def start(self) -> None:
        self.lifecycle.start()

    def start_background(self) -> threading.Thread:
        return self.lifecycle.start_background()

    def seed(self) -> None:
        self.lifecycle.seed()

    def fit_config(self, n_items: int | None = None) -> FitConfig:
        return self.lifecycle.fit_config(n_items)

    def fit_from_store(self) -> Recommender:
        return self.lifecycle.fit_from_store()

    def encoder(self, cfg: FitConfig | None = None) -> TextEncoder:
        return self.lifecycle.encoder(cfg)

    def retrain(self, kind: str = "retrain", reason: str | None = None) -> Job:
        return self.lifecycle.retrain(kind, reason)

    def job(self, job_id: str) -> Job:
        return self.lifecycle.job(job_id)

    def refresh_reason(self) -> str | None:
        return self.lifecycle.refresh_reason()

    def sync_catalog(self, force: bool = False) -> bool:
        return self.lifecycle.sync_catalog(force)

    def sync_model(self) -> bool:
        return self.lifecycle.sync_model()

    def close(self, timeout: float | None = 10.0) -> None:
        """Write the impressions still queued and stop the background loops (shutdown).

        The store stays open (whoever opened it closes it).  Serving after ``close`` still
        works: the next impression starts a new writer thread.
        """
        with self._close_lock:
            if self.enricher is not None:
                self.enricher.close()
            if self.runner is not None:
                self.runner.close()
            self.lifecycle.stop()
            self.feedback.save_bandits()
            self.impression_writer.close(timeout)

    def save_bandits(self) -> None:
        self.feedback.save_bandits()

    def _install(self, rec: Recommender, fitted_at: float,
                 events_at_fit: int | None = None) -> None:
        self.lifecycle.install(rec, fitted_at, events_at_fit)

    # ------------------------------------------------------------------- catalog
    def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        return self.catalog.upsert(records)

    def delete_item(self, item_id: str) -> int:
        return self.catalog.delete(item_id)

    def check_items_exist(self, item_ids: Sequence[str]) -> None:
        self.catalog.check_exist(item_ids)

    def title(self, item_id: str, s: ModelState | None = None) -> str:
        return self.catalog.title(item_id, s)

    # ------------------------------------------------------------------- feedback
    def append_events(self, events: Sequence[EventRecord], learn: bool = True
                      ) -> list[EventAck]:
        if self._key is not None:
            events = [EventRecord(self.uid(e.user_id), e.item_id, e.type, e.timestamp, e.value,
                                  e.idempotency_key) for e in events]
        return self.feedback.append(events, learn)

    def top_users(self, limit: int) -> list[str]:
        return self.feedback.top_users(limit)

    def user_known(self, user_id: str, s: ModelState | None = None) -> bool:
        return self.feedback.user_known(self.uid(user_id), s)

    def history_rows(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        return self.feedback.history_rows(self.uid(user_id), limit)

    def history(self, s: ModelState, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self.feedback.history(s, self.uid(user_id))

    def erase_user(self, user_id: str) -> dict[str, Any]:
        """Remove everything stored about the user, and their row in the served model."""
        # lists served a moment ago are still queued: write them first, so they are erased too
        self.impression_writer.flush(10.0)
        out = self.feedback.erase(self.uid(user_id))
        out["user_id"] = user_id
        return out

    def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user (complete)."""
        out = self.feedback.export(self.uid(user_id))
        out["user_id"] = user_id
        return out

    # ------------------------------------------------------------------- serving
    def recommend(self, user_id: str, k: int = 10, preset: str | None = None,
                  discovery: float | None = None, filters: Sequence[str] = (),
                  explore: float | None = None, learn: bool = True,
                  prose: str = "template") -> dict[str, Any]:
        out = self.serving.recommend(self.uid(user_id), k, preset, discovery, filters, explore,
                                     learn, prose)
        out["user_id"] = user_id
        return out

    def recommend_session(self, item_ids: Sequence[str], k: int = 10, preset: str | None = None,
                          discovery: float | None = None, learn: bool = True) -> dict[str, Any]:
        return self.serving.recommend_session(item_ids, k, preset, discovery, learn)

    def similar(self, item_id: str, k: int = 10) -> dict[str, Any]:
        return self.serving.similar(item_id, k)

    def search(self, text: str, user_id: str | None = None, k: int = 10,
               discovery: float | None = None) -> dict[str, Any]:
        out = self.serving.search(text, self._uid_opt(user_id), k, discovery)
        out["user_id"] = user_id
        return out

    def converse(self, message: str, conversation_id: str | None = None,
                 user_id: str | None = None, k: int = 10) -> dict[str, Any]:
        """One turn of a conversation (a new one when no id is given)."""
        out = self.serving.converse(message, conversation_id, self._uid_opt(user_id), k)
        if user_id is not None:
            out["user_id"] = user_id
        return out

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self.serving.conversation(conversation_id)

    def explain(self, user_id: str, item_id: str) -> dict[str, Any]:
        out = self.serving.explain(self.uid(user_id), item_id)
        out["user_id"] = user_id
        return out

    def off_policy(self, presets: Sequence[str] | None = None, explore: float = 0.0,
                   window: float = 86_400.0, limit: int = 2_000) -> dict[str, Any]:
        return self.serving.off_policy(presets, explore, window, limit)

    def presets(self) -> list[dict[str, Any]]:
        return self.serving.presets()
