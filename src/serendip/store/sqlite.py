"""SQLite back end: the embedded default, one file, durable on every acknowledged write.

WAL journal with ``synchronous=FULL`` (a commit returns only after the WAL is fsynced), foreign
keys on, a busy timeout for other processes.  Threads share one write connection behind a lock
and each get their own read connection ("split"), so reads run in parallel with a write.
Writes in this process queue on the lock rather than on SQLite's busy handler, whose back-off
sleeps (up to 100 ms) would stall waiting writers; one writer connection also keeps its page
cache valid between commits.  ``bench/store_ingest.py`` measured ingestion fsync-bound and
about equal in all three modes, and concurrent reads about 3x faster than with one shared
connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pandas as pd

from serendip.errors import ConfigError, DataError, StoreError
from serendip.store._common import (
    IMPRESSION_COLUMNS,
    PreparedImpression,
    check_event_types,
    check_key_name,
    check_limit,
    check_role,
    duplicate_impression_ids,
    events_frame_from_rows,
    fields_frame,
    hash_key,
    impression_rows,
    is_lookup_id,
    key_lookup,
    new_api_key,
    prepare_events,
    prepare_impressions,
    prepare_items,
    prepare_users,
    verify_key,
)
from serendip.store.base import (
    EventAck,
    EventRecord,
    Impression,
    ItemRecord,
    Role,
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
)
SCHEMA_VERSION = SQLITE_MIGRATIONS[-1][0]
_CHUNK = 500  # placeholders per IN (...) query, well under SQLite's variable limit


def _chunks(values: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


class SQLiteStore:
    """A :class:`~serendip.store.base.Store` in one SQLite file.

    ``connections="split"`` (default): one write connection behind a lock, and a read
    connection per thread.  ``"per_thread"``: each thread reads and writes on its own
    connection.  ``"shared"``: one connection behind a lock for everything.  The other two
    modes are kept for ``bench/store_ingest.py``, which measured the choice.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 10_000,
        connections: Literal["split", "per_thread", "shared"] = "split",
    ) -> None:
        p = str(path)
        if p in ("", ":memory:") or p.startswith("file::memory:"):
            raise ConfigError(
                f"SQLite store needs a file path (in-memory databases are not durable), got {p!r}"
            )
        if connections not in ("split", "per_thread", "shared"):
            raise ConfigError(
                f"connections must be 'split', 'per_thread' or 'shared', got {connections!r}"
            )
        self.path = Path(p).expanduser().resolve()
        self.url = f"sqlite://{self.path}"  # sqlite:// + "/abs/path"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._mode = connections
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # Serialises write transactions (and, in "shared" mode, every use of the connection).
        self._write_lock = threading.RLock()
        self._closed = False
        self._shared: sqlite3.Connection | None = None
        if not self.path.parent.is_dir():
            raise ConfigError(f"directory of SQLite store does not exist: {self.path.parent}")
        self._conn()  # fail early on an unreadable file

    # connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # close() may run in another thread
                timeout=self._busy_timeout_ms / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._mode == "shared":
            return self._writer()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _writer(self) -> sqlite3.Connection:
        if self._mode == "per_thread":
            return self._conn()
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._shared is None:
            self._shared = self._connect()
        return self._shared

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the file's write lock up front."""
        with self._write_lock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._mode == "shared":
            with self._write_lock:
                yield self._conn()
        else:
            yield self._conn()

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._write_lock, self._all_lock:
            self._closed = True
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            self._all.clear()
            self._shared = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

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
                    f"{self.url} has schema version {current}, newer than this code "
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
    def _upsert_fields(self, table: str, id_col: str, rows: dict[str, dict[str, str]]) -> int:
        now = time.time()
        params = [(rid, json.dumps(f, ensure_ascii=False), now) for rid, f in rows.items()]
        # table/id_col are fixed identifiers from this module, never user input.
        sql = (
            f"INSERT INTO {table} ({id_col}, fields, updated_at) VALUES (?, ?, ?) "
            f"ON CONFLICT ({id_col}) DO UPDATE SET fields = excluded.fields, "
            "updated_at = excluded.updated_at"
        )
        with self._write() as conn:
            conn.executemany(sql, params)
        return len(params)

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        return self._upsert_fields("items", "item_id", prepare_items(items))

    def get_item(self, item_id: str) -> ItemRecord | None:
        if not is_lookup_id(item_id):
            return None
        with self._read() as conn:
            row = conn.execute("SELECT fields FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return None if row is None else ItemRecord(item_id, json.loads(row[0]))

    def delete_items(self, item_ids: Sequence[str]) -> int:
        if isinstance(item_ids, str):
            raise DataError(f"item_ids must be a sequence of ids, got the string {item_ids!r}")
        ids = [(i,) for i in item_ids if is_lookup_id(i)]
        if not ids:
            return 0
        with self._write() as conn:
            cur = conn.executemany("DELETE FROM items WHERE item_id = ?", ids)
            return max(cur.rowcount, 0)

    def items_frame(self) -> pd.DataFrame:
        with self._read() as conn:
            rows = conn.execute("SELECT item_id, fields FROM items ORDER BY item_id").fetchall()
        return fields_frame("item_id", rows)

    def count_items(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    # users -----------------------------------------------------------------------------
    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        return self._upsert_fields("users", "user_id", prepare_users(users))

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
    def create_api_key(self, name: str, role: Role) -> str:
        name = check_key_name(name)
        role = check_role(role)
        key = new_api_key()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"an API key named {name!r} already exists")
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
                "SELECT key_hash, role FROM api_keys WHERE key_lookup = ? AND revoked = 0",
                (key_lookup(key),),
            ).fetchall()
        for stored, role in rows:
            if verify_key(key, stored):
                return check_role(role)
        return None

    def revoke_api_key(self, name: str) -> bool:
        if not is_lookup_id(name):
            return False
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked = 1 WHERE name = ? AND revoked = 0", (name,)
            )
            return cur.rowcount > 0

    def api_keys_frame(self) -> pd.DataFrame:
        """Key names, roles and state (never hashes)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, role, created_at, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["name", "role", "created_at", "revoked"])
        return frame.astype({"revoked": bool})

