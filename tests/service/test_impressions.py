"""The background impression writer, over a real SQLite store."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from serendip.errors import ConfigError, StoreError
from serendip.service.impressions import ImpressionWriter, new_impression_id
from serendip.store import Impression, SQLiteStore, open_store
from serendip.store._common import check_impression_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(f"sqlite:///{tmp_path / 'imp.db'}")
    assert isinstance(s, SQLiteStore)
    yield s
    s.close()


def _imp(n: int, key: str | None = None) -> Impression:
    return Impression(f"u{n}", (f"i{n}",), (1.0,), "balanced", 0.5, None, None, float(n),
                      new_impression_id() if key is None else key)


class Recording:
    """A store wrapper that records batch sizes and can be made to fail."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.batches: list[int] = []
        self.broken = False
        self.lock = threading.Lock()

    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        with self.lock:
            self.batches.append(len(impressions))
        if self.broken:
            raise StoreError("the database is down")
        return self.store.log_impressions(impressions)


def test_ids_are_valid_unique_and_time_ordered() -> None:
    ids = [new_impression_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and check_impression_id(i) for i in ids)
    first = new_impression_id()
    time.sleep(0.003)
    assert new_impression_id()[:12] > first[:12]  # milliseconds lead
    assert abs(int(first[:12], 16) - time.time() * 1000) < 5000


def test_many_threads_all_written_exactly_once(store: SQLiteStore) -> None:
    rec = Recording(store)
    n_threads, per_thread = 8, 400
    writer = ImpressionWriter(rec, max_batch=64, flush_interval=0.01)
    submitted: list[list[str]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        start.wait()
        for n in range(per_thread):
            imp = _imp(t * per_thread + n)
            assert writer.submit(imp)
            assert imp.impression_id is not None
            submitted[t].append(imp.impression_id)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert writer.flush(timeout=30)
    total = n_threads * per_thread
    assert writer.pending == 0
    assert writer.stats() == {"written": total, "dropped": 0, "failed": 0, "lost": 0,
                              "pending": 0}
    assert store.count_impressions() == total
    stored = store.impressions_frame()["impression_id"].tolist()
    assert len(stored) == len(set(stored)) == total
    assert set(stored) == {i for ids in submitted for i in ids}
    # batched: fewer transactions than impressions, none over max_batch
    assert sum(rec.batches) == total and max(rec.batches) <= 64 and len(rec.batches) < total
    # each thread's impressions keep their submission order
    frame = store.impressions_frame()
    for ids in submitted:
        assert [i for i in frame["impression_id"] if i in set(ids)] == ids
    writer.close()


def test_a_failing_batch_is_counted_and_the_thread_goes_on(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recording(store)
    rec.broken = True
    writer = ImpressionWriter(rec, flush_interval=0.01)
    with caplog.at_level(logging.ERROR, logger="serendip.service.impressions"):
        for n in range(3):
            writer.submit(_imp(n))
        assert writer.flush(timeout=10)
    assert writer.failed >= 1 and writer.lost == 3 and writer.written == 0
    assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert store.count_impressions() == 0
    rec.broken = False
    later = [_imp(n) for n in range(10, 15)]
    for imp in later:
        writer.submit(imp)
    assert writer.flush(timeout=10)
    assert writer.written == 5 and writer.lost == 3
    assert store.impressions_frame()["impression_id"].tolist() == [i.impression_id for i in later]
    writer.close()


def test_a_bad_impression_costs_only_itself(store: SQLiteStore) -> None:
    writer = ImpressionWriter(store, max_batch=100, flush_interval=5.0)
    store.log_impressions([_imp(0, "taken")])
    good = [_imp(n) for n in range(1, 6)]
    for imp in good[:2] + [_imp(9, "taken")] + good[2:]:  # one refused by the UNIQUE id
        writer.submit(imp)
    assert writer.flush(timeout=10)
    assert writer.written == 5 and writer.lost == 1 and writer.failed == 2  # batch + the one
    assert store.impressions_frame()["impression_id"].tolist() == (
        ["taken"] + [i.impression_id for i in good])
    writer.close()


def test_full_queue_drops_and_counts(store: SQLiteStore) -> None:
    # a long interval and a large batch: the thread holds off, so the queue fills
    writer = ImpressionWriter(store, max_batch=1000, flush_interval=60.0, max_pending=10)
    accepted = [writer.submit(_imp(n)) for n in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert writer.dropped == 5 and writer.pending == 10
    assert writer.flush(timeout=10)
    assert writer.written == 10 and store.count_impressions() == 10
    assert writer.submit(_imp(99))  # room again
    writer.close()
    assert writer.written == 11 and writer.dropped == 5


def test_flush_timeout_and_close(store: SQLiteStore) -> None:
    gate = threading.Event()

    class Slow:
        def log_impressions(self, impressions: Sequence[Impression]) -> int:
            gate.wait(10)
            return store.log_impressions(impressions)

    writer = ImpressionWriter(Slow(), flush_interval=0.0)
    assert writer.flush(timeout=0.01)  # nothing submitted
    writer.submit(_imp(1))
    thread = writer._thread
    assert thread is not None and thread.daemon and thread.name == "serendip-impressions"
    assert writer.flush(timeout=0.05) is False
    assert writer.pending == 1
    gate.set()
    assert writer.close() is True
    assert store.count_impressions() == 1
    assert not thread.is_alive()  # stopped
    # a submit after close starts a new thread
    writer.submit(_imp(2))
    with writer:
        pass
    assert store.count_impressions() == 2 and writer.written == 2


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"max_batch": 0}, "0"), ({"flush_interval": -1.0}, "-1.0"), ({"max_pending": True}, "True"),
     ({"flush_interval": "fast"}, "fast")],
)
def test_bad_settings(store: SQLiteStore, kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ImpressionWriter(store, **kwargs)  # type: ignore[arg-type]
