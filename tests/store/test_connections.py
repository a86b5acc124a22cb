"""Connections stay bounded across thread churn, and outages raise StoreUnavailableError."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from serendip.errors import SerendipError, StoreError
from serendip.store import (
    EventRecord,
    ItemRecord,
    PostgresStore,
    SQLiteStore,
    Store,
    StoreUnavailableError,
    open_store,
)
from serendip.store.testing import PostgresServer, find_pg_bin

POOL = 4
WAVES, PER_WAVE, READS = 25, 8, 10  # 200 short-lived threads, 10 reads each
RETRAINS = 20


def _sqlite_fds(path: Path) -> int:
    """Open file descriptors of this process on the database file and its -wal/-shm files."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in names:
                n += 1
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return n


def _backends(url: str, app: str) -> int:
    """Server processes connected with ``application_name = app``."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (app,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def small_pool(backend: str, store_url: str) -> Iterator[tuple[Store, Callable[[], int], int]]:
    """A store allowed POOL pooled connections, and a counter of what it holds open."""
    store: Store
    if backend == "sqlite":
        path = Path(store_url.removeprefix("sqlite://"))
        store = SQLiteStore(path, readers=POOL)
        bound = 2 * (POOL + 1) + 1  # file + WAL per connection (writer too), one shared -shm

        def count() -> int:
            return _sqlite_fds(path)
    else:
        app = f"churn_{uuid.uuid4().hex[:12]}"
        store = PostgresStore(f"{store_url}&application_name={app}&pool_size={POOL}")
        bound = POOL

        def count() -> int:
            return _backends(store_url, app)
    try:
        store.migrate()
        yield store, count, bound
    finally:
        store.close()


def _run_threads(target: Callable[[], None], n: int) -> None:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_thread_churn_and_retrains_keep_connections_flat(
    small_pool: tuple[Store, Callable[[], int], int]
) -> None:
    store, count, bound = small_pool
    store.upsert_items([ItemRecord(f"i{n}", {"title": f"t{n}"}) for n in range(20)])
    store.append_events([EventRecord(f"u{n % 5}", f"i{n}") for n in range(20)])
    key = store.create_api_key("reader", "read")

    def request() -> None:  # what one request-pool thread does before it retires
        for n in range(READS):
            assert store.get_item(f"i{n}") == ItemRecord(f"i{n}", {"title": f"t{n}"})
            assert store.recent_item_events(f"u{n % 5}", 3)
            assert store.check_api_key(key) == "read"

    for _ in range(WAVES):
        _run_threads(request, PER_WAVE)
    after_requests = count()
    assert 1 <= after_requests <= bound  # the old per-thread connections made ~200 here

    def retrain() -> None:  # each retrain runs on a fresh thread and reads everything
        assert len(store.events_frame()) == 20
        assert len(store.items_frame()) == 20

    for _ in range(RETRAINS):
        _run_threads(retrain, 1)
    assert count() <= bound
    assert store.count_events() == 20  # and the store still works
    store.close()
    deadline = time.monotonic() + 10
    while count():  # closing lets every connection go (a server backend exits just after)
        assert time.monotonic() < deadline, "connections left open after close()"
        time.sleep(0.05)


def test_exhausted_pool_raises_unavailable_then_recovers(backend: str, store_url: str) -> None:
    if backend == "sqlite":
        store: Store = SQLiteStore(Path(store_url.removeprefix("sqlite://")), readers=1,
                                   pool_timeout=0.2)
        store.migrate()
        assert isinstance(store, SQLiteStore)
        held = store._readers.get()  # a long read somewhere else holds the only reader
        with pytest.raises(StoreUnavailableError, match="1 read connections stayed busy"):
            store.count_events()
        store._readers.put(held)
        assert store.count_events() == 0
        store.close()
        return
    store = PostgresStore(f"{store_url}&pool_size=1&pool_timeout=0.3")
    try:
        store.migrate()
        with psycopg.connect(store.url) as other:
            other.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  # held until commit
            writer = threading.Thread(target=store.upsert_items, args=([ItemRecord("a")],))
            writer.start()  # checks out the only connection, then waits on the lock
            deadline = time.monotonic() + 10
            while True:
                row = other.execute(
                    "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = "
                    "'items'::regclass").fetchone()
                if row and row[0]:
                    break
                assert time.monotonic() < deadline, "the writer never waited on the lock"
                time.sleep(0.01)
            with pytest.raises(StoreUnavailableError, match="pool of 1") as info:
                store.count_items()
            assert isinstance(info.value, SerendipError) and info.value.retry_after > 0
            other.commit()
            writer.join(10)
        assert store.count_items() == 1
    finally:
        store.close()


def test_sqlite_unreadable_or_removed_file(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory where the database file should be
    with pytest.raises(StoreUnavailableError, match="dir.db"):
        open_store(f"sqlite://{tmp_path / 'dir.db'}")

    path = tmp_path / "gone.db"
    store = open_store(f"sqlite://{path}")
    store.append_events([EventRecord("u", "i")])
    store.ping()
    path.unlink()
    for name in ("-wal", "-shm"):
        Path(f"{path}{name}").unlink(missing_ok=True)
    with pytest.raises(StoreUnavailableError, match="gone.db"):
        store.ping()
    # a write would go to the deleted file and be lost: refused instead of acknowledged
    with pytest.raises(StoreUnavailableError, match="gone.db"):
        store.append_events([EventRecord("u", "j")])
    assert not path.exists()  # and no empty database was made in its place
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.ping()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


def test_postgres_unreachable_raises_unavailable_without_the_password() -> None:
    url = f"postgresql://serendip:hunter2-secret@127.0.0.1:{_closed_port()}/nothing"
    with pytest.raises(StoreUnavailableError) as info:
        open_store(url + "?connect_timeout=2")
    assert "hunter2" not in str(info.value) and "serendip:***@127.0.0.1" in str(info.value)


def test_postgres_terminated_connections_raise_unavailable_then_recover(
    backend: str, store_url: str
) -> None:
    if backend != "postgres":
        pytest.skip("PostgreSQL server connections")
    app = f"kill_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(f"{store_url}&application_name={app}&pool_size=2")
    try:
        store.migrate()
        store.ping()
        with psycopg.connect(store_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (app,))
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            for _ in range(2):  # the first pooled connection used finds the server gone
                store.ping()
        deadline = time.monotonic() + 10
        while True:  # the pool replaces the dead connections
            try:
                store.ping()
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert store.count_events() == 0
    finally:
        store.close()


@pytest.mark.skipif(find_pg_bin() is None, reason="PostgreSQL server binaries not found")
def test_postgres_server_down_ping_raises_unavailable() -> None:
    server = PostgresServer()
    server.start()
    try:
        store = PostgresStore(server.url + "?pool_timeout=1")
        store.migrate()
        store.ping()
    finally:
        server.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            store.ping()  # an idle connection to a stopped server
        with pytest.raises(StoreUnavailableError):
            store.count_events()  # no connection can be made within the pool timeout
    finally:
        store.close()


def test_closing_the_store_leaves_a_checked_out_reader_to_its_thread(tmp_path) -> None:
    """A reader in use by another thread is not closed under it (that crashed the process):
    closing refuses new reads at once, and the reader is closed when it is put back."""
    import sqlite3

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        held = store._readers.get()  # a query in flight on another thread
        store.close()
        assert held.execute("SELECT 1").fetchone() == (1,)  # still usable by its holder
        with pytest.raises(StoreError, match="closed"):
            store.list_models()
        store._readers.put(held)
        with pytest.raises(sqlite3.ProgrammingError):  # closed once given back
            held.execute("SELECT 1")
        assert store._readers.open_connections == 0
    finally:
        store.close()
