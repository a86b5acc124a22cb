"""Many threads writing through one store object: nothing lost, nothing doubled."""

from __future__ import annotations

import threading
from collections.abc import Callable

from serendip.store import EventRecord, SQLiteStore, Store

N_THREADS, PER_THREAD, BATCH, SHARED_KEYS = 4, 500, 10, 50


def _hammer(store: Store) -> list[list[int]]:
    """Each thread appends PER_THREAD unique events, and all re-send the same SHARED_KEYS."""
    errors: list[BaseException] = []
    ids: list[list[int]] = [[] for _ in range(N_THREADS)]
    shared_ids: list[dict[str, int]] = [{} for _ in range(N_THREADS)]
    start = threading.Barrier(N_THREADS)

    def work(t: int) -> None:
        try:
            start.wait()
            events = [
                EventRecord(f"u{t}", f"i{n}", idempotency_key=f"t{t}-{n}") for n in range(PER_THREAD)
            ]
            for lo in range(0, PER_THREAD, BATCH):
                ids[t] += [a.event_id for a in store.append_events(events[lo : lo + BATCH])]
            for n in range(SHARED_KEYS):
                (ack,) = store.append_events([EventRecord("shared", f"i{n}", idempotency_key=f"s{n}")])
                shared_ids[t][f"s{n}"] = ack.event_id
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    # every thread got the same id for each shared key
    assert all(s == shared_ids[0] for s in shared_ids)
    return ids


def _check(store: Store, ids: list[list[int]]) -> None:
    flat = [i for t in ids for i in t]
    assert len(flat) == N_THREADS * PER_THREAD == len(set(flat))
    assert store.count_events() == N_THREADS * PER_THREAD + SHARED_KEYS
    frame = store.events_frame()
    per_user = frame[frame.user_id != "shared"].groupby("user_id")["item_id"].apply(list)
    for t in range(N_THREADS):
        assert per_user[f"u{t}"] == [f"i{n}" for n in range(PER_THREAD)]  # each thread's order kept
    assert not frame.duplicated().any()


def test_threads_append_exactly_once(store: Store) -> None:
    _check(store, _hammer(store))


def test_shared_connection_mode(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "shared.db", connections="shared")
    try:
        store.migrate()
        _check(store, _hammer(store))
    finally:
        store.close()


def test_two_store_objects_on_one_database(open_fresh: Callable[[], Store]) -> None:
    a, b = open_fresh(), open_fresh()
    a.append_events([EventRecord("u", "i", idempotency_key="same")])
    (ack,) = b.append_events([EventRecord("u", "i", idempotency_key="same")])
    assert ack.duplicate and b.count_events() == a.count_events() == 1
