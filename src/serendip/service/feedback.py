"""What people do, and what is stored about them: events, histories, bandit credit, erasure.

Online update without retraining: a request takes the user's history from the store
(``recent_item_events``, one indexed query) and maps it to the model's item indices, so
feedback posted a moment ago changes the next list.  ``skip`` and ``dislike`` are negative
feedback: they never count as history and their items are left out of the user's lists; so is
a ``rating`` below the model's ``negative_below`` (1-2 stars of 5 by default).  Items deleted
from the catalog drop out of histories at once, so no reason names them.

Bandit presets learn from feedback: a list a bandit served is remembered per (user, item) slot
and a later rewarding event from a key allowed to write credits it.  Their statistics outlive
a model (carried into the next state, saved under the data directory).

A person's data is theirs: ``erase`` removes their events, impressions (with logged search
text), user record, remembered slots and their row in the served model at once;
``export`` returns everything stored about them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serendip.errors import SerendipError, UnknownIdError
from serendip.explore.policies import Examination
from serendip.explore.replay import REWARD_TYPES
from serendip.pipeline import Pipeline
from serendip.service.catalog import Catalog
from serendip.service.lifecycle import Lifecycle
from serendip.service.state import NEGATIVE_TYPES, ModelState
from serendip.store.base import EventAck, EventRecord, Impression, Store
from serendip.store.group import GroupCommitter
from serendip.types import ItemList

__all__ = ["Feedback"]

log = logging.getLogger(__name__)


class Feedback:
    """Events in, histories out; bandit credit; a person's data erased or exported."""

    def __init__(self, store: Store, lifecycle: Lifecycle, catalog: Catalog) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.catalog = catalog
        self.config = lifecycle.config
        # concurrent event posts share one durable commit (group commit)
        self.event_writer = GroupCommitter(store)
        # bandit presets: what each user was shown (features per slot), so that a later
        # click, like or purchase can credit the bandit; oldest entries are dropped first
        self._shown: OrderedDict[tuple[str, str], tuple[str, np.ndarray, float]] = OrderedDict()
        self._shown_lock = threading.Lock()
        self._bandit_save_lock = threading.Lock()
        lifecycle.on_install.append(self._carry_bandits)

    # ------------------------------------------------------------------- events
    def append(self, events: Sequence[EventRecord], learn: bool = True) -> list[EventAck]:
        """Store events (one durable commit shared with concurrent posts); with ``learn``,
        rewarding events credit the bandit slots they answer."""
        self.catalog.check_exist([e.item_id for e in events])
        acks = self.event_writer.append_events(events)
        if learn:
            self._credit_bandits(events, acks)
        return acks

    def top_users(self, limit: int) -> list[str]:
        """User ids with the most events first (ties by id): one grouped query."""
        return self.store.top_users(limit)

    def user_known(self, user_id: str, s: ModelState | None = None) -> bool:
        if s is not None and s.user_index(user_id) is not None:
            return True
        if self.store.get_user(user_id) is not None:
            return True
        return len(self.store.user_events(user_id, limit=1)) > 0

    def history_rows(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """The user's events, most recent first, with titles."""
        ev = self.store.user_events(user_id, limit=limit)
        if len(ev) == 0 and not self.user_known(user_id):
            raise UnknownIdError(f"unknown user id {user_id!r}")
        s = self.lifecycle.current
        rows = []
        for iid, ty, ts, val in zip(ev["item_id"].tolist(), ev["type"].tolist(),
                                    ev["timestamp"].tolist(), ev["value"].tolist(), strict=True):
            rows.append({
                "item_id": str(iid), "title": self.catalog.title(str(iid), s), "type": str(ty),
                "timestamp": float(ts),
                "value": None if val is None or math.isnan(val) else float(val),
            })
        rows.reverse()
        return rows

    def history(self, s: ModelState, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(positive history oldest first, negative items) as model item indices.

        The latest event on an item decides: a like after a skip is history again.
        Items unknown to the model (added since the fit) and items deleted from the catalog
        are dropped.
        """
        last: dict[int, bool] = {}
        limit = self.config.history_limit
        low = s.rec.negative_below  # a rating below it is negative feedback, as in training
        for iid, ty, value in (self.store.recent_item_events(user_id, limit) if limit > 0 else ()):
            i = s.item_pos.get(iid)
            if i is None or s.excluded[i]:
                continue
            last.pop(i, None)  # re-insert: dict order = order of each item's last event
            last[i] = ty not in NEGATIVE_TYPES and not (
                ty == "rating" and low is not None and value is not None and value < low)
        pos = np.fromiter((i for i, ok in last.items() if ok), dtype=np.int64)
        neg = np.fromiter((i for i, ok in last.items() if not ok), dtype=np.int64)
        return pos, neg

    def shown(self, s: ModelState, user_id: str, unwritten: Sequence[Impression] = ()
              ) -> np.ndarray:
        """Model item indices of what ``user_id`` was shown in their ``shown_limit`` most
        recent lists, one entry per showing (``Query.shown``), oldest list first; items the
        model does not know are dropped.  ``unwritten``: the person's lists still queued for
        the impression log (taken before the store is read: a list written in between is
        found in both and counted once, by its id), so a list just served counts at once."""
        limit = self.config.shown_limit
        if limit <= 0:
            return np.zeros(0, dtype=np.int64)
        pending = list(unwritten)
        stored = self.store.recent_impressions(user_id, limit)
        ids = {key for key, _, _ in stored}
        lists = [(t, items) for _, t, items in stored] + [
            (time.time() if imp.timestamp is None else imp.timestamp, list(imp.item_ids))
            for imp in pending
            if imp.impression_id not in ids]
        lists.sort(key=lambda row: row[0])  # stable: the store's order within a timestamp
        pos = s.item_pos
        return np.fromiter((i for _, lst in lists[-limit:]
                            for i in (pos.get(iid) for iid in lst) if i is not None),
                           dtype=np.int64)

    # ------------------------------------------------------------------- a person's data
    def erase(self, user_id: str) -> dict[str, Any]:
        """Remove everything stored about ``user_id`` and their row in the served model.

        Returns what was removed.  The user is served as a new user at once; what the
        item-item statistics learned from them goes at the next retrain, which is started.
        """
        s = self.lifecycle.current
        known = self.user_known(user_id, s)
        removed: dict[str, Any] = dict(self.store.erase_user(user_id))
        self._second_pass(user_id)
        with self._shown_lock:
            gone = [key for key in self._shown if key[0] == user_id]
            for key in gone:
                del self._shown[key]
        removed["remembered_slots"] = len(gone)
        in_model = s is not None and user_id in s.user_pos
        if s is not None and in_model:
            s.erased_users.add(user_id)
        removed["model_row"] = int(in_model)
        if not known and not any(v for v in removed.values()):
            raise UnknownIdError(f"unknown user id {user_id!r}")
        retrain = None
        if in_model:
            reason = "a user's data was erased"
            self.lifecycle.mark_stale(reason)
            retrain = self.lifecycle.retrain(kind="erase", reason=reason, fresh=True).job_id
        return {"user_id": user_id, "removed": removed, "retrain_job": retrain}

    def _second_pass(self, user_id: str) -> None:
        """Erase again ``erase_second_pass`` seconds later: another instance may have served
        this person a list just before the erasure and still hold it in its impression queue."""
        delay = self.config.erase_second_pass

        def again() -> None:
            try:
                late = self.store.erase_user(user_id)
                if any(late.values()):
                    log.info("erasure second pass removed %s", dict(late))
            except Exception:  # logged; the first pass has already removed what was stored
                log.exception("erasure second pass failed")

        if delay > 0:
            t = threading.Timer(delay, again)
            t.daemon = True
            t.start()

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about ``user_id`` (complete: no event limit)."""
        got: dict[str, Any] = dict(self.store.export_user(user_id))
        s = self.lifecycle.current
        if not any(got.get(k) for k in ("user", "events", "impressions")) and not (
                s is not None and s.user_index(user_id) is not None):
            raise UnknownIdError(f"unknown user id {user_id!r}")
        return got

    # ------------------------------------------------------------------- bandit feedback
    def remember_shown(self, pipe: Pipeline, preset: str, user_id: str | None,
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
        s = self.lifecycle.current
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
            if (pipe is not None and pipe.bandit is not None
                    and now - shown_at <= self.config.bandit_window):
                pipe.bandit.credit(row)

    def _bandit_path(self, preset: str) -> Path:
        return self.lifecycle.bandit_dir() / f"{preset}.npz"

    def save_bandits(self) -> None:
        """Write every bandit preset's learned statistics to the data directory (each file
        written under a unique name, then renamed over the old one); a failure is logged, never
        raised: the statistics are a cache of what the stored events taught."""
        s = self.lifecycle.current
        if s is None:
            return
        with self._bandit_save_lock:
            for name, pipe in s.pipelines.items():
                if pipe.bandit is None:
                    continue
                a, b = pipe.bandit.statistics()
                exam = pipe.bandit.examination()
                path = self._bandit_path(name)
                tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp.npz")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if exam is None:
                        np.savez(tmp, A=a, b=b)
                    else:
                        np.savez(tmp, A=a, b=b, E=exam)
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
                pipe.bandit.set_examination(prev.bandit.examination())
                continue
            path = self._bandit_path(name)
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        a, b = z["A"], z["b"]
                        exam = z["E"] if "E" in z.files else None
                    if exam is not None:  # checked before anything is applied
                        Examination().set_state(exam)
                    pipe.bandit.set_statistics(a, b)
                    pipe.bandit.set_examination(exam)
                except (OSError, KeyError, ValueError, SerendipError) as e:
                    log.warning("ignoring unreadable bandit state %s: %s", path, e)
