"""PostgreSQL back end (psycopg 3): the same schema and semantics as the SQLite store.

Each thread gets its own autocommit connection and wraps every write in one explicit
transaction, so a method returns only after its commit (``synchronous_commit`` as configured on
the server, ``on`` by default).  Upserts and idempotency use ``ON CONFLICT``; every value travels
as a query parameter.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

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
from serendip.store.base import EventAck, EventRecord, Impression, ItemRecord, Role, UserRecord

__all__ = ["PostgresStore", "POSTGRES_MIGRATIONS"]

#: Ordered schema steps; version N is applied once, inside one transaction, by ``migrate``.
POSTGRES_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE items (
                item_id TEXT PRIMARY KEY,
                fields JSONB NOT NULL DEFAULT '{}'::jsonb,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE users (
                user_id TEXT PRIMARY KEY,
                fields JSONB NOT NULL DEFAULT '{}'::jsonb,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            # No foreign keys to items/users: events may arrive before the catalog does.
            """CREATE TABLE events (
                event_id BIGSERIAL PRIMARY KEY,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                type TEXT NOT NULL,
                timestamp DOUBLE PRECISION NOT NULL,
                value DOUBLE PRECISION,
                idempotency_key TEXT UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX events_user ON events (user_id, event_id)",
            """CREATE TABLE impressions (
                id BIGSERIAL PRIMARY KEY,
                user_id TEXT,
                item_ids JSONB NOT NULL,
                scores JSONB NOT NULL,
                propensities JSONB,
                preset TEXT NOT NULL,
                discovery DOUBLE PRECISION NOT NULL,
                context TEXT,
                timestamp DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE api_keys (
                id BIGSERIAL PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                key_lookup TEXT NOT NULL,
                key_hash TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
                created_at DOUBLE PRECISION NOT NULL,
                revoked BOOLEAN NOT NULL DEFAULT FALSE
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
SCHEMA_VERSION = POSTGRES_MIGRATIONS[-1][0]
# Any fixed number: migrations of one database take this advisory lock, so two processes
# starting at once do not both create the tables.
_MIGRATION_LOCK = 0x5E4E_D1F0


class PostgresStore:
    """A :class:`~serendip.store.base.Store` in a PostgreSQL database (one connection per thread)."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"PostgreSQL URL must start with postgresql://, got {url!r}")
        self.url = url
        self._connect_timeout = int(connect_timeout)
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._conn()  # fail early on a wrong URL or an unreachable server

    # connections -----------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"store {self._safe_url()} is closed")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=self._connect_timeout
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self._safe_url()}: {exc}") from exc
        self._local.conn = conn
        with self._all_lock:
            self._all = [c for c in self._all if not c.closed]
            self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[Any]]:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._conn().cursor() as cur:
            yield cur

    def _safe_url(self) -> str:
        """The URL with any password hidden, for messages."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return "<postgres url>"
        info.pop("password", None)
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})

    def close(self) -> None:
        with self._all_lock:
            self._closed = True
            for conn in self._all:
                try:
                    conn.close()
                except psycopg.Error:  # pragma: no cover - closing is best effort
                    pass
            self._all.clear()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._safe_url()!r})"

    # schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._read() as cur:
            if cur.execute("SELECT to_regclass('schema_version')").fetchone() in (None, (None,)):
                return 0
            row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    def migrate(self) -> int:
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0] or 0) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._safe_url()} has schema version {current}, newer than this code "
                    f"understands ({SCHEMA_VERSION}); upgrade serendip"
                )
            for version, steps in POSTGRES_MIGRATIONS:
                if version <= current:
                    continue
                for sql in steps:
                    cur.execute(sql)  # type: ignore[arg-type]  # fixed DDL from this module
                cur.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                    (version, time.time()),
                )
                current = version
        return current

    # catalog ---------------------------------------------------------------------------
    def _upsert_fields(self, table: str, id_col: str, rows: dict[str, dict[str, str]]) -> int:
        if not rows:
            return 0
        now = time.time()
        # One statement over one JSON object {id: fields} (ids are unique after prepare_*):
        # several times faster than a statement per row, or than arrays of jsonb, on
        # catalog loads.
        sql = (
            f"INSERT INTO {table} ({id_col}, fields, updated_at) "
            "SELECT key, value, %s FROM jsonb_each(%s::jsonb) "
            f"ON CONFLICT ({id_col}) DO UPDATE SET fields = EXCLUDED.fields, "
            "updated_at = EXCLUDED.updated_at"
        )
        with self._write() as cur:
            cur.execute(
                sql,  # type: ignore[arg-type]  # table/id_col are fixed identifiers
                (now, json.dumps(rows, ensure_ascii=False)),
            )
        return len(rows)

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        return self._upsert_fields("items", "item_id", prepare_items(items))

    def get_item(self, item_id: str) -> ItemRecord | None:
        if not is_lookup_id(item_id):
            return None
        with self._read() as cur:
            row = cur.execute("SELECT fields FROM items WHERE item_id = %s", (item_id,)).fetchone()
        return None if row is None else ItemRecord(item_id, dict(row[0]))

    def delete_items(self, item_ids: Sequence[str]) -> int:
        if isinstance(item_ids, str):
            raise DataError(f"item_ids must be a sequence of ids, got the string {item_ids!r}")
        ids = [i for i in item_ids if is_lookup_id(i)]
        if not ids:
            return 0
        with self._write() as cur:
            cur.execute("DELETE FROM items WHERE item_id = ANY(%s)", (ids,))
            return max(cur.rowcount, 0)

    def items_frame(self) -> pd.DataFrame:
        with self._read() as cur:
            rows = cur.execute(
                'SELECT item_id, fields::text FROM items ORDER BY item_id COLLATE "C"'
            ).fetchall()
        return fields_frame("item_id", rows)

    def count_items(self) -> int:
        return self._count("items")

    def _count(self, table: str) -> int:
        with self._read() as cur:
            row = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # type: ignore[arg-type]
        return int(row[0]) if row else 0

    # users -----------------------------------------------------------------------------
    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        return self._upsert_fields("users", "user_id", prepare_users(users))

    def get_user(self, user_id: str) -> UserRecord | None:
        if not is_lookup_id(user_id):
            return None
        with self._read() as cur:
            row = cur.execute("SELECT fields FROM users WHERE user_id = %s", (user_id,)).fetchone()
        return None if row is None else UserRecord(user_id, dict(row[0]))

    def users_frame(self) -> pd.DataFrame:
        with self._read() as cur:
            rows = cur.execute(
                'SELECT user_id, fields::text FROM users ORDER BY user_id COLLATE "C"'
            ).fetchall()
        return fields_frame("user_id", rows)

    def count_users(self) -> int:
        return self._count("users")

    # events ----------------------------------------------------------------------------
    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        prepared = prepare_events(events)
        if not prepared:
            return []
        keys = list(dict.fromkeys(e.idempotency_key for e in prepared if e.idempotency_key))
        now = time.time()
        with self._write() as cur:
            known: dict[str, int] = {}
            if keys:
                cur.execute(
                    "SELECT idempotency_key, event_id FROM events "
                    "WHERE idempotency_key = ANY(%s)",
                    (keys,),
                )
                known.update(cur.fetchall())
            fresh: list[int] = []  # positions in `prepared` that get a new row
            pending: dict[str, int] = {}  # key -> index into `fresh`
            plan: list[tuple[bool, int | str]] = []  # (duplicate, fresh index or stored key)
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
            ids: list[int | None] = []
            if rows:
                cur.executemany(
                    "INSERT INTO events (user_id, item_id, type, timestamp, value, "
                    "idempotency_key, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING event_id",
                    rows,
                    returning=True,
                )
                while True:  # one result set per row; empty where the key already existed
                    got = cur.fetchone()
                    ids.append(None if got is None else int(got[0]))
                    if not cur.nextset():
                        break
            # A key stored by a concurrent transaction after our first look: that one wins.
            raced = [prepared[fresh[j]].idempotency_key for j, i in enumerate(ids) if i is None]
            if raced:
                cur.execute(
                    "SELECT idempotency_key, event_id FROM events "
                    "WHERE idempotency_key = ANY(%s)",
                    (raced,),
                )
                known.update(cur.fetchall())
        acks: list[EventAck] = []
        for duplicate, ref in plan:
            if isinstance(ref, str):
                acks.append(EventAck(known[ref], True))
                continue
            new_id = ids[ref]
            if new_id is None:
                key = prepared[fresh[ref]].idempotency_key
                assert key is not None  # only keyed rows can conflict
                acks.append(EventAck(known[key], True))
            else:
                acks.append(EventAck(new_id, duplicate))
        return acks

    def events_frame(self, types: Sequence[str] | None = None) -> pd.DataFrame:
        with self._read() as cur:
            if types is None:
                cur.execute(
                    "SELECT user_id, item_id, timestamp, type, value FROM events "
                    "ORDER BY event_id"
                )
            else:
                cur.execute(
                    "SELECT user_id, item_id, timestamp, type, value FROM events "
                    "WHERE type = ANY(%s) ORDER BY event_id",
                    (check_event_types(types),),
                )
            rows = cur.fetchall()
        return events_frame_from_rows(rows)

    def user_events(self, user_id: str, limit: int | None = None) -> pd.DataFrame:
        """The user's events, oldest first; with ``limit``, only the most recent ``limit``."""
        if not is_lookup_id(user_id):
            return events_frame_from_rows([])
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise DataError(f"limit must be a non-negative integer or None, got {limit!r}")
        with self._read() as cur:
            rows = cur.execute(
                "SELECT user_id, item_id, timestamp, type, value FROM events "
                "WHERE user_id = %s ORDER BY event_id DESC LIMIT %s",
                (user_id, limit),
            ).fetchall()
        rows.reverse()
        return events_frame_from_rows(rows)

    def recent_item_events(self, user_id: str, limit: int
                           ) -> list[tuple[str, str, float | None]]:
        check_limit(limit)
        if not is_lookup_id(user_id):
            return []
        with self._read() as cur:
            rows = cur.execute(
                "SELECT item_id, type, value FROM events WHERE user_id = %s "
                "ORDER BY event_id DESC LIMIT %s",
                (user_id, limit),
            ).fetchall()
        return [(str(i), str(t), None if v is None or v != v else float(v))
                for i, t, v in reversed(rows)]

    def count_events(self) -> int:
        return self._count("events")

    def top_users(self, limit: int) -> list[str]:
        check_limit(limit)
        with self._read() as cur:
            rows = cur.execute(
                "SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id "
                "ORDER BY n DESC, user_id COLLATE \"C\" LIMIT %s", (limit,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    # impressions -----------------------------------------------------------------------
    def log_impression(self, impression: Impression) -> int:
        row_id = self._insert_impressions(prepare_impressions([impression], single=True))
        assert row_id is not None
        return row_id

    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        prepared = prepare_impressions(impressions)
        self._insert_impressions(prepared)
        return len(prepared)

    def _insert_impressions(self, prepared: list[PreparedImpression]) -> int | None:
        """One transaction; returns the new row id when the batch holds one impression."""
        if not prepared:
            return None
        rows = impression_rows(prepared, Jsonb)
        keys = [p.impression_id for p in prepared if p.impression_id is not None]
        sql = (
            "INSERT INTO impressions (user_id, item_ids, scores, propensities, preset, "
            "discovery, context, timestamp, impression_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        row_id: int | None = None
        try:
            with self._write() as cur:
                if keys:
                    cur.execute(
                        "SELECT impression_id FROM impressions WHERE impression_id = ANY(%s)",
                        (keys,),
                    )
                    taken = [r[0] for r in cur.fetchall()]
                    if taken:
                        raise duplicate_impression_ids(taken)
                if len(rows) == 1:
                    row = cur.execute(sql + " RETURNING id", rows[0]).fetchone()
                    assert row is not None
                    row_id = int(row[0])
                else:
                    cur.executemany(sql, rows)
        except psycopg.errors.UniqueViolation as exc:
            # stored by a concurrent transaction after the check above
            detail = exc.diag.message_detail or str(exc)
            raise DataError(
                f"impression_id already stored ({detail}); nothing of the batch was written"
            ) from exc
        return row_id

    def count_impressions(self) -> int:
        return self._count("impressions")

    def impressions_frame(self) -> pd.DataFrame:
        """Logged impressions, oldest first, with list columns decoded from JSON."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT id, user_id, item_ids, scores, propensities, preset, discovery, context, "
                "timestamp, impression_id FROM impressions ORDER BY id"
            ).fetchall()
        return pd.DataFrame.from_records(rows, columns=IMPRESSION_COLUMNS)

    # API keys --------------------------------------------------------------------------
    def create_api_key(self, name: str, role: Role) -> str:
        name = check_key_name(name)
        role = check_role(role)
        key = new_api_key()
        with self._write() as cur:
            row = cur.execute(
                "INSERT INTO api_keys (name, key_lookup, key_hash, role, created_at, revoked) "
                "VALUES (%s, %s, %s, %s, %s, FALSE) ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, key_lookup(key), hash_key(key), role, time.time()),
            ).fetchone()
            if row is None:
                raise ConfigError(f"an API key named {name!r} already exists")
        return key

    def check_api_key(self, key: str) -> Role | None:
        if not isinstance(key, str) or not key or "\x00" in key:
            return None
        with self._read() as cur:
            rows = cur.execute(
                "SELECT key_hash, role FROM api_keys WHERE key_lookup = %s AND NOT revoked",
                (key_lookup(key),),
            ).fetchall()
        for stored, role in rows:
            if verify_key(key, stored):
                return check_role(role)
        return None

    def revoke_api_key(self, name: str) -> bool:
        if not is_lookup_id(name):
            return False
        with self._write() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked = TRUE WHERE name = %s AND NOT revoked", (name,)
            )
            return cur.rowcount > 0

    def api_keys_frame(self) -> pd.DataFrame:
        """Key names, roles and state (never hashes)."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT name, role, created_at, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["name", "role", "created_at", "revoked"])
        return frame.astype({"revoked": bool})
