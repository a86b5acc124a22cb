"""The model's life in the service: seed, load or fit, retrain, swap; catalog sync; upkeep.

:class:`Lifecycle` holds the one current :class:`ModelState`.  A retrain builds a new
Recommender in a thread and swaps the state reference under a lock, carrying the bandits'
learned statistics over.  Two background loops keep a running instance honest without a
retrain:

- **catalog sync** polls the store's catalog version (one indexed read every
  ``catalog_poll`` seconds) and, when another instance on the same store changed the
  catalog, re-reads which items exist, so a deletion stops being served on every instance
  within about ``catalog_poll`` seconds;
- **refresh** (optional) retrains when the store holds items the model lacks or many new
  events; the same loop deletes impressions older than the retention age.

Nothing here serves a request: serving reads ``lifecycle.state`` once per request.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from serendip.data.dataset import Dataset
from serendip.errors import DataError, UnknownIdError
from serendip.pipeline import LARGE_CATALOG, FitConfig, Recommender, recover_model_dir
from serendip.service.config import EngineConfig
from serendip.service.state import POSITIVE_TYPES, ModelState, NotReadyError, TextEncoder
from serendip.store.base import EventRecord, ItemRecord, Store
from serendip.text import Encoder, EncoderConfig
from serendip.text.templates import cell_text

__all__ = ["Lifecycle", "Job", "MAX_JOBS"]

log = logging.getLogger(__name__)

#: Finished and running jobs kept for GET /v1/admin/jobs/{id} (the oldest go first).
MAX_JOBS = 100


@dataclass
class Job:
    job_id: str
    status: str = "running"
    kind: str = "retrain"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    reason: str | None = None  # what started an automatic refresh
    n_users: int | None = None
    n_items: int | None = None
    n_interactions: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Lifecycle:
    """The current model: start (seed, load or fit), retrain and swap, catalog sync, upkeep."""

    def __init__(self, store: Store, config: EngineConfig, *,
                 recommender: Recommender | None = None,
                 encoder: TextEncoder | None = None) -> None:
        self.store = store
        self.config = config
        self._injected = recommender
        self._encoder: TextEncoder | None = encoder
        self.encoder_lock = threading.Lock()
        #: guards the swap of ``_state`` and writes to a state's ``excluded`` mask
        self.lock = threading.Lock()
        self._state: ModelState | None = None
        self._jobs: dict[str, Job] = {}
        self._queued: Job | None = None
        self.start_error: str | None = None
        #: why the encoder failed to load at start (search is then unavailable), or None
        self.encoder_error: str | None = None
        self.version = 0
        self._events_at_fit = 0
        self._catalog_version: int | None = None
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._last_purge = 0.0
        #: called with (old state, new state) while a new state is swapped in (bandit carry)
        self.on_install: list[Any] = []
        #: called with no arguments after a new state is in place (saving bandit statistics)
        self.after_install: list[Any] = []

    # ------------------------------------------------------------------- the current state
    @property
    def state(self) -> ModelState:
        s = self._state
        if s is None:
            raise NotReadyError(
                "the model is not loaded yet" + (f": {self.start_error}" if self.start_error else
                                                 " (seeding or fitting; see /readyz)")
            )
        return s

    @property
    def current(self) -> ModelState | None:
        """The state, or None before the first model is ready."""
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is not None

    def model_age(self) -> float | None:
        s = self._state
        return None if s is None else max(0.0, time.time() - s.fitted_at)

    # ------------------------------------------------------------------- start and stop
    def start(self) -> None:
        """Seed an empty store, then load the saved model or fit one from the store."""
        t0 = time.perf_counter()
        self._private_data_dir()
        if self.store.count_items() == 0 or (
                self.store.count_events() == 0 and self.config.seed_interactions is not None):
            self.seed()
        if self._injected is not None:
            self.install(self._injected, time.time())
            self._start_loops()
            return
        model_dir = self.config.model_dir
        recover_model_dir(model_dir)  # a save a crash interrupted
        if (model_dir / "serendip.json").exists():
            rec = Recommender.load(model_dir)
            fitted_at = (model_dir / "serendip.json").stat().st_mtime
            log.info("loaded model %s in %.1fs", model_dir, time.perf_counter() - t0)
        else:
            rec = self.fit_from_store(progress=self.config.progress)
            rec.save(model_dir)
            fitted_at = time.time()
            log.info("fitted and saved %s in %.1fs", model_dir, time.perf_counter() - t0)
        self.install(rec, fitted_at)
        if self._stale_path.exists():  # an erasure the saved model still holds
            self.retrain(kind="erase", reason=self._stale_path.read_text().strip() or None,
                         fresh=True)
        self._start_loops()
        if self.config.warm_encoder:
            try:
                self.encoder()
            except Exception as e:  # search will report it; everything else works
                self.encoder_error = f"{type(e).__name__}: {e}"
                log.warning("encoder not available: %s", e)

    def _private_data_dir(self) -> None:
        """The data directory holds the fitted model (every user's training events), the
        admin key and bandit statistics: only its owner may read it (0700)."""
        d = Path(self.config.data_dir)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if d.stat().st_mode & 0o077:
                d.chmod(0o700)
        except OSError as e:  # not ours to change: say so, keep going
            log.warning("could not make %s private (mode 0700): %s", d, e)

    def start_background(self) -> threading.Thread:
        def run() -> None:
            try:
                self.start()
            except Exception as e:  # reported by /readyz
                log.exception("engine start failed")
                self.start_error = f"{type(e).__name__}: {e}"

        t = threading.Thread(target=run, name="serendip-start", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def install(self, rec: Recommender, fitted_at: float,
                events_at_fit: int | None = None) -> None:
        """Build the serving state of ``rec`` and swap it in."""
        events = self.store.count_events() if events_at_fit is None else events_at_fit
        version = self._read_catalog_version()
        store_ids = set(self.store.items_frame()["item_id"].astype(str))
        state = ModelState(rec, fitted_at, store_ids, self.config.all_presets())
        with self.lock:
            # deletions that happened while the state was being built
            current = set(self.store.items_frame()["item_id"].astype(str))
            for iid, i in state.item_pos.items():
                state.excluded[i] = iid not in current
            old = self._state
            if old is not None:  # erasures since the old fit whose rows this fit still holds
                state.erased_users |= {u for u in old.erased_users if u in state.user_pos}
            for hook in self.on_install:
                hook(old, state)
            self._state = state
            self._events_at_fit = events
            self._catalog_version = version
            self.version += 1
        for after in self.after_install:
            after()

    # ------------------------------------------------------------------- seeding
    def seed(self) -> None:
        """Fill an empty store: the given seed files, else MovieLens-100K (ratings as events).

        All or nothing: both files are read and validated (by the same reader and checks as
        ``serendip fit``) before anything is written; if writing the events fails, the items
        written just before are removed again, so a failed seed leaves the store as it was.
        """
        t0 = time.perf_counter()
        records, events = self._seed_records()
        if self.store.count_events() > 0:
            raise DataError("the store already holds events; seeding is for an empty store")
        before = set(self.store.items_frame()["item_id"].astype(str))
        self.store.upsert_items(records)
        try:
            self.store.append_events(events)  # one transaction
        except BaseException:
            added = [r.item_id for r in records if r.item_id not in before]
            try:
                self.store.delete_items(added)
            except Exception:  # pragma: no cover - the store failed twice; say what is left
                log.exception("could not remove the %d seed items after a failed seed",
                              len(added))
            raise
        log.info("seeded the store with %d items and %d events in %.1fs",
                 len(records), len(events), time.perf_counter() - t0)

    def _seed_records(self) -> tuple[list[ItemRecord], list[EventRecord]]:
        if self.config.seed_interactions is not None:
            data = self._read_seed_files()
        else:
            from serendip.data.movielens import load_movielens_100k

            data = load_movielens_100k()
        items = data.items
        columns = [c for c in items.columns if c != "item_id"]
        cols = {c: [cell_text(v) for v in items[c].tolist()] for c in columns}
        records = [
            ItemRecord(str(iid), {c: cols[c][n] for c in columns if cols[c][n]})
            for n, iid in enumerate(data.item_ids.tolist())
        ]
        di = data.interactions
        users = data.user_ids[di["user"].to_numpy()].astype(str).tolist()
        item_ids = data.item_ids[di["item"].to_numpy()].astype(str).tolist()
        ts = di["timestamp"].astype(float).tolist()
        ratings = (di["rating"].astype(float).tolist() if "rating" in di.columns
                   else [math.nan] * len(di))
        events = [
            EventRecord(u, i, "interaction" if math.isnan(r) else "rating", float(t),
                        None if math.isnan(r) else float(r))
            for u, i, t, r in zip(users, item_ids, ts, ratings, strict=True)
        ]
        return records, events

    def _read_seed_files(self) -> Dataset:
        """The seed files through the one reader and the same checks as ``serendip fit``
        (ids verbatim, ISO-8601 or epoch timestamps, errors naming the line; events on items
        missing from the seed catalog per ``unknown_items``)."""
        c = self.config
        return Dataset.from_files(cast(str, c.seed_interactions), c.seed_items,
                                  unknown_items=c.unknown_items, sep=c.seed_sep,
                                  items_sep=c.seed_items_sep, encoding=c.seed_encoding)

    # ------------------------------------------------------------------- fitting
    def fit_config(self, n_items: int | None = None) -> FitConfig:
        """The configured fit config, else the current model's, else the default for a
        catalog of ``n_items`` (the store's size when not given)."""
        if self.config.fit_config is not None:
            return self.config.fit_config
        n = self.store.count_items() if n_items is None else n_items
        s = self._state
        if s is not None:
            cfg = s.rec.config
            dense = {v.get("type", name) for name, v in cfg.models.items()} & {"ease", "knn"}
            if n > LARGE_CATALOG and dense:  # the catalog outgrew the dense models
                log.info("catalog of %d items: refitting with the large-catalog defaults", n)
                return FitConfig.default_for(n)
            return cfg
        return FitConfig.default_for(n)

    def fit_from_store(self, progress: bool = False) -> Recommender:
        """Fit every scorer on the store's positive events and current catalog."""
        items = self.store.items_frame()
        cfg = self.fit_config(len(items))
        events = self.store.events_frame(types=POSITIVE_TYPES)
        events = events[events["item_id"].isin(items["item_id"])]
        if len(events) == 0:
            raise DataError("the store holds no positive events on catalog items; nothing to fit")
        columns = ["user_id", "item_id", "timestamp"]
        rated = (events["type"] == "rating") & events["value"].notna()
        if rated.any():  # ratings decide negative feedback (FitConfig.negative_below); any
            # other positive event counts as the top of the scale
            values = events["value"].where(rated)
            events = events.assign(rating=values.fillna(float(values.max())))
            columns.append("rating")
        data = Dataset.from_frames(events[columns], items, category_column=cfg.category_column)
        enc = self._encoder if self._encoder is not None else self.encoder(cfg)
        if progress:
            print(f"fitting a model on {data.describe()} ...", file=sys.stderr, flush=True)
        rec = Recommender.fit(data, cfg, progress=progress, encoder=cast(Encoder, enc))
        current = self._state
        if current is not None and current.rec.presets:
            # presets tuned for this catalog carry over while the refit has their models
            rec.presets = {n: p for n, p in current.rec.presets.items()
                           if set(p.blend) <= set(rec.scorers)}
            rec.tuning = current.rec.tuning
        return rec

    def encoder(self, cfg: FitConfig | None = None) -> TextEncoder:
        """The one encoder instance (loaded on first use, with the model's encoder config)."""
        with self.encoder_lock:
            if self._encoder is None:
                cfg = cfg or self.fit_config()
                enc = Encoder(EncoderConfig(**cfg.encoder))
                enc.encode(["warm-up"], progress=False)  # load the weights now, once
                self._encoder = enc
            return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    # ------------------------------------------------------------------- retrain jobs
    @property
    def retraining(self) -> bool:
        return any(job.status == "running" for job in list(self._jobs.values()))

    def retrain(self, kind: str = "retrain", reason: str | None = None,
                fresh: bool = False) -> Job:
        """Start a background retrain, or return the one already running.

        ``fresh``: the retrain must read the store as it is now (after an erasure, say): if
        one is running, it may have read the store already, so a job is queued to start when
        it ends (one queued job serves every request made meanwhile) and that job is returned.
        """
        with self.lock:
            running = next((j for j in self._jobs.values() if j.status == "running"), None)
            if running is not None and not fresh:
                return running
            if running is not None:
                if self._queued is None:
                    self._queued = self._new_job(kind, reason, status="queued")
                return self._queued
            job = self._new_job(kind, reason)
        self._launch(job)
        return job

    def _new_job(self, kind: str, reason: str | None, status: str = "running") -> Job:
        job = Job(uuid.uuid4().hex, kind=kind, reason=reason, status=status)
        self._jobs[job.job_id] = job
        while len(self._jobs) > MAX_JOBS:  # keep the newest (dicts keep insertion order)
            self._jobs.pop(next(iter(self._jobs)))
        return job

    def _launch(self, job: Job) -> None:
        threading.Thread(target=self._retrain, args=(job,), name=f"retrain-{job.job_id[:8]}",
                         daemon=True).start()

    def _retrain(self, job: Job) -> None:
        t0 = time.perf_counter()
        job.started_at = time.time()
        try:
            events = self.store.count_events()
            rec = self.fit_from_store()
            rec.save(self.config.model_dir)  # written beside the old one, then swapped in
            self.install(rec, time.time(), events)
            job.n_users, job.n_items = rec.data.n_users, rec.data.n_items
            job.n_interactions = len(rec.data.interactions)
            job.status = "succeeded"
            self._clear_stale(job.started_at)
        except Exception as e:
            log.exception("retrain %s failed", job.job_id)
            job.error = f"{type(e).__name__}: {e}"
            job.status = "failed"
        job.finished_at = time.time()
        job.seconds = round(time.perf_counter() - t0, 3)
        with self.lock:
            queued, self._queued = self._queued, None
            if queued is not None:
                queued.status = "running"
        if queued is not None:
            self._launch(queued)

    # ------------------------------------------------------------------- stale models
    @property
    def _stale_path(self) -> Path:
        return Path(self.config.data_dir) / "retrain-needed"

    def mark_stale(self, reason: str) -> None:
        """Record on disk that the saved model holds data the store no longer has (an
        erasure), so a restart before the retrain still retrains; no id is written."""
        path = self._stale_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(reason + "\n")
        tmp.replace(path)

    def _clear_stale(self, started_at: float) -> None:
        """Drop the mark once a retrain that began after it has been installed."""
        try:
            if self._stale_path.stat().st_mtime <= started_at:
                self._stale_path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownIdError(f"unknown job id {job_id!r}")
        return job

    # ------------------------------------------------------------------- catalog sync
    def _read_catalog_version(self) -> int | None:
        read = getattr(self.store, "catalog_version", None)
        return None if read is None else int(read())

    def sync_catalog(self, force: bool = False) -> bool:
        """Re-read which items exist when the store's catalog version moved (a change made
        through any instance); returns whether the served state changed."""
        s = self._state
        if s is None:
            return False
        version = self._read_catalog_version()
        if not force and version is not None and version == self._catalog_version:
            return False
        current = set(self.store.items_frame()["item_id"].astype(str))
        excluded = np.fromiter((iid not in current for iid in s.item_ids), dtype=bool,
                               count=s.n_items)
        with self.lock:
            if self._state is not s:  # a new state was installed meanwhile: it read the store
                return False
            changed = bool((s.excluded != excluded).any())
            s.excluded[:] = excluded
            self._catalog_version = version
        return changed

    # ------------------------------------------------------------------- refresh and upkeep
    def refresh_reason(self) -> str | None:
        """Why the model should be refitted now, or None: items in the store that the model
        has never seen (they reach lists only through a fit), or many new events."""
        s = self._state
        if s is None:
            return None
        ids = self.store.items_frame()["item_id"].astype(str)
        new = int((~ids.isin(s.item_pos.keys())).sum())
        if new:
            return f"{new} new item(s) in the catalog"
        grown = self.store.count_events() - self._events_at_fit
        if grown >= max(1, self.config.refresh_events * self._events_at_fit):
            return f"{grown} new event(s) since the fit"
        return None

    def purge_expired(self, now: float | None = None) -> dict[str, int]:
        """Delete impressions (and the search text logged with them) past the retention age."""
        age = self.config.retention
        purge = getattr(self.store, "purge_before", None)
        if age is None or purge is None:
            return {}
        now = time.time() if now is None else now
        self._last_purge = now
        removed = dict(purge(now - age))
        if any(removed.values()):
            log.info("retention: removed %s older than %.0f s", removed, age)
        return removed

    def _start_loops(self) -> None:
        if self._stop.is_set():  # started again after stop(): a fresh stop signal
            self._stop = threading.Event()
        stop = self._stop
        poll = self.config.catalog_poll
        if poll is not None:
            self._loop("serendip-catalog-sync", poll, stop, self.sync_catalog)
        interval = self.config.refresh_interval
        if interval is not None:
            self._loop("serendip-refresh", interval, stop, self._refresh_once)
        if self.config.retention is not None:
            self.purge_expired()
            self._loop("serendip-retention", self.config.retention_check, stop,
                       self.purge_expired)

    def _loop(self, name: str, interval: float, stop: threading.Event, work: Any) -> None:
        t = self._threads.get(name)
        if t is not None and t.is_alive():
            return

        def loop() -> None:
            failures = 0
            while not stop.wait(interval * (1 + min(failures, 10))):  # back off on failure
                try:
                    work()
                    failures = 0
                except Exception:  # a failed pass must not end the loop
                    failures += 1
                    log.exception("%s failed", name)

        t = threading.Thread(target=loop, name=name, daemon=True)
        self._threads[name] = t
        t.start()

    def _refresh_once(self) -> None:
        reason = self.refresh_reason()
        if reason is not None and not self.retraining:
            log.info("automatic retrain: %s", reason)
            job = self.retrain(kind="refresh", reason=reason)
            while job.status == "running" and not self._stop.wait(0.05):
                pass
            if job.status == "failed":
                raise RuntimeError(f"automatic retrain failed: {job.error}")

    def bandit_dir(self) -> Path:
        return Path(self.config.data_dir) / "bandits"
