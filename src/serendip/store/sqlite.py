"""SQLite back end: the embedded default, one file, durable on every acknowledged write.

WAL journal with ``synchronous=FULL`` (a commit returns only after the WAL is fsynced), foreign
keys on, ``secure_delete`` on (erased rows are overwritten, not just unlinked), a busy timeout
for other processes.  Writes share one connection behind a lock; reads check a connection out
of a small bounded pool and give it back, so reads run in parallel with a write while the number
of open files stays fixed however many threads come and go.  Writes in this process queue on the
lock rather than on SQLite's busy handler, whose back-off sleeps (up to 100 ms) would stall
waiting writers; one writer connection also keeps its page cache valid between commits.
``bench/store_ingest.py`` measured ingestion fsync-bound, and concurrent reads about 3x faster
than with one shared connection.

The file is created ``0600`` (and a directory the store creates ``0700``); the ``-wal`` and
``-shm`` files never get a permission bit the database file lacks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pandas as pd

from serendip.errors import ConfigError, DataError, StoreError
from serendip.store._common import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    IMPRESSION_COLUMNS,
    KEY_TOUCH_INTERVAL,
    PreparedImpression,
    check_count,
    check_event_types,
    check_id,
    check_key_name,
    check_limit,
    check_lock,
    check_model_name,
    check_role,
    check_timestamp,
    check_version,
    conversation_dict,
    duplicate_impression_ids,
    events_frame_from_rows,
    fields_frame,
    generation_dict,
    hash_key,
    impression_rows,
    is_lookup_id,
    key_infos,
    key_lookup,
    last_admin_key,
    model_version_row,
    new_api_key,
    prepare_conversation,
    prepare_events,
    prepare_generation,
    prepare_impressions,
    prepare_items,
    prepare_users,
    redact_url,
    too_many_keys,
    verify_key,
)
from serendip.store.base import (
    ApiKeyInfo,
    EventAck,
    EventRecord,
    Impression,
    ItemRecord,
    ModelVersion,
    Role,
    StoreUnavailableError,
    UserRecord,
)

__all__ = ["SQLiteStore", "SQLITE_MIGRATIONS"]

#: Ordered schema steps; version N is applied once, inside one transaction, by ``migrate``.
SQLITE_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE items (
                item_id TEXT PRIMARY KEY NOT NULL,
                fields TEXT NOT NULL DEFAULT '{}',
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE users (
                user_id TEXT PRIMARY KEY NOT NULL,
                fields TEXT NOT NULL DEFAULT '{}',
                updated_at REAL NOT NULL
            )""",
            # No foreign keys to items/users: events may arrive before the catalog does, and
            # deleting an item must not rewrite the append-only log.
            """CREATE TABLE events (
                event_id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                type TEXT NOT NULL,
                timestamp REAL NOT NULL,
                value REAL,
                idempotency_key TEXT UNIQUE,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX events_user ON events (user_id, event_id)",
            """CREATE TABLE impressions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id TEXT,
                item_ids TEXT NOT NULL,
                scores TEXT NOT NULL,
                propensities TEXT,
                preset TEXT NOT NULL,
                discovery REAL NOT NULL,
                context TEXT,
                timestamp REAL NOT NULL
            )""",
            """CREATE TABLE api_keys (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE,
                key_lookup TEXT NOT NULL,
                key_hash TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
                created_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX api_keys_lookup ON api_keys (key_lookup)",
        ),
    ),
    (
        2,
        (
            # Public impression ids, made by the engine at serve time; older rows keep NULL
            # (a UNIQUE index allows any number of NULLs).
            "ALTER TABLE impressions ADD COLUMN impression_id TEXT",
            "CREATE UNIQUE INDEX impressions_impression_id ON impressions (impression_id)",
        ),
    ),
    (
        3,
        (
            # Listable keys: when a key was revoked and last used.  Keys revoked before this
            # version get the time of the upgrade (they were revoked at or before it).
            "ALTER TABLE api_keys ADD COLUMN revoked_at REAL",
            "ALTER TABLE api_keys ADD COLUMN last_used_at REAL",
            "UPDATE api_keys SET revoked_at = (julianday('now') - 2440587.5) * 86400.0 "
            "WHERE revoked <> 0",
            # One counter bumped by every catalog change, and the ids each change deleted, so
            # that several service instances on one database notice changes cheaply.
            """CREATE TABLE catalog_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL
            )""",
            "INSERT INTO catalog_state (id, version) VALUES (1, 0)",
            """CREATE TABLE item_deletions (
                version INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                PRIMARY KEY (version, item_id)
            )""",
            # Erasing or exporting a person's data, and retention, find impressions by index.
            "CREATE INDEX impressions_user ON impressions (user_id)",
            "CREATE INDEX impressions_timestamp ON impressions (timestamp)",
        ),
    ),
    (
        4,
        (
            # Texts written by language models, keyed by model and a hash of the request,
            # so that nothing is generated twice.
            """CREATE TABLE generations (
                model TEXT NOT NULL,
                prompt_hash TEXT NOT NULL,
                text TEXT NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (model, prompt_hash)
            )""",
        ),
    ),
    (
        5,
        (
            # Conversations: the state a person's messages built and the messages themselves
            # (JSON), so a conversation can be resumed, exported and erased with the person.
            """CREATE TABLE conversations (
                conversation_id TEXT PRIMARY KEY,
                user_id TEXT,
                state TEXT NOT NULL,
                messages TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            "CREATE INDEX conversations_user ON conversations (user_id)",
        ),
    ),
    (
        6,
        (
            # Published model versions: each names its own subdirectory of the model
            # directory several instances share, and is written after that directory is
            # completely saved, so every instance can follow the newest one.
            """CREATE TABLE models (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                fitted_at REAL NOT NULL,
                created_at REAL NOT NULL,
                created_by TEXT NOT NULL,
                events INTEGER
            )""",
            # Named leases (one retrain at a time across processes): a holder that dies
            # stops renewing, and its lease lapses at expires_at.
            """CREATE TABLE locks (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at REAL NOT NULL
            )""",
        ),
    ),
    (
        7,
        (
            # A request of a bandit preset reads the person's latest lists (what they were
            # shown): found and ordered by this index, whatever their number.
            "CREATE INDEX impressions_user_time ON impressions (user_id, timestamp, id)",
        ),
    ),
)
SCHEMA_VERSION = SQLITE_MIGRATIONS[-1][0]
_CHUNK = 500  # placeholders per IN (...) query, well under SQLite's variable limit
# Primary result codes that mean "the file cannot be used right now" rather than a bug:
# BUSY, LOCKED, IOERR, READONLY (e.g. the file was moved or deleted), FULL, CANTOPEN.
_UNAVAILABLE_CODES = {5, 6, 8, 10, 13, 14}


def _chunks(values: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _UNAVAILABLE_CODES


def _private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each ``0700`` whatever the umask."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    if not d.is_dir():
        raise ConfigError(f"SQLite store directory {directory} is under a file: {d}")
    for m in reversed(missing):
        try:
            m.mkdir(mode=0o700)
        except FileExistsError:  # made by someone else meanwhile: leave its mode alone
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create directory {m} for the SQLite store: {exc}") from exc
        os.chmod(m, 0o700)


class _ReaderPool:
    """At most ``size`` read connections, checked out and back in (not one per thread)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, timeout: float,
                 name: str) -> None:
        self._connect = connect
        self.size = size
        self.timeout = timeout
        self._name = name
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._opening = 0
        self._cv = threading.Condition()
        self._closed = False

    @property
    def open_connections(self) -> int:
        with self._cv:
            return len(self._all)

    def get(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.timeout
        with self._cv:
            while True:
                if self._closed:
                    raise StoreError(f"store {self._name} is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._all) + self._opening < self.size:
                    self._opening += 1  # holds the slot while connecting
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailableError(
                        f"store {self._name}: all {self.size} read connections stayed busy for "
                        f"{self.timeout:g} s"
                    )
                self._cv.wait(left)
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
        finally:
            with self._cv:
                self._opening -= 1
                if conn is not None and not self._closed:
                    self._all.append(conn)
                else:
                    self._cv.notify()
        assert conn is not None
        if self._closed:
            conn.close()
            raise StoreError(f"store {self._name} is closed")
        return conn

    def put(self, conn: sqlite3.Connection) -> None:
        broken = False
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            broken = True
        with self._cv:
            if self._closed or broken:
                if conn in self._all:
                    self._all.remove(conn)
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            else:
                self._idle.append(conn)
            self._cv.notify()

    def close(self) -> None:
        """Close the idle connections now and refuse new ones; a connection checked out is
        closed when it is put back.  Closing it here, while another thread may be inside a
        query on it, is a use-after-free in the sqlite3 module (a background poll crashed the
        process so when its store was closed under it)."""
        with self._cv:
            self._closed = True
            for conn in self._idle:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
                if conn in self._all:
                    self._all.remove(conn)
            self._idle.clear()
            self._cv.notify_all()


class SQLiteStore:
    """A :class:`~serendip.store.base.Store` in one SQLite file.

    ``connections="split"`` (default): one write connection behind a lock, and at most
    ``readers`` read connections shared by all threads; an operation that finds every reader
    busy for ``pool_timeout`` seconds raises StoreUnavailableError.  ``"shared"``: one
    connection behind a lock for everything (kept for ``bench/store_ingest.py``).  A missing
    directory is created (``0700``); a new database file is created ``0600``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 10_000,
        connections: Literal["split", "shared"] = "split",
        readers: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        p = str(path)
        if p in ("", ":memory:") or p.startswith("file::memory:"):
            raise ConfigError(
                f"SQLite store needs a file path (in-memory databases are not durable), got {p!r}"
            )
        if connections not in ("split", "shared"):
            raise ConfigError(f"connections must be 'split' or 'shared', got {connections!r}")
        readers = check_count(readers, "readers", DEFAULT_POOL_SIZE)
        if isinstance(pool_timeout, bool) or not isinstance(pool_timeout, int | float) or not (
            0 < pool_timeout < float("inf")
        ):
            raise ConfigError(f"pool_timeout must be a positive number of seconds, got "
                              f"{pool_timeout!r}")
        self.path = Path(p).expanduser().resolve()
        self.url = f"sqlite://{self.path}"  # sqlite:// + "/abs/path"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._mode = connections
        # Serialises write transactions (and, in "shared" mode, every use of the connection).
        self._write_lock = threading.RLock()
        self._closed = False
        self._writer_conn: sqlite3.Connection | None = None
        self._readers = _ReaderPool(self._connect, readers, float(pool_timeout), self.display_url)
        _private_dirs(self.path.parent)
        self._create_file()
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        with self._write_lock:
            self._writer()  # fail early on an unreadable file; switches it to WAL

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    # connections -----------------------------------------------------------------------
    def _create_file(self) -> None:
        """Create the database file ``0600`` before SQLite opens it (SQLite would use 0644)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create SQLite store {self.display_url}: {exc}"
            ) from exc
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken bits away; make it exactly 0600
        finally:
            os.close(fd)

    def _restrict_sidecars(self) -> None:
        """Give ``-wal`` and ``-shm`` no permission bit the database file lacks."""
        try:
            allowed = os.stat(self.path).st_mode & 0o777
        except OSError:
            return
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            try:
                mode = side.stat().st_mode & 0o777
                if mode & ~allowed:
                    os.chmod(side, mode & allowed)
            except OSError:  # not there (yet), or not ours: nothing to tighten
                continue

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never create a new empty database if the file has gone away meanwhile.
        uri = f"file:{quote(str(self.path))}?mode=rw"
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # pooled: used by one thread at a time, any thread
                timeout=self._busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(
                f"cannot open SQLite store {self.display_url}: {exc}"
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"cannot switch {self.display_url} to WAL journal mode (got {mode!r})"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                cls = StoreUnavailableError if _unavailable(exc) else StoreError
                raise cls(f"cannot open SQLite store {self.display_url}: {exc}") from exc
            raise
        self._restrict_sidecars()
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.display_url} is closed")

    def _writer(self) -> sqlite3.Connection:
        """The write connection (call with the write lock held)."""
        self._check_open()
        if self._writer_conn is None:
            self._writer_conn = self._connect()
        return self._writer_conn

    def _unavailable_error(self, exc: sqlite3.Error) -> StoreUnavailableError:
        return StoreUnavailableError(f"SQLite store {self.display_url} is unavailable: {exc}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the file's write lock up front."""
        with self._write_lock:
            conn = self._writer()
            self._check_file()  # a write to a deleted file would be acknowledged, then lost
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if _unavailable(exc):
                    raise self._unavailable_error(exc) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._mode == "shared":
            with self._write_lock:
                shared = self._writer()
                try:
                    yield shared
                except sqlite3.Error as exc:
                    if _unavailable(exc):
                        raise self._unavailable_error(exc) from exc
                    raise
                finally:
                    if not self._closed and shared.in_transaction:  # a read snapshot left open
                        shared.execute("ROLLBACK")
            return
        self._check_open()
        conn = self._readers.get()
        try:
            yield conn
        except sqlite3.Error as exc:
            if _unavailable(exc):
                raise self._unavailable_error(exc) from exc
            raise
        finally:
            self._readers.put(conn)

    @property
    def open_connections(self) -> int:
        """Connections open now (the writer plus pooled readers): bounded by ``readers + 1``."""
        return self._readers.open_connections + (self._writer_conn is not None)

    def _check_file(self) -> None:
        """Raise StoreUnavailableError when the database file was removed or replaced."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailableError(
                f"SQLite store {self.display_url} is unavailable: {exc}"
            ) from exc
        if (st.st_dev, st.st_ino) != self._identity:
            raise StoreUnavailableError(
                f"SQLite store {self.display_url} is unavailable: the file was replaced"
            )

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the database file is still there and answers."""
        self._check_open()
        self._check_file()
        with self._read() as conn:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._write_lock:
            self._closed = True
            self._readers.close()
            if self._writer_conn is not None:
                try:
                    self._writer_conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
                self._writer_conn = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.display_url!r})"

    # schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._read() as conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if not exists:
                return 0
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.display_url} has schema version {current}, newer than this code "
                    f"understands ({SCHEMA_VERSION}); upgrade serendip"
                )
            for version, steps in SQLITE_MIGRATIONS:
                if version <= current:
                    continue
                for sql in steps:
                    conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                current = version
        return current

    # catalog ---------------------------------------------------------------------------
    def _upsert_fields(self, conn: sqlite3.Connection, table: str, id_col: str,
                       rows: dict[str, dict[str, str]]) -> int:
        """Insert or replace records; returns how many rows changed (identical ones do not)."""
        now = time.time()
        params = [(rid, json.dumps(f, ensure_ascii=False), now) for rid, f in rows.items()]
        # table/id_col are fixed identifiers from this module, never user input.
        sql = (
            f"INSERT INTO {table} ({id_col}, fields, updated_at) VALUES (?, ?, ?) "
            f"ON CONFLICT ({id_col}) DO UPDATE SET fields = excluded.fields, "
            f"updated_at = excluded.updated_at WHERE {table}.fields <> excluded.fields"
        )
        before = conn.total_changes
        conn.executemany(sql, params)
        return conn.total_changes - before

    @staticmethod
    def _bump_catalog(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE catalog_state SET version = version + 1 WHERE id = 1")
        return int(conn.execute("SELECT version FROM catalog_state WHERE id = 1").fetchone()[0])

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        rows = prepare_items(items)
        if not rows:
            return 0
        with self._write() as conn:
            if self._upsert_fields(conn, "items", "item_id", rows):
                self._bump_catalog(conn)
        return len(rows)

    def get_item(self, item_id: str) -> ItemRecord | None:
        if not is_lookup_id(item_id):
            return None
        with self._read() as conn:
            row = conn.execute("SELECT fields FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return None if row is None else ItemRecord(item_id, json.loads(row[0]))

    def delete_items(self, item_ids: Sequence[str]) -> int:
        if isinstance(item_ids, str):
            raise DataError(f"item_ids must be a sequence of ids, got the string {item_ids!r}")
        ids = list(dict.fromkeys(i for i in item_ids if is_lookup_id(i)))
        if not ids:
            return 0
        with self._write() as conn:
            found: list[str] = []
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                found += [r[0] for r in conn.execute(
                    f"SELECT item_id FROM items WHERE item_id IN ({marks})", tuple(chunk))]
            if not found:
                return 0
            conn.executemany("DELETE FROM items WHERE item_id = ?", [(i,) for i in found])
            version = self._bump_catalog(conn)
            conn.executemany("INSERT INTO item_deletions (version, item_id) VALUES (?, ?)",
                             [(version, i) for i in found])
        return len(found)

    def catalog_version(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT version FROM catalog_state WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def deleted_items_since(self, version: int) -> list[str]:
        version = check_version(version)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT d.item_id FROM item_deletions d WHERE d.version > ? "
                "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = d.item_id) "
                "ORDER BY d.item_id",
                (version,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def items_frame(self) -> pd.DataFrame:
        with self._read() as conn:
            rows = conn.execute("SELECT item_id, fields FROM items ORDER BY item_id").fetchall()
        return fields_frame("item_id", rows)

    def count_items(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    # model versions and locks ----------------------------------------------------------
    def publish_model(self, name: str, fitted_at: float, created_by: str,
                      events: int | None = None) -> ModelVersion:
        name = check_model_name(name)
        fitted = check_timestamp(fitted_at, "fitted_at")
        who = check_id(created_by, "created_by")
        if events is not None and (isinstance(events, bool) or not isinstance(events, int)
                                   or events < 0):
            raise DataError(f"events must be a non-negative integer, got {events!r}")
        now = time.time()
        with self._write() as conn:  # BEGIN IMMEDIATE: versions are assigned one at a time
            if conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                raise DataError(f"model name {name!r} is already published")
            version = int(conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()[0])
            conn.execute(
                "INSERT INTO models (version, name, fitted_at, created_at, created_by, events) "
                "VALUES (?, ?, ?, ?, ?, ?)", (version, name, fitted, now, who, events))
        return ModelVersion(version, name, fitted, now, who, events)

    def latest_model(self) -> ModelVersion | None:
        found = self.list_models(1)
        return found[0] if found else None

    def list_models(self, limit: int | None = None) -> list[ModelVersion]:
        if limit is not None:
            check_limit(limit)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT version, name, fitted_at, created_at, created_by, events FROM models "
                "ORDER BY version DESC LIMIT ?", (-1 if limit is None else limit,)).fetchall()
        return [model_version_row(r) for r in rows]

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        name, holder, ttl = check_lock(name, holder, ttl)
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM locks WHERE name = ? AND expires_at <= ?", (name, now))
            conn.execute(
                "INSERT INTO locks (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE locks.holder = excluded.holder", (name, holder, now + ttl))
            row = conn.execute("SELECT holder FROM locks WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] == holder

    def renew_lock(self, name: str, holder: str, ttl: float) -> bool:
        name, holder, ttl = check_lock(name, holder, ttl)
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND holder = ? "
                "AND expires_at > ?", (now + ttl, name, holder, now))
            return cur.rowcount > 0

    def release_lock(self, name: str, holder: str) -> bool:
        name, holder, _ = check_lock(name, holder)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM locks WHERE name = ? AND holder = ? "
                               "AND expires_at > ?", (name, holder, time.time()))
            return cur.rowcount > 0

    # users -----------------------------------------------------------------------------
    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        rows = prepare_users(users)
        if not rows:
            return 0
        with self._write() as conn:
            self._upsert_fields(conn, "users", "user_id", rows)
        return len(rows)

    def get_user(self, user_id: str) -> UserRecord | None:
        if not is_lookup_id(user_id):
            return None
        with self._read() as conn:
            row = conn.execute("SELECT fields FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else UserRecord(user_id, json.loads(row[0]))

    def users_frame(self) -> pd.DataFrame:
        with self._read() as conn:
            rows = conn.execute("SELECT user_id, fields FROM users ORDER BY user_id").fetchall()
        return fields_frame("user_id", rows)

    def count_users(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    # events ----------------------------------------------------------------------------
    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        prepared = prepare_events(events)
        if not prepared:
            return []
        keys = list(dict.fromkeys(e.idempotency_key for e in prepared if e.idempotency_key))
        now = time.time()
        with self._write() as conn:
            known: dict[str, int] = {}
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                known.update(
                    conn.execute(
                        "SELECT idempotency_key, event_id FROM events "
                        f"WHERE idempotency_key IN ({marks})",
                        tuple(chunk),
                    ).fetchall()
                )
            # Decide per event: new row, or a duplicate of a stored/earlier-in-batch event.
            fresh: list[int] = []
            pending: dict[str, int] = {}  # key -> position in `fresh`
            plan: list[tuple[bool, int | str]] = []  # (duplicate, fresh index or key)
            for ev in prepared:
                k = ev.idempotency_key
                if k is not None and k in known:
                    plan.append((True, k))
                elif k is not None and k in pending:
                    plan.append((True, pending[k]))
                else:
                    if k is not None:
                        pending[k] = len(fresh)
                    plan.append((False, len(fresh)))
                    fresh.append(len(plan) - 1)
            rows = [
                (e.user_id, e.item_id, e.type, e.timestamp, e.value, e.idempotency_key, now)
                for e in (prepared[i] for i in fresh)
            ]
            conn.executemany(
                "INSERT INTO events (user_id, item_id, type, timestamp, value, "
                "idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            # Inside one write transaction AUTOINCREMENT hands out consecutive ids, so the
            # batch occupies last-n+1 .. last.
            last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            first = last - len(rows) + 1
        acks: list[EventAck] = []
        for duplicate, ref in plan:
            if isinstance(ref, str):
                acks.append(EventAck(known[ref], True))
            else:
                acks.append(EventAck(first + ref, duplicate))
        return acks

    def events_frame(self, types: Sequence[str] | None = None) -> pd.DataFrame:
        sql = "SELECT user_id, item_id, timestamp, type, value FROM events"
        params: tuple[str, ...] = ()
        if types is not None:
            types = check_event_types(types)
            sql += f" WHERE type IN ({','.join('?' * len(types))})"
            params = tuple(types)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY event_id", params).fetchall()
        return events_frame_from_rows(rows)

    def user_events(self, user_id: str, limit: int | None = None) -> pd.DataFrame:
        """The user's events, oldest first; with ``limit``, only the most recent ``limit``."""
        if not is_lookup_id(user_id):
            return events_frame_from_rows([])
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise DataError(f"limit must be a non-negative integer or None, got {limit!r}")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT user_id, item_id, timestamp, type, value FROM events "
                "WHERE user_id = ? ORDER BY event_id DESC LIMIT ?",
                (user_id, -1 if limit is None else limit),
            ).fetchall()
        rows.reverse()
        return events_frame_from_rows(rows)

    def recent_item_events(self, user_id: str, limit: int
                           ) -> list[tuple[str, str, float | None]]:
        check_limit(limit)
        if not is_lookup_id(user_id):
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT item_id, type, value FROM events WHERE user_id = ? ORDER BY event_id DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        return [(str(i), str(t), None if v is None or v != v else float(v))
                for i, t, v in reversed(rows)]

    def count_events(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def top_users(self, limit: int) -> list[str]:
        check_limit(limit)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id "
                "ORDER BY n DESC, user_id LIMIT ?", (limit,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    # impressions -----------------------------------------------------------------------
    def log_impression(self, impression: Impression) -> int:
        return self._insert_impressions(prepare_impressions([impression], single=True))[0]

    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        return len(self._insert_impressions(prepare_impressions(impressions)))

    def _insert_impressions(self, prepared: list[PreparedImpression]) -> list[int]:
        """One transaction; returns the new row ids in batch order."""
        if not prepared:
            return []
        rows = impression_rows(prepared, _json)
        keys = [p.impression_id for p in prepared if p.impression_id is not None]
        try:
            with self._write() as conn:
                taken: list[str] = []
                for chunk in _chunks(keys):
                    marks = ",".join("?" * len(chunk))
                    taken += [
                        r[0]
                        for r in conn.execute(
                            f"SELECT impression_id FROM impressions WHERE impression_id IN ({marks})",
                            tuple(chunk),
                        )
                    ]
                if taken:
                    raise duplicate_impression_ids(taken)
                conn.executemany(
                    "INSERT INTO impressions (user_id, item_ids, scores, propensities, preset, "
                    "discovery, context, timestamp, impression_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                # one write transaction: AUTOINCREMENT hands out consecutive ids
                last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        except sqlite3.IntegrityError as exc:  # pragma: no cover - the check above sees all
            raise DataError(f"impressions not stored: {exc}") from exc
        return list(range(last - len(rows) + 1, last + 1))

    def recent_impressions(self, user_id: str, limit: int
                           ) -> list[tuple[str | None, float, list[str]]]:
        check_limit(limit)
        if not is_lookup_id(user_id):
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT impression_id, timestamp, item_ids FROM impressions WHERE user_id = ? "
                "ORDER BY timestamp DESC, id DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        return [(r[0], float(r[1]), [str(i) for i in json.loads(r[2])]) for r in reversed(rows)]

    def count_impressions(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM impressions").fetchone()[0])

    def impressions_frame(self) -> pd.DataFrame:
        """Logged impressions, oldest first, with list columns decoded from JSON."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, user_id, item_ids, scores, propensities, preset, discovery, context, "
                "timestamp, impression_id FROM impressions ORDER BY id"
            ).fetchall()
        decoded = [
            (i, u, json.loads(a), json.loads(s), None if p is None else json.loads(p), pr, d, c, t,
             k)
            for i, u, a, s, p, pr, d, c, t, k in rows
        ]
        return pd.DataFrame.from_records(decoded, columns=IMPRESSION_COLUMNS)

    # API keys --------------------------------------------------------------------------
    def create_api_key(self, name: str, role: Role, max_active: int | None = None) -> str:
        name = check_key_name(name)
        role = check_role(role)
        key = new_api_key()
        with self._write() as conn:
            if max_active is not None:  # counted inside the write transaction: no race
                active = conn.execute("SELECT COUNT(*) FROM api_keys WHERE role = ? AND "
                                      "revoked = 0", (role,)).fetchone()[0]
                if active >= max_active:
                    raise ConfigError(too_many_keys(role, int(active), max_active))
            row = conn.execute("SELECT revoked FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is not None:
                state = " (revoked; names are not reused)" if row[0] else ""
                raise ConfigError(f"an API key named {name!r} already exists{state}")
            conn.execute(
                "INSERT INTO api_keys (name, key_lookup, key_hash, role, created_at, revoked) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                (name, key_lookup(key), hash_key(key), role, time.time()),
            )
        return key

    def check_api_key(self, key: str) -> Role | None:
        if not isinstance(key, str) or not key:
            return None
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, key_hash, role, last_used_at FROM api_keys "
                "WHERE key_lookup = ? AND revoked = 0",
                (key_lookup(key),),
            ).fetchall()
        for key_id, stored, role, last_used in rows:
            if verify_key(key, stored):
                self._touch_key(int(key_id), last_used)
                return check_role(role)
        return None

    def _touch_key(self, key_id: int, last_used: float | None) -> None:
        now = time.time()
        if last_used is not None and now - float(last_used) < KEY_TOUCH_INTERVAL:
            return
        try:
            with self._write() as conn:
                conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))
        except StoreUnavailableError:  # the key is still good; the timestamp can wait
            pass

    def revoke_api_key(self, name: str, keep_last_admin: bool = False) -> bool:
        if not is_lookup_id(name):
            return False
        with self._write() as conn:  # BEGIN IMMEDIATE: the check and the update are one step
            if keep_last_admin:
                row = conn.execute("SELECT role FROM api_keys WHERE name = ? AND revoked = 0",
                                   (name,)).fetchone()
                others = conn.execute("SELECT COUNT(*) FROM api_keys WHERE role = 'admin' AND "
                                      "revoked = 0 AND name != ?", (name,)).fetchone()[0]
                if row is not None and row[0] == "admin" and others == 0:
                    raise ConfigError(last_admin_key(name))
            cur = conn.execute(
                "UPDATE api_keys SET revoked = 1, revoked_at = ? WHERE name = ? AND revoked = 0",
                (time.time(), name),
            )
            return cur.rowcount > 0

    def list_api_keys(self) -> list[ApiKeyInfo]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, role, created_at, revoked_at, last_used_at, revoked FROM api_keys "
                "ORDER BY id"
            ).fetchall()
        return key_infos(rows)

    def count_api_keys(self, role: Role | None = None, active_only: bool = True) -> int:
        sql = "SELECT COUNT(*) FROM api_keys WHERE 1 = 1"
        params: list[str] = []
        if role is not None:
            sql += " AND role = ?"
            params.append(check_role(role))
        if active_only:
            sql += " AND revoked = 0"
        with self._read() as conn:
            return int(conn.execute(sql, params).fetchone()[0])

    def api_keys_frame(self) -> pd.DataFrame:
        """Key names, roles and state (never hashes)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, role, created_at, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["name", "role", "created_at", "revoked"])
        return frame.astype({"revoked": bool})

    # a person's data -------------------------------------------------------------------
    def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete everything stored about ``user_id`` in one transaction (see the protocol).

        Deleted rows are overwritten in the file (``secure_delete``) and the WAL is then
        checkpointed and truncated, so the erased text does not linger on disk (unless another
        process holds an old snapshot open at that moment; the next checkpoint clears it).
        """
        counts = {"events": 0, "impressions": 0, "users": 0, "conversations": 0}
        if not is_lookup_id(user_id):
            return counts
        with self._write() as conn:
            for table in ("events", "impressions", "users", "conversations"):
                # table is one of the fixed names above
                cur = conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
                counts[table] = max(cur.rowcount, 0)
        if any(counts.values()):
            self._checkpoint()
        return counts

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (best effort)."""
        with self._write_lock:
            try:
                self._writer().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error:  # busy with another process's reader: a later one will do
                pass

    def export_user(self, user_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": user_id, "user": None, "events": [], "impressions": [],
                               "conversations": []}
        if not is_lookup_id(user_id):
            return out
        with self._read() as conn:
            conn.execute("BEGIN")  # one snapshot for all three reads (put() ends it)
            user = conn.execute(
                "SELECT fields, updated_at FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            events = conn.execute(
                "SELECT event_id, item_id, type, timestamp, value, idempotency_key, created_at "
                "FROM events WHERE user_id = ? ORDER BY event_id",
                (user_id,),
            ).fetchall()
            imps = conn.execute(
                "SELECT id, impression_id, item_ids, scores, propensities, preset, discovery, "
                "context, timestamp FROM impressions WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall()
            convs = conn.execute(
                "SELECT conversation_id, state, messages, created_at, updated_at "
                "FROM conversations WHERE user_id = ? ORDER BY created_at",
                (user_id,),
            ).fetchall()
            conn.execute("COMMIT")
        if user is not None:
            out["user"] = {"fields": json.loads(user[0]), "updated_at": float(user[1])}
        out["events"] = [
            {"event_id": int(e), "item_id": i, "type": t, "timestamp": float(ts),
             "value": None if v is None else float(v), "idempotency_key": k,
             "created_at": float(c)}
            for e, i, t, ts, v, k, c in events
        ]
        out["impressions"] = [
            {"id": int(r), "impression_id": k, "item_ids": json.loads(a),
             "scores": json.loads(sc), "propensities": None if p is None else json.loads(p),
             "preset": pr, "discovery": float(d), "context": c, "timestamp": float(ts)}
            for r, k, a, sc, p, pr, d, c, ts in imps
        ]
        out["conversations"] = [conversation_dict(c, user_id, st, m, t0, t1)
                                for c, st, m, t0, t1 in convs]
        return out

    def purge_before(self, timestamp: float) -> dict[str, int]:
        cutoff = check_timestamp(timestamp, "purge_before timestamp")
        with self._write() as conn:
            cur = conn.execute("DELETE FROM impressions WHERE timestamp < ?", (cutoff,))
            n = max(cur.rowcount, 0)
        if n:
            self._checkpoint()
        return {"impressions": n}

    # conversations ---------------------------------------------------------------------
    def save_conversation(self, conversation_id: str, user_id: str | None,
                          state: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        c = prepare_conversation(conversation_id, user_id, state, messages)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO conversations (conversation_id, user_id, state, messages, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (conversation_id) DO UPDATE SET user_id = excluded.user_id, "
                "state = excluded.state, messages = excluded.messages, "
                "updated_at = excluded.updated_at",
                (c.conversation_id, c.user_id, c.state, c.messages, now, now),
            )

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        if not is_lookup_id(conversation_id):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT user_id, state, messages, created_at, updated_at FROM conversations "
                "WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
        if row is None:
            return None
        u, st, m, t0, t1 = row
        return conversation_dict(conversation_id, u, st, m, t0, t1)

    # generated texts -------------------------------------------------------------------
    def get_generation(self, model: str, prompt_hash: str) -> dict[str, Any] | None:
        if not (is_lookup_id(model) and is_lookup_id(prompt_hash)):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT text, prompt_tokens, completion_tokens, created_at FROM generations "
                "WHERE model = ? AND prompt_hash = ?", (model, prompt_hash)
            ).fetchone()
        return None if row is None else generation_dict(model, prompt_hash, row)

    def put_generation(self, model: str, prompt_hash: str, text: str, prompt_tokens: int,
                       completion_tokens: int) -> None:
        g = prepare_generation(model, prompt_hash, text, prompt_tokens, completion_tokens)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO generations (model, prompt_hash, text, prompt_tokens, "
                "completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (model, prompt_hash) DO NOTHING",
                (g.model, g.prompt_hash, g.text, g.prompt_tokens, g.completion_tokens,
                 time.time()),
            )
