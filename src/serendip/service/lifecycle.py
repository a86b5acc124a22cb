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

With a model directory shared by several instances (``EngineConfig.shared_model_dir``,
docs/deployment.md) a retrain saves the new model into a subdirectory of its own and then
publishes it as a model version in the store; a third loop, **model sync**, polls the store's
newest version every ``model_poll`` seconds and loads a newer one in the background, swapping
it in whole (the old state serves until then).  One retrain runs at a time across every
instance (a lock in the store); superseded versions are deleted after ``model_grace`` seconds.

Nothing here serves a request: serving reads ``lifecycle.state`` once per request.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError, UnknownIdError
from serendip.pipeline import LARGE_CATALOG, FitConfig, Recommender, recover_model_dir
from serendip.service.config import EngineConfig
from serendip.service.state import POSITIVE_TYPES, ModelState, NotReadyError, TextEncoder
from serendip.store.base import EventRecord, ItemRecord, ModelVersion, Store
from serendip.text import Encoder, EncoderConfig
from serendip.text.templates import cell_text

__all__ = ["Lifecycle", "Job", "MAX_JOBS", "POINTER", "KEEP_VERSIONS"]

log = logging.getLogger(__name__)

#: Finished and running jobs kept for GET /v1/admin/jobs/{id} (the oldest go first).
MAX_JOBS = 100
#: The file in a shared model directory naming the newest published version's subdirectory
#: (replaced atomically; the store's model version is what instances follow).
POINTER = "CURRENT"
#: Published versions always kept in a shared model directory, however old.
KEEP_VERSIONS = 2


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
        #: the store's model version now served (shared model directory), 0 before any
        self.model_version = 0
        #: names this process as a lock holder and publisher ("host:pid:random")
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._load_lock = threading.Lock()  # one model load at a time
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

    @property
    def shared(self) -> bool:
        """Whether models live in a directory shared with other instances (versioned)."""
        return self.config.shared_model_dir is not None

    def model_age(self) -> float | None:
        s = self._state
        return None if s is None else max(0.0, time.time() - s.fitted_at)

    # ------------------------------------------------------------------- start and stop
    def start(self) -> None:
        """Seed an empty store, then load the saved model or fit one from the store."""
        t0 = time.perf_counter()
        self._private_data_dir()
        if self.needs_seed():
            self.seed()
        if self._injected is not None:
            self.install(self._injected, time.time())
            self._start_loops()
            return
        if self.shared:
            if not self._start_shared():
                return  # stopped while waiting for a first published model
        else:
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
                events_at_fit: int | None = None, model_version: int | None = None) -> None:
        """Build the serving state of ``rec`` and swap it in.

        ``model_version``: the store's version of ``rec`` (shared model directory); a version
        older than the one served is not installed (a newer one overtook it)."""
        events = self.store.count_events() if events_at_fit is None else events_at_fit
        version = self._read_catalog_version()
        store_ids = set(self.store.items_frame()["item_id"].astype(str))
        state = ModelState(rec, fitted_at, store_ids, self.config.all_presets())
        with self.lock:
            if model_version is not None and model_version < self.model_version:
                return
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
            if model_version is not None:
                self.model_version = model_version
        for after in self.after_install:
            after()

    # ------------------------------------------------------------------- seeding
    def needs_seed(self) -> bool:
        """An empty catalog, or seed files given and no events yet."""
        return self.store.count_items() == 0 or (
            self.store.count_events() == 0 and self.config.seed_interactions is not None)

    def seed(self) -> None:
        """Fill an empty store: the given seed files, else MovieLens-100K (ratings as events).

        All or nothing: both files are read and validated (by the same reader and checks as
        ``serendip fit``) before anything is written; if writing the events fails, the items
        written just before are removed again, so a failed seed leaves the store as it was.
        Instances sharing a model directory seed under the store's lock, so replicas started
        together seed once: whoever comes second finds the store filled and writes nothing.
        """
        if not self.shared:
            self._seed()
            return
        with self._cluster_lock("seed"):
            if self.needs_seed():
                self._seed()
            else:
                log.info("the store was seeded by another instance")

    def _seed(self) -> None:
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
        served = self.model_version
        try:
            if self.shared:
                rec = self._retrain_shared(job, served)
            else:
                events = self.store.count_events()
                rec = self.fit_from_store()
                rec.save(self.config.model_dir)  # written beside the old one, then swapped in
                self.install(rec, time.time(), events)
            job.n_users, job.n_items = rec.data.n_users, rec.data.n_items
            job.n_interactions = len(rec.data.interactions)
            self._clear_stale(job.started_at)  # before "succeeded": a caller waits on that
            job.status = "succeeded"
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

    def _retrain_shared(self, job: Job, served: int) -> Recommender:
        """Fit, save into a new subdirectory, publish, install; one at a time across every
        instance.  An automatic refresh that waited while another instance published a newer
        version follows that version instead of fitting again."""
        with self._cluster_lock():
            if job.kind == "refresh":
                row = self._latest()
                if row is not None and row.version > served:
                    self._load_version(row)
                    return self.state.rec
            events = self.store.count_events()
            rec = self.fit_from_store()
            row = self._publish(rec, events)
            self.install(rec, row.fitted_at, events, model_version=row.version)
            self._prune()
        return rec

    # ------------------------------------------------------------------- shared model versions
    @property
    def _shared_dir(self) -> Path:
        return Path(cast(Path, self.config.shared_model_dir))

    def _latest(self) -> ModelVersion | None:
        latest = getattr(self.store, "latest_model", None)
        return None if latest is None else cast(ModelVersion | None, latest())

    def _start_shared(self) -> bool:
        """Load the newest published model; with none yet, a primary fits and publishes one
        (under the lock, so instances started together fit once) and a follower waits for
        one.  False when stopped while waiting."""
        self._shared_dir.mkdir(parents=True, exist_ok=True)
        row = self._latest()
        if row is None and self.config.role == "primary":
            with self._cluster_lock():
                row = self._latest()
                if row is None:
                    t0 = time.perf_counter()
                    events = self.store.count_events()
                    rec = self.fit_from_store(progress=self.config.progress)
                    row = self._publish(rec, events)
                    self.install(rec, row.fitted_at, events, model_version=row.version)
                    log.info("fitted and published model version %d (%s) in %.1fs",
                             row.version, row.name, time.perf_counter() - t0)
        while row is None:
            if self._stop.wait(self.config.model_poll or 1.0):
                return False
            row = self._latest()
        self._load_version(row)
        return True

    def _version_dir(self, row: ModelVersion) -> Path:
        return self._shared_dir / row.name

    def _load_version(self, row: ModelVersion) -> bool:
        """Load published ``row`` and swap it in whole (the served state stays until then);
        False when it is not newer than the one served."""
        with self._load_lock:
            if row.version <= self.model_version:
                return False
            d = self._version_dir(row)
            if not (d / "serendip.json").exists():
                raise ConfigError(
                    f"model version {row.version} ({row.name}, published by {row.created_by}) "
                    f"is not in {self._shared_dir}: every instance must share this directory")
            t0 = time.perf_counter()
            rec = Recommender.load(d)
            self.install(rec, row.fitted_at, row.events, model_version=row.version)
            log.info("loaded model version %d (%s) in %.1fs", row.version, row.name,
                     time.perf_counter() - t0)
            return True

    def sync_model(self) -> bool:
        """Load the store's newest model version when it is newer than the one served (a
        retrain published by any instance); returns whether a new model was swapped in."""
        if not self.shared or self._state is None:
            return False  # the first model is start()'s
        row = self._latest()
        if row is None or row.version <= self.model_version:
            return False
        return self._load_version(row)

    def _publish(self, rec: Recommender, events: int) -> ModelVersion:
        """Save ``rec`` into a new subdirectory, then publish it (only a completely saved,
        flushed directory is ever published) and point ``CURRENT`` at it."""
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        rec.save(self._shared_dir / name)  # crash-safe: flushed before this returns
        row = self.store.publish_model(name, time.time(), self.holder, events)
        self._write_pointer(name)
        return row

    def _write_pointer(self, name: str) -> None:
        base = self._shared_dir
        tmp = base / f".{POINTER}.{uuid.uuid4().hex}"
        with tmp.open("w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(base / POINTER)
        try:
            fd = os.open(base, os.O_RDONLY)
        except OSError:  # pragma: no cover - not every platform opens directories
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover - some file systems cannot fsync a directory
            pass
        finally:
            os.close(fd)

    def _prune(self, now: float | None = None) -> list[str]:
        """Delete what the shared model directory no longer needs: versions superseded more
        than ``model_grace`` seconds ago (the newest ``KEEP_VERSIONS`` stay), and leftovers of
        interrupted saves older than that.  Runs under the retrain lock, so no save is in
        progress anywhere; returns the names removed."""
        now = time.time() if now is None else now
        grace = self.config.model_grace
        rows = list(self.store.list_models())
        keep = {r.name for r in rows[:KEEP_VERSIONS]}
        superseded = {old.name: new.created_at for new, old in zip(rows, rows[1:], strict=False)}
        removed: list[str] = []
        for entry in sorted(self._shared_dir.iterdir()):
            if entry.name in keep or entry.name == POINTER:
                continue
            try:
                since = superseded.get(entry.name, entry.lstat().st_mtime)
                if now - since <= grace:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
            except OSError as e:  # another instance removed it first, or it is not ours
                log.warning("could not remove %s from the model directory: %s", entry, e)
        if removed:
            log.info("removed %d old model version(s): %s", len(removed), ", ".join(removed))
        return removed

    @contextmanager
    def _cluster_lock(self, name: str = "retrain") -> Iterator[None]:
        """Hold the store's lock ``name`` (waiting for it), renewed in the background every
        third of ``lock_ttl`` until released.  Each hold has its own holder id, so two holds
        in this process exclude each other too."""
        store = self.store
        acquire = getattr(store, "acquire_lock", None)
        if acquire is None:  # a store without locks: one instance
            yield
            return
        ttl = self.config.lock_ttl
        holder = f"{self.holder}:{uuid.uuid4().hex[:8]}"
        waited = False
        while not acquire(name, holder, ttl):
            if not waited:
                log.info("waiting for another instance's %s lock", name)
                waited = True
            if self._stop.wait(min(0.5, ttl / 4)):  # PostgreSQL: one connection per try
                raise RuntimeError(f"stopped while waiting for the {name} lock")
        done = threading.Event()

        def renew() -> None:
            while not done.wait(ttl / 3):
                try:
                    if not store.renew_lock(name, holder, ttl):
                        log.warning("the %s lock was lost (not renewed in time)", name)
                        return
                except Exception:  # the store is away: try again at the next beat
                    log.exception("renewing the %s lock failed", name)

        beat = threading.Thread(target=renew, name=f"serendip-lock-{name}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            done.set()
            try:
                store.release_lock(name, holder)
            except Exception:  # it lapses (SQLite) or ends with the session (PostgreSQL)
                log.exception("releasing the %s lock failed", name)

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
        if self.shared and self.config.model_poll is not None:
            self._loop("serendip-model-sync", self.config.model_poll, stop, self.sync_model)
        interval = self.config.refresh_interval
        if interval is not None and self.config.role == "primary":
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
