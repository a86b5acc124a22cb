"""Group commit: concurrent event writes share transactions, keep per-request semantics."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from serendip.errors import DataError
from serendip.store import Store
from serendip.store.base import EventAck, EventRecord
from serendip.store.group import GroupCommitter


class GatedStore:
    """Delegates to a real store; the first ``append_events`` waits until ``release`` is set,
    so that other callers queue up behind it (a deterministic way to form a group)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.calls: list[int] = []

    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        if not self.calls:
            self.release.wait(30)
        self.calls.append(len(events))
        return self.inner.append_events(events)


def run_threads(target, n: int) -> list[object]:  # type: ignore[no-untyped-def]
    out: list[object] = [None] * n

    def one(i: int) -> None:
        try:
            out[i] = target(i)
        except Exception as e:  # collected, asserted by the test
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return [threads, out]  # type: ignore[list-item]


def wait_until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_queued_requests_share_one_transaction_and_get_their_own_acks(store: Store) -> None:
    gated = GatedStore(store)
    gc = GroupCommitter(gated)  # type: ignore[arg-type]
    threads, out = run_threads(
        lambda i: gc.append_events([EventRecord(f"u{i}", f"i{i}", idempotency_key=f"k{i}"),
                                    EventRecord(f"u{i}", "shared", "like")]), 9)
    wait_until(lambda: gc.requests == 9)  # one leader blocked in the store, eight queued
    gated.release.set()
    for t in threads:
        t.join(30)
    assert gated.calls[0] == 2 and sum(gated.calls) == 18
    assert gc.transactions == 2  # the leader's own, then all eight queued ones together
    events = store.events_frame()
    assert len(events) == 18
    for i, acks in enumerate(out):
        assert isinstance(acks, list) and len(acks) == 2 and not any(a.duplicate for a in acks)
        rows = events[events["user_id"] == f"u{i}"]
        assert sorted(rows["item_id"]) == sorted([f"i{i}", "shared"])
    ids = [a.event_id for acks in out for a in acks]  # type: ignore[union-attr]
    assert len(set(ids)) == 18


def test_a_bad_request_fails_alone(store: Store) -> None:
    gated = GatedStore(store)
    gc = GroupCommitter(gated)  # type: ignore[arg-type]

    def post(i: int) -> list[EventAck]:
        if i == 3:
            return gc.append_events([EventRecord("u3", "ok"), EventRecord("u3", "x", "teleport")])
        return gc.append_events([EventRecord(f"u{i}", "item")])

    threads, out = run_threads(post, 6)
    wait_until(lambda: gc.requests == 6)
    gated.release.set()
    for t in threads:
        t.join(30)
    assert isinstance(out[3], DataError) and "teleport" in str(out[3])
    assert all(isinstance(out[i], list) for i in range(6) if i != 3)
    events = store.events_frame()
    assert sorted(events["user_id"]) == sorted(f"u{i}" for i in range(6) if i != 3)  # none of u3


def test_idempotency_keys_across_requests_in_one_group(store: Store) -> None:
    gated = GatedStore(store)
    gc = GroupCommitter(gated)  # type: ignore[arg-type]
    threads, out = run_threads(
        lambda i: gc.append_events([EventRecord("u", "i", idempotency_key="same")]), 5)
    wait_until(lambda: gc.requests == 5)
    gated.release.set()
    for t in threads:
        t.join(30)
    assert all(isinstance(a, list) for a in out), out
    acks = [a[0] for a in out]  # type: ignore[index]
    assert sum(not a.duplicate for a in acks) == 1
    assert len({a.event_id for a in acks}) == 1
    assert len(store.events_frame()) == 1


def test_many_threads_each_event_stored_exactly_once(store: Store) -> None:
    gc = GroupCommitter(store, max_events=50)
    threads, out = run_threads(
        lambda i: [gc.append_events([EventRecord(f"u{i}", f"i{j}", idempotency_key=f"{i}-{j}")])
                   for j in range(20)], 8)
    for t in threads:
        t.join(60)
    assert all(isinstance(o, list) for o in out)
    events = store.events_frame()
    assert len(events) == 160 and events.groupby("user_id").size().eq(20).all()
    assert gc.requests == 160 and gc.transactions <= 160


def test_bad_settings():
    with pytest.raises(ValueError, match="got 0"):
        GroupCommitter(None, max_events=0)  # type: ignore[arg-type]
