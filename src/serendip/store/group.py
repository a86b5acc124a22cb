"""Group commit: concurrent event writes share one durable transaction.

Every acknowledged event costs a commit, and a durable commit costs a disk flush (about a
millisecond or more), so requests that post one event each would top out at a few hundred per
second however fast the rest is.  ``GroupCommitter`` lets callers that arrive while a commit is
in flight queue up; the next caller to find no commit running becomes the *leader*, writes
everything queued in one ``append_events`` transaction and hands each caller its own
acknowledgements.  Each caller still returns only after its events are committed, and a
request's events stay all-or-nothing: if the shared transaction fails (one request with a bad
event, the database refusing a value) every request in it is retried in its own transaction,
so only the bad one fails.  No background thread: callers do the work.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from serendip.store.base import EventAck, EventRecord, Store

__all__ = ["GroupCommitter"]


@dataclass(eq=False)  # identity: two requests with equal events are still two
class _Request:
    events: list[EventRecord]
    acks: list[EventAck] | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommitter:
    """``append_events`` with group commit over a store (thread-safe)."""

    def __init__(self, store: Store, max_events: int = 10_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.store = store
        self.max_events = max_events
        self._cv = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self.transactions = 0  # shared transactions started (for tests and metrics)
        self.requests = 0

    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        req = _Request(list(events))
        if not req.events:
            return self.store.append_events([])
        with self._cv:
            self._queue.append(req)
            self.requests += 1
            while not req.done and self._busy:
                self._cv.wait()
            if req.done:
                return self._result(req)
            self._busy = True  # this caller leads: take what is queued (its own request first)
            batch = self._take(req)
        try:
            self._commit(batch)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return self._result(req)

    def _take(self, own: _Request) -> list[_Request]:
        batch = [own]
        self._queue.remove(own)
        n = len(own.events)
        while self._queue and n + len(self._queue[0].events) <= self.max_events:
            r = self._queue.pop(0)
            batch.append(r)
            n += len(r.events)
        return batch

    def _commit(self, batch: list[_Request]) -> None:
        self.transactions += 1
        try:
            acks = self.store.append_events([e for r in batch for e in r.events])
        except Exception:
            if len(batch) == 1:
                self._finish(batch[0], error=_current_error())
                return
            for r in batch:  # isolate: each request in its own transaction
                try:
                    self._finish(r, acks=self.store.append_events(r.events))
                except Exception:
                    self._finish(r, error=_current_error())
            return
        at = 0
        for r in batch:
            self._finish(r, acks=acks[at : at + len(r.events)])
            at += len(r.events)

    def _finish(self, r: _Request, acks: list[EventAck] | None = None,
                error: BaseException | None = None) -> None:
        with self._cv:
            r.acks, r.error, r.done = acks, error, True

    @staticmethod
    def _result(r: _Request) -> list[EventAck]:
        if r.error is not None:
            raise r.error
        assert r.acks is not None
        return r.acks


def _current_error() -> BaseException:
    import sys

    err = sys.exc_info()[1]
    assert err is not None
    return err
