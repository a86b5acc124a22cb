"""The serving engine: the store, the current fitted model, and everything a request needs.

One :class:`Engine` owns the store and a :class:`ModelState` (a fitted Recommender, its
Pipelines for every preset, and arrays derived once per model: titles, unit vectors,
popularity, novelty, the head).  A request reads ``engine.state`` once and works on that
object only, so a retrain that swaps in a new state never changes a request half-way.

Online update without retraining: a request takes the user's history from the store
(``user_events``, one indexed query) and maps it to the model's item indices, so feedback
posted a moment ago changes the next list.  ``skip`` and ``dislike`` are negative feedback:
they never count as history and their items are left out of the user's lists; so is a
``rating`` below the model's ``negative_below`` (1-2 stars of 5 by default).

Badges on a recommended item (thresholds are relative, so they mean the same on any catalog):

- ``tail``: outside the head, the 20% most popular items of the training data
  (Abdollahpouri et al.'s short head, as in the APLT metric).
- ``novel``: self-information ``-log2(users(i) / n_users)`` above the mean self-information
  of the user's history (of the training interactions for a user without history): the item
  is less known than what this user usually picks.
- ``serendipitous``: unexpectedness ``1 - mean cosine(item, history)`` (encoder space) at or
  above the 75th percentile of the whole catalog's unexpectedness for this user, *and*
  relevance (the blend's score before re-ranking) at or above the list's median: unlike the
  user's history, yet judged a good match.  Needs a history.  On catalogs over
  ``REFERENCE_ITEMS`` items the percentile is taken over a fixed random sample of that many
  items (its rank error is about half a percentile), so a request never scans the catalog.

Large catalogs are served by candidate retrieval (``serendip.models.retrieval``): the blend
scores only the items its sources return, and search blends the text match with the user's
taste on those candidates, standardising the taste with statistics from the same sample.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError, SerendipError, UnknownIdError
from serendip.eval.metrics import head_by_item_share
from serendip.explore.replay import REWARD_TYPES
from serendip.models._util import standardize
from serendip.models.base import TEXT_SPACE
from serendip.models.ease import EASE
from serendip.pipeline import (
    LARGE_CATALOG,
    PRESETS,
    FitConfig,
    Pipeline,
    Preset,
    Recommender,
    load_preset,
)
from serendip.rerank.base import maybe_unit_vectors
from serendip.service.impressions import ImpressionWriter, new_impression_id
from serendip.store.base import EVENT_TYPES, EventAck, EventRecord, Impression, ItemRecord, Store
from serendip.store.group import GroupCommitter
from serendip.text import Encoder, EncoderConfig, request_text
from serendip.text.templates import cell_text
from serendip.types import ItemList, Query

__all__ = [
    "Engine", "EngineConfig", "ModelState", "NotReadyError", "TextEncoder",
    "NEGATIVE_TYPES", "POSITIVE_TYPES", "HEAD_SHARE", "SERENDIPITY_QUANTILE",
]

log = logging.getLogger(__name__)

#: Event types that say "not this": never history, and their items are not recommended.
NEGATIVE_TYPES = ("skip", "dislike")
POSITIVE_TYPES = tuple(t for t in EVENT_TYPES if t not in NEGATIVE_TYPES)
#: Share of the most popular items that forms the head (the "tail" badge is its complement).
HEAD_SHARE = 0.2
#: Unexpectedness quantile (over the catalog, for this user) that earns "serendipitous".
SERENDIPITY_QUANTILE = 0.75
#: Text matches used as session context by search.
SESSION_ITEMS = 3
#: Finished and running jobs kept for GET /v1/admin/jobs/{id} (the oldest go first).
MAX_JOBS = 100
#: Catalogs larger than this take per-user reference statistics from a sample of this size.
REFERENCE_ITEMS = 8192


class NotReadyError(SerendipError, RuntimeError):
    """No model is loaded yet (still seeding or fitting, or the start failed)."""


class TextEncoder(Protocol):
    """What the engine needs from an encoder (``serendip.text.Encoder`` or a test double)."""

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray: ...

    def encode_items(self, data: Dataset, template: str | None = None,
                     progress: bool = True) -> np.ndarray: ...


@dataclass
class EngineConfig:
    """Where the engine keeps its model and how it seeds and fits."""

    data_dir: Path
    fit_config: FitConfig | None = None  # None: the loaded model's config, else the default
    seed_interactions: str | None = None  # seed an empty store from these files ...
    seed_items: str | None = None  # ... instead of MovieLens-100K
    history_limit: int = 500  # most recent events read per request
    similar_semantic_weight: float = 0.5  # semantic share of the similar-items blend
    search_user_weight: float = 0.5  # weight of the hybrid (taste) z-scores in search
    warm_encoder: bool = False  # load the encoder in the background once a model is ready
    #: presets beside (or replacing, by name) the shipped ones, e.g. from ``serve --preset``
    presets: tuple[Preset, ...] = ()
    default_preset: str = "balanced"  # used by search and when a request names none
    #: seconds between checks for catalog or event growth that calls for a retrain (None: off)
    refresh_interval: float | None = None
    #: retrain when the store holds items the model lacks, or this many more events (as a
    #: share of the events at the last fit)
    refresh_events: float = 0.1
    bandit_window: float = 86_400.0  # seconds in which a reward event credits a bandit's slot
    bandit_memory: int = 200_000  # shown (user, item) slots remembered for crediting

    def all_presets(self) -> dict[str, Preset]:
        out = {name: load_preset(name) for name in PRESETS}
        out.update({p.name: p for p in self.presets})
        return out

    @property
    def model_dir(self) -> Path:
        return Path(self.data_dir) / "model"


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

    @staticmethod
    def _titles(data: Dataset) -> list[str]:
        ids = [str(x) for x in data.item_ids]
        for c in ("title", "name", "movie_title", "headline"):
            if c in data.items.columns:
                vals = [cell_text(x) for x in data.items[c].tolist()]
                return [v if v else i for v, i in zip(vals, ids, strict=True)]
        return ids

    @staticmethod
    def _collaborative(rec: Recommender) -> np.ndarray | None:
        """EASE's item-item weights if the model has an EASE scorer (any recency variant)."""
        for scorer in rec.scorers.values():
            if isinstance(scorer, EASE) and scorer.is_trained:
                return scorer._require_trained()["weights"]
        return None

    # ------------------------------------------------------------------- lookups
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


class Engine:
    """Owns the store and the current model; every HTTP route calls one method here."""

    def __init__(
        self,
        store: Store,
        config: EngineConfig,
        *,
        recommender: Recommender | None = None,
        encoder: TextEncoder | None = None,
        impression_writer: ImpressionWriter | None = None,
    ) -> None:
        self.store = store
        # Impressions are written in batches by a background thread, off the request path
        # (None: a writer over this store with the default batch size and interval).
        self.impression_writer = (
            impression_writer if impression_writer is not None else ImpressionWriter(store)
        )
        self.config = config
        # concurrent event posts share one durable commit (group commit)
        self.event_writer = GroupCommitter(store)
        self._injected = recommender
        self._encoder: TextEncoder | None = encoder
        self._encoder_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._lock = threading.Lock()
        self._state: ModelState | None = None
        self._jobs: dict[str, Job] = {}
        self.start_error: str | None = None
        self.version = 0
        self._events_at_fit = 0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        # bandit presets: what each user was shown (features per slot), so that a later
        # click, like or purchase can credit the bandit; oldest entries are dropped first
        self._shown: OrderedDict[tuple[str, str], tuple[str, np.ndarray, float]] = OrderedDict()
        self._shown_lock = threading.Lock()
        self._bandit_save_lock = threading.Lock()
        self.on_impression: Any = None  # a callable, set by the app for metrics

    # ------------------------------------------------------------------- lifecycle
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
    def ready(self) -> bool:
        return self._state is not None

    def model_age(self) -> float | None:
        s = self._state
        return None if s is None else max(0.0, time.time() - s.fitted_at)

    def start(self) -> None:
        """Seed an empty store, then load the saved model or fit one from the store."""
        t0 = time.perf_counter()
        if self.store.count_items() == 0:
            self.seed()
        if self._injected is not None:
            self._install(self._injected, time.time())
            self._start_refresher()
            return
        model_dir = self.config.model_dir
        if (model_dir / "serendip.json").exists():
            rec = Recommender.load(model_dir)
            fitted_at = (model_dir / "serendip.json").stat().st_mtime
            log.info("loaded model %s (%r) in %.1fs", model_dir, rec.data, time.perf_counter() - t0)
        else:
            rec = self.fit_from_store()
            rec.save(model_dir)
            fitted_at = time.time()
            log.info("fitted and saved %s in %.1fs", model_dir, time.perf_counter() - t0)
        self._install(rec, fitted_at)
        self._start_refresher()
        if self.config.warm_encoder:
            try:
                self.encoder()
            except SerendipError as e:  # search will report it; everything else works
                log.warning("encoder not available: %s", e)

    def close(self, timeout: float | None = 10.0) -> None:
        """Write the impressions still queued and stop their writer thread (shutdown).

        The store stays open (whoever opened it closes it).  Serving after ``close`` still
        works: the next impression starts a new writer thread.
        """
        self._stop.set()
        self.save_bandits()
        self.impression_writer.close(timeout)

    # ------------------------------------------------------------------- automatic refresh
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

    def _start_refresher(self) -> None:
        interval = self.config.refresh_interval
        if interval is None or (self._refresher is not None and self._refresher.is_alive()):
            return
        if self._stop.is_set():  # started again after close(): a fresh stop signal
            self._stop = threading.Event()
        stop = self._stop

        def loop() -> None:
            failures = 0
            while not stop.wait(interval * (1 + min(failures, 10))):  # back off on failure
                try:
                    reason = self.refresh_reason()
                    if reason is not None and not self.retraining:
                        log.info("automatic retrain: %s", reason)
                        job = self.retrain(kind="refresh", reason=reason)
                        while job.status == "running" and not stop.wait(0.05):
                            pass
                        failures = failures + 1 if job.status == "failed" else 0
                except Exception:  # a failed check must not end the loop
                    failures += 1
                    log.exception("automatic refresh check failed")

        self._refresher = threading.Thread(target=loop, name="serendip-refresh", daemon=True)
        self._refresher.start()

    @property
    def retraining(self) -> bool:
        return any(job.status == "running" for job in list(self._jobs.values()))

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

    def _install(self, rec: Recommender, fitted_at: float,
                 events_at_fit: int | None = None) -> None:
        events = self.store.count_events() if events_at_fit is None else events_at_fit
        store_ids = set(self.store.items_frame()["item_id"].astype(str))
        state = ModelState(rec, fitted_at, store_ids, self.config.all_presets())
        with self._lock:
            # deletions that happened while the state was being built
            current = set(self.store.items_frame()["item_id"].astype(str))
            for iid, i in state.item_pos.items():
                state.excluded[i] = iid not in current
            self._carry_bandits(self._state, state)
            self._state = state
            self._events_at_fit = events
            self.version += 1
        self.save_bandits()

    def seed(self) -> None:
        """Fill an empty store: the given seed files, else MovieLens-100K (ratings as events)."""
        t0 = time.perf_counter()
        if self.config.seed_interactions is not None:
            from serendip.data.io import read_table

            inter = read_table(self.config.seed_interactions, id_columns=("user_id", "item_id"))
            if self.config.seed_items is not None:
                items = read_table(self.config.seed_items, id_columns=("item_id",))
            else:
                items = pd.DataFrame({"item_id": pd.unique(inter["item_id"].astype(str))})
        else:
            from serendip.data.movielens import load_movielens_100k

            data = load_movielens_100k()
            items = data.items
            di = data.interactions
            inter = pd.DataFrame({
                "user_id": data.user_ids[di["user"].to_numpy()],
                "item_id": data.item_ids[di["item"].to_numpy()],
                "timestamp": di["timestamp"].to_numpy(),
                "rating": di["rating"].to_numpy(),
            })
        columns = [c for c in items.columns if c != "item_id"]
        cols = {c: [cell_text(v) for v in items[c].tolist()] for c in columns}
        records = [
            ItemRecord(str(iid), {c: cols[c][n] for c in columns if cols[c][n]})
            for n, iid in enumerate(items["item_id"].tolist())
        ]
        self.store.upsert_items(records)
        has_rating = "rating" in inter.columns
        has_ts = "timestamp" in inter.columns
        users = inter["user_id"].astype(str).tolist()
        item_ids = inter["item_id"].astype(str).tolist()
        ts = (pd.to_numeric(inter["timestamp"], errors="coerce").tolist() if has_ts
              else [float(i) for i in range(len(inter))])
        ratings = inter["rating"].astype(float).tolist() if has_rating else [None] * len(inter)
        events = [
            EventRecord(u, i, "rating" if r is not None and not math.isnan(r) else "interaction",
                        None if t is None or math.isnan(t) else float(t),
                        None if r is None or math.isnan(r) else float(r))
            for u, i, t, r in zip(users, item_ids, ts, ratings, strict=True)
        ]
        self.store.append_events(events)  # one transaction
        log.info("seeded the store with %d items and %d events in %.1fs",
                 len(records), len(events), time.perf_counter() - t0)

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

    def fit_from_store(self) -> Recommender:
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
        rec = Recommender.fit(data, cfg, progress=False, encoder=cast(Encoder, enc))
        current = self._state
        if current is not None and current.rec.presets:
            # presets tuned for this catalog carry over while the refit has their models
            rec.presets = {n: p for n, p in current.rec.presets.items()
                           if set(p.blend) <= set(rec.scorers)}
            rec.tuning = current.rec.tuning
        return rec

    def encoder(self, cfg: FitConfig | None = None) -> TextEncoder:
        """The one encoder instance (loaded on first use, with the model's encoder config)."""
        with self._encoder_lock:
            if self._encoder is None:
                cfg = cfg or self.fit_config()
                enc = Encoder(EncoderConfig(**cfg.encoder))
                enc.encode(["warm-up"], progress=False)  # load the weights now, once
                self._encoder = enc
            return self._encoder

    # ------------------------------------------------------------------- retrain jobs
    def retrain(self, kind: str = "retrain", reason: str | None = None) -> Job:
        """Start a background retrain (or return the one already running)."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "running":
                    return job
            job = Job(uuid.uuid4().hex, kind=kind, reason=reason)
            self._jobs[job.job_id] = job
            while len(self._jobs) > MAX_JOBS:  # keep the newest (dicts keep insertion order)
                self._jobs.pop(next(iter(self._jobs)))
        threading.Thread(target=self._retrain, args=(job,), name=f"retrain-{job.job_id[:8]}",
                         daemon=True).start()
        return job

    def _retrain(self, job: Job) -> None:
        t0 = time.perf_counter()
        try:
            events = self.store.count_events()
            rec = self.fit_from_store()
            rec.save(self.config.model_dir)  # written beside the old one, then swapped in
            self._install(rec, time.time(), events)
            job.n_users, job.n_items = rec.data.n_users, rec.data.n_items
            job.n_interactions = len(rec.data.interactions)
            job.status = "succeeded"
        except Exception as e:
            log.exception("retrain %s failed", job.job_id)
            job.error = f"{type(e).__name__}: {e}"
            job.status = "failed"
        job.finished_at = time.time()
        job.seconds = round(time.perf_counter() - t0, 3)

    def job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownIdError(f"unknown job id {job_id!r}")
        return job

    # ------------------------------------------------------------------- catalog
    def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        with self._lock:
            n = self.store.upsert_items(records)
            s = self._state
            if s is not None:
                for r in records:
                    i = s.item_pos.get(r.item_id)
                    if i is not None:
                        s.excluded[i] = False
        return n

    def delete_item(self, item_id: str) -> int:
        with self._lock:
            n = self.store.delete_items([item_id])
            if n == 0:
                raise UnknownIdError(f"unknown item id {item_id!r}")
            s = self._state
            if s is not None and item_id in s.item_pos:
                s.excluded[s.item_pos[item_id]] = True
        return n

    def check_items_exist(self, item_ids: Sequence[str]) -> None:
        s = self._state
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
        s = s or self._state
        if s is not None:
            i = s.item_pos.get(item_id)
            if i is not None:
                return s.titles[i]
        rec = self.store.get_item(item_id)
        if rec is not None:
            return rec.fields.get("title") or rec.fields.get("name") or item_id
        return item_id

    # ------------------------------------------------------------------- users & events
    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        self.check_items_exist([e.item_id for e in events])
        acks = self.event_writer.append_events(events)
        self._credit_bandits(events, acks)
        return acks

    # ------------------------------------------------------------------- bandit feedback
    def _remember_shown(self, pipe: Pipeline, preset: str, user_id: str | None,
                        lst: ItemList, s: ModelState) -> None:
        """Count a bandit's list as shown (reward 0 for now) and remember its slots."""
        bandit = pipe.bandit
        x = lst.fields.get("features")
        if bandit is None or x is None or len(lst) == 0:
            return
        bandit.update(x, np.zeros(len(lst)))
        if user_id is None:
            return
        now = time.time()
        with self._shown_lock:
            for i, row in zip(lst.items.tolist(), np.asarray(x), strict=True):
                key = (user_id, s.item_ids[i])
                self._shown.pop(key, None)
                self._shown[key] = (preset, row, now)
            while len(self._shown) > self.config.bandit_memory:
                self._shown.popitem(last=False)

    def _credit_bandits(self, events: Sequence[EventRecord], acks: Sequence[EventAck]) -> None:
        """A rewarding event on an item a bandit showed this user (within the window) turns
        that slot's reward from 0 into 1; each shown slot is credited once."""
        s = self._state
        if s is None or not self._shown:
            return
        now = time.time()
        for ev, ack in zip(events, acks, strict=True):
            if ack.duplicate or ev.type not in REWARD_TYPES:
                continue
            with self._shown_lock:
                hit = self._shown.pop((ev.user_id, ev.item_id), None)
            if hit is None:
                continue
            preset, row, shown_at = hit
            pipe = s.pipelines.get(preset)
            if pipe is not None and pipe.bandit is not None and now - shown_at <= self.config.bandit_window:
                pipe.bandit.credit(row)

    def _bandit_path(self, preset: str) -> Path:
        return Path(self.config.data_dir) / "bandits" / f"{preset}.npz"

    def save_bandits(self) -> None:
        """Write every bandit preset's learned statistics to the data directory (each file
        written under a unique name, then renamed over the old one); a failure is logged, never
        raised: the statistics are a cache of what the stored events taught."""
        s = self._state
        if s is None:
            return
        with self._bandit_save_lock:
            for name, pipe in s.pipelines.items():
                if pipe.bandit is None:
                    continue
                a, b = pipe.bandit.statistics()
                path = self._bandit_path(name)
                tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp.npz")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(tmp, A=a, b=b)
                    tmp.replace(path)
                except OSError as e:
                    log.warning("could not save bandit state %s: %s", path, e)
                    tmp.unlink(missing_ok=True)

    def _carry_bandits(self, old: ModelState | None, new: ModelState) -> None:
        """Bandit statistics outlive a model: take them from the old state, else from disk."""
        for name, pipe in new.pipelines.items():
            if pipe.bandit is None:
                continue
            prev = old.pipelines.get(name) if old is not None else None
            if prev is not None and prev.bandit is not None:
                pipe.bandit.set_statistics(*prev.bandit.statistics())
                continue
            path = self._bandit_path(name)
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        pipe.bandit.set_statistics(z["A"], z["b"])
                except (OSError, KeyError, ValueError, SerendipError) as e:
                    log.warning("ignoring unreadable bandit state %s: %s", path, e)

    def top_users(self, limit: int) -> list[str]:
        """User ids with the most events first (ties by id): one grouped query."""
        return self.store.top_users(limit)

    def user_known(self, user_id: str, s: ModelState | None = None) -> bool:
        if s is not None and user_id in s.user_pos:
            return True
        if self.store.get_user(user_id) is not None:
            return True
        return len(self.store.user_events(user_id, limit=1)) > 0

    def history_rows(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """The user's events, most recent first, with titles."""
        ev = self.store.user_events(user_id, limit=limit)
        if len(ev) == 0 and not self.user_known(user_id):
            raise UnknownIdError(f"unknown user id {user_id!r}")
        s = self._state
        rows = []
        for iid, ty, ts, val in zip(ev["item_id"].tolist(), ev["type"].tolist(),
                                    ev["timestamp"].tolist(), ev["value"].tolist(), strict=True):
            rows.append({
                "item_id": str(iid), "title": self.title(str(iid), s), "type": str(ty),
                "timestamp": float(ts),
                "value": None if val is None or math.isnan(val) else float(val),
            })
        rows.reverse()
        return rows

    def history(self, s: ModelState, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(positive history oldest first, negative items) as model item indices.

        The latest event on an item decides: a like after a skip is history again.
        Items unknown to the model (added since the fit) are dropped.
        """
        last: dict[int, bool] = {}
        limit = self.config.history_limit
        low = s.rec.negative_below  # a rating below it is negative feedback, as in training
        for iid, ty, value in (self.store.recent_item_events(user_id, limit) if limit > 0 else ()):
            i = s.item_pos.get(iid)
            if i is None:
                continue
            last.pop(i, None)  # re-insert: dict order = order of each item's last event
            last[i] = ty not in NEGATIVE_TYPES and not (
                ty == "rating" and low is not None and value is not None and value < low)
        pos = np.fromiter((i for i, ok in last.items() if ok), dtype=np.int64)
        neg = np.fromiter((i for i, ok in last.items() if not ok), dtype=np.int64)
        return pos, neg

    # ------------------------------------------------------------------- recommendations
    def _allowed(self, s: ModelState, filters: Sequence[str], negative: np.ndarray
                 ) -> np.ndarray | None:
        mask = s.filter_mask(filters)
        if not s.excluded.any() and negative.size == 0 and mask is None:
            return None
        allowed = ~s.excluded if mask is None else mask & ~s.excluded
        if negative.size:
            allowed = allowed.copy()
            allowed[negative] = False
        return np.flatnonzero(allowed)

    def recommend(self, user_id: str, k: int = 10, preset: str | None = None,
                  discovery: float | None = None, filters: Sequence[str] = (),
                  explore: float | None = None) -> dict[str, Any]:
        s = self.state
        hist, neg = self.history(s, user_id)
        q = Query(s.user_pos.get(user_id), hist)
        # a filtered list answers more than the user's state: its filter is logged as context
        # (and off-policy replay, which cannot re-apply it, leaves such lists out)
        context = f"filter: {'; '.join(filters)}" if filters else None
        return self._serve(s, q, user_id, k, preset, discovery, self._allowed(s, filters, neg),
                           context, explore=explore)

    def recommend_session(self, item_ids: Sequence[str], k: int = 10, preset: str | None = None,
                          discovery: float | None = None) -> dict[str, Any]:
        s = self.state
        hist = []
        for iid in item_ids:
            i = s.index(iid)
            if i is not None:
                hist.append(i)
            elif self.store.get_item(iid) is None:
                raise UnknownIdError(f"unknown item id {iid!r}")
            # else: in the catalog but newer than the model: no vector yet, dropped
        q = Query(None, np.asarray(hist, dtype=np.int64))
        return self._serve(s, q, None, k, preset, discovery, self._allowed(s, (), np.zeros(0, np.int64)))

    def _pipeline(self, s: ModelState, preset: str) -> Pipeline:
        p = s.pipelines.get(preset)
        if p is None:
            if preset in s.unavailable:
                raise ConfigError(f"preset {preset!r} is not available on this model: "
                                  f"{s.unavailable[preset]}")
            raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(s.pipelines)}")
        return p

    def _serve(self, s: ModelState, q: Query, user_id: str | None, k: int, preset: str | None,
               discovery: float | None, candidates: np.ndarray | None,
               context: str | None = None, explore: float | None = None) -> dict[str, Any]:
        preset = preset or self.config.default_preset
        pipe = self._pipeline(s, preset)
        d = float(pipe.preset.discovery if discovery is None else discovery)
        eps = float(pipe.explorer.config.epsilon if explore is None else explore)
        # one request computes at a time: the numeric work is short (a few ms) and threads
        # that interleave it only contend for the interpreter lock and the cores
        with self._compute_lock:
            if candidates is not None and candidates.size == 0:
                lst = ItemList.empty()
            else:
                lst = pipe.recommend_many([q], k, d, candidates, explore=eps)[0]
                self._remember_shown(pipe, preset, user_id, lst, s)
            items = self.describe(s, q, lst)
        imp_id = self.log_impression(user_id, items, preset, d, context)
        return {"user_id": user_id, "preset": preset, "discovery": d, "explore": eps,
                "impression_id": imp_id, "items": items}

    def log_impression(self, user_id: str | None, items: list[dict[str, Any]], preset: str,
                       discovery: float, context: str | None) -> str:
        """Queue the list for the impression log and return its public id at once.

        The id and timestamp are fixed here, at serve time; the row is written by the
        background writer within about ``flush_interval`` (``impression_writer.flush()``
        waits for it).
        """
        imp_id = new_impression_id()
        imp = Impression(
            user_id, tuple(it["item_id"] for it in items), tuple(it["score"] for it in items),
            preset, discovery, tuple(it["propensity"] for it in items), context, time.time(),
            imp_id,
        )
        self.impression_writer.submit(imp)
        if self.on_impression is not None:
            self.on_impression()
        return imp_id

    def describe(self, s: ModelState, q: Query, lst: ItemList) -> list[dict[str, Any]]:
        """Output rows with badges (see the module docstring for their definitions)."""
        if len(lst) == 0:
            return []
        idx = lst.items
        rel = np.asarray(lst.fields.get("relevance", lst.scores), dtype=np.float64)
        finite = np.isfinite(rel)
        top_half = rel >= (np.median(rel[finite]) if finite.any() else np.inf)
        hist = np.unique(q.history)
        if hist.size:
            ref_info = float(s.self_info[hist].mean())
            centre = s.vectors[hist].mean(axis=0)
            unexp_ref = 1.0 - s.reference_vectors @ centre
            threshold = float(np.quantile(unexp_ref, SERENDIPITY_QUANTILE))
            serendipitous = ((1.0 - s.vectors[idx] @ centre) >= threshold) & top_half
        else:
            ref_info = s.mean_info
            serendipitous = np.zeros(idx.size, dtype=bool)
        tail = ~s.head[idx]
        novel = s.self_info[idx] > ref_info
        # a list without exploration is deterministic given the user's state: propensity 1
        prop = np.asarray(lst.fields.get("propensity", np.ones(idx.size)), dtype=np.float64)
        explored = np.asarray(lst.fields.get("explored", np.zeros(idx.size, bool)), dtype=bool)
        out = []
        for n, (i, score, reasons) in enumerate(
            zip(idx.tolist(), lst.scores.tolist(), lst.reason_lists(), strict=True)
        ):
            badges = [b for b, on in (("tail", tail[n]), ("novel", novel[n]),
                                      ("serendipitous", serendipitous[n]),
                                      ("explore", explored[n])) if on]
            out.append({
                "item_id": s.item_ids[i], "title": s.titles[i],
                "score": round(float(score), 6) if math.isfinite(score) else 0.0,
                "reasons": reasons, "badges": badges, "propensity": float(prop[n]),
            })
        return out

    # ------------------------------------------------------------------- similar items
    def similar(self, item_id: str, k: int = 10) -> dict[str, Any]:
        s = self.state
        i = s.index(item_id)
        if i is None:
            raise UnknownIdError(
                f"unknown item id {item_id!r}" + (" (in the catalog but not yet in the model; "
                                                  "retrain)" if item_id not in s.item_pos
                                                  and self.store.get_item(item_id) else "")
            )
        sem = s.vectors @ s.vectors[i]
        collab = self._collab_row(s, i)
        w = self.config.similar_semantic_weight
        score = sem if collab is None else w * sem + (1.0 - w) * collab
        score = score.astype(np.float64)
        score[i] = -np.inf
        score[s.excluded] = -np.inf
        lst = ItemList(np.arange(s.n_items), score)
        lst = lst.take(np.flatnonzero(np.isfinite(score))).top(k)
        items = []
        for j, sc in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
            reasons = [f"similar description (cosine {float(sem[j]):.2f})"]
            if collab is not None and collab[j] > 0:
                reasons.append(f"liked by the same people (collaborative {float(collab[j]):.2f})")
            items.append({"item_id": s.item_ids[j], "title": s.titles[j],
                          "score": round(float(sc), 6), "reasons": reasons})
        return {"item_id": item_id, "items": items}

    def _collab_row(self, s: ModelState, i: int) -> np.ndarray | None:
        """Collaborative similarity to item ``i`` in [0, 1]: EASE weights, else co-occurrence."""
        if s.collab is not None:
            row = np.asarray(s.collab[i], dtype=np.float64).clip(min=0.0)
        else:
            x = s.rec.data.matrix
            users = x[:, [i]].nonzero()[0]
            if users.size == 0:
                return None
            counts = np.asarray(x[users].sum(axis=0)).ravel()
            row = counts / np.sqrt(np.maximum(s.popularity[i] * s.popularity, 1.0))
        top = float(row.max()) if row.size else 0.0
        return row / top if top > 0 else None

    # ------------------------------------------------------------------- search
    def search(self, text: str, user_id: str | None = None, k: int = 10,
               discovery: float | None = None) -> dict[str, Any]:
        s = self.state
        enc = self.encoder()
        prompt = request_text(text)
        with self._encoder_lock:
            qv = np.asarray(enc.encode([prompt], progress=False), dtype=np.float32)[0]
        if qv.shape[0] != s.vectors.shape[1]:
            raise ConfigError(
                f"the encoder gives {qv.shape[0]}-d vectors but the model's items have "
                f"{s.vectors.shape[1]}-d ones; retrain with this encoder"
            )
        qv = qv / max(float(np.linalg.norm(qv)), 1e-12)
        blocked = s.excluded.copy()
        hist = np.zeros(0, dtype=np.int64)
        neg = np.zeros(0, dtype=np.int64)
        u = None
        if user_id is not None:
            hist, neg = self.history(s, user_id)
            blocked[hist] = True
            blocked[neg] = True
            u = s.user_pos.get(user_id)
        preset = self.config.default_preset
        pipe = self._pipeline(s, preset)
        n_pool = max(pipe.preset.candidates, k)
        d = 0.0 if discovery is None else float(discovery)
        with self._compute_lock:
            pool, session, context, cos = self._search_pool(s, pipe, qv, u, hist, neg, blocked,
                                                            n_pool)
        q = Query(u, context, prompt, discovery=d)
        lst = pool
        for rr in pipe.rerankers:
            lst = rr(q, lst, k)
        lst = lst.take(np.arange(min(k, len(lst))))
        reasons = [[f"matches your request (similarity {cos(i):.2f})", *r]
                   for i, r in zip(lst.items.tolist(), lst.reason_lists(), strict=True)]
        lst = lst.with_reasons(reasons)
        items = self.describe(s, Query(u, hist), lst)
        imp_id = self.log_impression(user_id, items, preset, d, text)
        return {"user_id": user_id, "preset": preset, "discovery": d,
                "impression_id": imp_id, "query": text,
                "session_items": [s.item_ids[i] for i in session.tolist()], "items": items}

    def _search_pool(self, s: ModelState, pipe: Pipeline, qv: np.ndarray, u: int | None,
                     hist: np.ndarray, neg: np.ndarray, blocked: np.ndarray, n_pool: int
                     ) -> tuple[ItemList, np.ndarray, np.ndarray, Any]:
        """Search candidates: standardised text match + weighted standardised taste.

        Returns the pool (best first), the session items (best text matches), the context
        (history + session) and a function giving an item's cosine to the request.
        """
        w = self.config.search_user_weight
        r = s.retriever
        space = r.spaces.get(TEXT_SPACE) if r is not None else None
        if r is None or space is None:
            cos = (s.vectors @ qv).astype(np.float64)
            text_score = np.where(blocked, -np.inf, cos)
            n_ok = int((~blocked).sum())
            session = np.argsort(-text_score, kind="stable")[: min(SESSION_ITEMS, n_ok)]
            context = np.concatenate([hist, session]).astype(np.int64)
            taste = standardize(pipe.hybrid.score_many([Query(u, context)])[0])
            taste = np.where(np.isfinite(taste), taste, 0.0)
            blend = standardize(text_score) + w * taste
            blend = np.where(blocked, -np.inf, blend)
            pool = ItemList(np.arange(s.n_items), blend)
            pool = pool.take(np.flatnonzero(np.isfinite(blend))).top(n_pool)
            return pool, session, context, lambda i: float(cos[i])
        # large catalog: text matches from the text index + the taste blend's own candidates
        n_src = r.config.per_source + int(hist.size + neg.size)
        text_hits = space.search(qv, n_src)
        text_hits = text_hits[~blocked[text_hits]]
        session = text_hits[:SESSION_ITEMS]
        context = np.concatenate([hist, session]).astype(np.int64)
        tq = Query(u, context)
        taste_hits = pipe.hybrid.retrieve(tq, r, n_src, allowed=~blocked).items
        cand = np.unique(np.concatenate([text_hits, taste_hits, session]))
        mu, sd = space.stats(qv.astype(np.float64), 0.0)
        cos_c = (s.vectors[cand] @ qv).astype(np.float64)
        text_z = (cos_c - mu) / (sd if sd > 0 else 1.0)
        ref = pipe.hybrid.score_items(tq, r, s.reference)
        ref = ref[np.isfinite(ref)]
        t_mu = float(ref.mean()) if ref.size else 0.0
        t_sd = float(ref.std()) if ref.size else 0.0
        taste = (pipe.hybrid.score_items(tq, r, cand) - t_mu) / (t_sd if t_sd > 0 else 1.0)
        taste = np.where(np.isfinite(taste), taste, 0.0)
        pool = ItemList(cand, text_z + w * taste).top(n_pool)
        cos_of = dict(zip(cand.tolist(), cos_c.tolist(), strict=True))
        return pool, session, context, lambda i: cos_of.get(int(i), float(s.vectors[i] @ qv))

    # ------------------------------------------------------------------- explanations
    def explain(self, user_id: str, item_id: str) -> dict[str, Any]:
        s = self.state
        i = s.index(item_id)
        if i is None:
            raise UnknownIdError(f"unknown item id {item_id!r}")
        hist, _ = self.history(s, user_id)
        if hist.size == 0 and not self.user_known(user_id, s):
            raise UnknownIdError(f"unknown user id {user_id!r}")
        title = s.titles[i]
        recent = np.unique(hist[-50:])
        recent = recent[recent != i]  # the item itself explains nothing
        because: list[dict[str, Any]] = []
        unexp: float | None = None
        if recent.size:
            sims = s.vectors[recent] @ s.vectors[i]
            order = np.argsort(-sims, kind="stable")[:3]
            because = [{"item_id": s.item_ids[int(recent[j])], "title": s.titles[int(recent[j])],
                        "similarity": round(float(sims[j]), 4)} for j in order]
            unexp = round(float(1.0 - sims.mean()), 4)
        users = int(s.popularity[i])
        pct = round(float(s.percentile[i]), 1)
        bits = round(float(s.self_info[i]), 3)
        parts = [
            f"{title} was chosen by {users} of {s.n_users} people in the training data "
            f"(more than or as many as {pct:.0f}% of the catalog)"
            + ("" if s.head[i] else ", so it lies in the long tail outside the 20% most popular")
            + f"; its novelty is {bits:.1f} bits."
        ]
        if because:
            b = because[0]
            parts.append(
                f"Of your history it is closest to {b['title']} (cosine {b['similarity']:.2f})"
                f"; its unexpectedness given your history is {unexp:.2f} "
                "(0 = like what you know, 1 = unrelated)."
            )
        else:
            parts.append("You have no history yet, so it is picked on popularity and text alone.")
        return {"user_id": user_id, "item_id": item_id, "title": title, "because": because,
                "popularity": {"users": users, "percentile": pct}, "novelty_bits": bits,
                "unexpectedness": unexp, "text": " ".join(parts)}

    # ------------------------------------------------------------------- off-policy evaluation
    def off_policy(self, presets: Sequence[str] | None = None, explore: float = 0.0,
                   window: float = 86_400.0, limit: int = 2_000) -> dict[str, Any]:
        """IPS/SNIPS estimates of presets' reward per slot from the impression and event logs
        (``serendip.explore.replay``), under the current model."""
        from serendip.explore.replay import as_json, evaluate_targets, replay_log

        s = self.state
        names = list(dict.fromkeys(presets)) if presets else list(s.pipelines)
        targets = {n: self._pipeline(s, n) for n in names}
        self.impression_writer.flush(10.0)  # include what was just served
        replay = replay_log(self.store.impressions_frame(), self.store.events_frame(),
                            s.item_pos, s.user_pos, s.n_items, window, limit,
                            history_limit=self.config.history_limit)
        excluded = s.excluded if s.excluded.any() else None
        return as_json(evaluate_targets(replay, targets, explore, excluded))

    def presets(self) -> list[dict[str, Any]]:
        s = self._state
        if s is None:
            return [{"name": name, "description": p.description, "discovery": p.discovery}
                    for name, p in self.config.all_presets().items()]
        return [{"name": name, "description": pipe.preset.description,
                 "discovery": pipe.preset.discovery,
                 "learned": None if pipe.bandit is None else {
                     k: round(v, 6) for k, v in pipe.bandit.weights().items()}}
                for name, pipe in s.pipelines.items()]
