"""PostgreSQL back end (psycopg 3): the same schema and semantics as the SQLite store.

Connections come from a bounded pool (``psycopg_pool``): an operation checks one out, runs,
and gives it back, so a store holds at most ``pool_size`` server backends however many threads
come and go.  Connections are in autocommit mode and every write runs in one explicit
transaction, so a method returns only after its commit (``synchronous_commit`` as configured on
the server, ``on`` by default).  Upserts and idempotency use ``ON CONFLICT``; every value travels
as a query parameter.  When the server cannot be reached, or no connection becomes free within
``pool_timeout`` seconds, operations raise StoreUnavailableError.
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
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from serendip.errors import ConfigError, DataError, StoreError
from serendip.store._common import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    IMPRESSION_COLUMNS,
    KEY_CREATION_LOCK,
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
    scrub_secret,
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

__all__ = ["PostgresStore", "POSTGRES_MIGRATIONS", "POOL_OPTIONS"]

#: Query options of a store URL read by the store itself (and removed before connecting).
POOL_OPTIONS = ("pool_size", "pool_timeout")

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
    (
        3,
        (
            # Listable keys: when a key was revoked and last used.  Keys revoked before this
            # version get the time of the upgrade (they were revoked at or before it).
            "ALTER TABLE api_keys ADD COLUMN revoked_at DOUBLE PRECISION",
            "ALTER TABLE api_keys ADD COLUMN last_used_at DOUBLE PRECISION",
            "UPDATE api_keys SET revoked_at = extract(epoch FROM now()) WHERE revoked",
            # One counter bumped by every catalog change, and the ids each change deleted, so
            # that several service instances on one database notice changes cheaply.
            """CREATE TABLE catalog_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version BIGINT NOT NULL
            )""",
            "INSERT INTO catalog_state (id, version) VALUES (1, 0)",
            """CREATE TABLE item_deletions (
                version BIGINT NOT NULL,
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
                created_at DOUBLE PRECISION NOT NULL,
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
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX conversations_user ON conversations (user_id)",
        ),
    ),
    (
        6,
        (
            # Published model versions: each names its own subdirectory of the model
            # directory several instances share, and is written after that directory is
            # completely saved, so every instance can follow the newest one.  (Locks are
            # advisory locks here: no table.)
            """CREATE TABLE models (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                fitted_at DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                events BIGINT
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
SCHEMA_VERSION = POSTGRES_MIGRATIONS[-1][0]
# Any fixed number: migrations of one database take this advisory lock, so two processes
# starting at once do not both create the tables.
_MIGRATION_LOCK = 0x5E4E_D1F0


def _split_pool_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the store's own query options, and those options.

    Other query parameters are kept byte for byte (libpq reads them)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    query, hash_sep, fragment = query.partition("#")
    kept: list[str] = []
    found: dict[str, str] = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key in POOL_OPTIONS:
            found[key] = value
        elif part:
            kept.append(part)
    out = base + ("?" + "&".join(kept) if kept else "")
    return out + (hash_sep + fragment if hash_sep else ""), found


def _positive_seconds(value: object, what: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not 0 < out < float("inf"):
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    return out


class PostgresStore:
    """A :class:`~serendip.store.base.Store` in a PostgreSQL database.

    At most ``pool_size`` connections (default 8; also ``?pool_size=`` in the URL); an operation
    waits up to ``pool_timeout`` seconds (default 10; ``?pool_timeout=``) for a free one.
    Arguments given here win over the URL's options.  ``url`` keeps the rest of the URL as given,
    usable for connecting; ``display_url`` hides the password.
    """

    def __init__(self, url: str, *, connect_timeout: int = 10, pool_size: int | None = None,
                 pool_timeout: float | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise ConfigError(f"PostgreSQL URL must start with postgresql://, got {shown!r}")
        self.url, options = _split_pool_options(url)
        self.pool_size = check_count(
            pool_size if pool_size is not None else options.get("pool_size"),
            "pool_size", DEFAULT_POOL_SIZE)
        self.pool_timeout = _positive_seconds(
            pool_timeout if pool_timeout is not None
            else options.get("pool_timeout", DEFAULT_POOL_TIMEOUT), "pool_timeout")
        self._connect_timeout = int(connect_timeout)
        self._closed = False
        #: locks held by this store: name -> (holder, the session holding it)
        self._locks: dict[str, tuple[str, psycopg.Connection[Any]]] = {}
        self._locks_guard = threading.Lock()
        # One direct connection first: a wrong URL or an unreachable server fails here with the
        # server's own reason (a pool would only time out).
        try:
            psycopg.connect(self.url, autocommit=True,
                            connect_timeout=self._connect_timeout).close()
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to {self.display_url}: {self._scrub(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.display_url}: {self._scrub(exc)}") from exc
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url,
            kwargs={"autocommit": True, "connect_timeout": self._connect_timeout},
            min_size=1,
            max_size=self.pool_size,
            timeout=self.pool_timeout,
            open=False,
            name="serendip-store",
        )
        self._pool.open(wait=False)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def _scrub(self, exc: BaseException | str) -> str:
        return scrub_secret(str(exc), self.url)

    # connections -----------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreError(f"store {self.display_url} is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"no connection to {self.display_url} within {self.pool_timeout:g} s "
                f"(pool of {self.pool_size}): the server is unreachable or every connection "
                "is busy"
            ) from exc
        except PoolClosed as exc:
            raise StoreError(f"store {self.display_url} is closed") from exc
        except psycopg.OperationalError as exc:
            # The server went away (or refused): drop the pool's dead idle connections now
            # rather than one failing request at a time.
            try:
                self._pool.check()
            except psycopg.Error:  # pragma: no cover - checking is best effort
                pass
            raise StoreUnavailableError(
                f"PostgreSQL store {self.display_url} is unavailable: {self._scrub(exc)}"
            ) from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._connection() as conn, conn.cursor() as cur:
            yield cur

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the server answers within the pool timeout."""
        with self._read() as cur:
            cur.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close the pool: idle connections now, ones in use when they are given back."""
        if self._closed:
            return
        self._closed = True
        with self._locks_guard:  # ending a lock's session releases it
            for _holder, conn in self._locks.values():
                try:
                    conn.close()
                except psycopg.Error:  # pragma: no cover - closing is best effort
                    pass
            self._locks.clear()
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.display_url!r})"

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
                    f"{self.display_url} has schema version {current}, newer than this code "
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
    @staticmethod
    def _upsert_fields(cur: psycopg.Cursor[Any], table: str, id_col: str,
                       rows: dict[str, dict[str, str]]) -> int:
        """Insert or replace records; returns how many rows changed (identical ones do not)."""
        now = time.time()
        # One statement over one JSON object {id: fields} (ids are unique after prepare_*):
        # several times faster than a statement per row, or than arrays of jsonb, on
        # catalog loads.
        sql = (
            f"INSERT INTO {table} ({id_col}, fields, updated_at) "
            "SELECT key, value, %s FROM jsonb_each(%s::jsonb) "
            f"ON CONFLICT ({id_col}) DO UPDATE SET fields = EXCLUDED.fields, "
            f"updated_at = EXCLUDED.updated_at WHERE {table}.fields IS DISTINCT FROM "
            "EXCLUDED.fields"
        )
        cur.execute(
            sql,  # type: ignore[arg-type]  # table/id_col are fixed identifiers
            (now, json.dumps(rows, ensure_ascii=False)),
        )
        return max(cur.rowcount, 0)

    @staticmethod
    def _bump_catalog(cur: psycopg.Cursor[Any]) -> int:
        # The row lock orders concurrent catalog writers: each gets its own version.
        row = cur.execute(
            "UPDATE catalog_state SET version = version + 1 WHERE id = 1 RETURNING version"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        rows = prepare_items(items)
        if not rows:
            return 0
        with self._write() as cur:
            if self._upsert_fields(cur, "items", "item_id", rows):
                self._bump_catalog(cur)
        return len(rows)

    def get_item(self, item_id: str) -> ItemRecord | None:
        if not is_lookup_id(item_id):
            return None
        with self._read() as cur:
            row = cur.execute("SELECT fields FROM items WHERE item_id = %s", (item_id,)).fetchone()
        return None if row is None else ItemRecord(item_id, dict(row[0]))

    def delete_items(self, item_ids: Sequence[str]) -> int:
        if isinstance(item_ids, str):
            raise DataError(f"item_ids must be a sequence of ids, got the string {item_ids!r}")
        ids = list(dict.fromkeys(i for i in item_ids if is_lookup_id(i)))
        if not ids:
            return 0
        with self._write() as cur:
            found = [r[0] for r in cur.execute(
                "DELETE FROM items WHERE item_id = ANY(%s) RETURNING item_id", (ids,)
            ).fetchall()]
            if found:
                version = self._bump_catalog(cur)
                cur.execute(
                    "INSERT INTO item_deletions (version, item_id) "
                    "SELECT %s, unnest(%s::text[])",
                    (version, found),
                )
        return len(found)

    def catalog_version(self) -> int:
        with self._read() as cur:
            row = cur.execute("SELECT version FROM catalog_state WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def deleted_items_since(self, version: int) -> list[str]:
        version = check_version(version)
        with self._read() as cur:
            rows = cur.execute(
                "SELECT DISTINCT d.item_id COLLATE \"C\" FROM item_deletions d "
                "WHERE d.version > %s "
                "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = d.item_id) "
                "ORDER BY 1",
                (version,),
            ).fetchall()
        return [str(r[0]) for r in rows]

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
        with self._write() as cur:
            # versions are assigned one publisher at a time (readers are not blocked)
            cur.execute("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE")
            if cur.execute("SELECT 1 FROM models WHERE name = %s", (name,)).fetchone():
                raise DataError(f"model name {name!r} is already published")
            row = cur.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()
            assert row is not None
            version = int(row[0])
            cur.execute(
                "INSERT INTO models (version, name, fitted_at, created_at, created_by, events) "
                "VALUES (%s, %s, %s, %s, %s, %s)", (version, name, fitted, now, who, events))
        return ModelVersion(version, name, fitted, now, who, events)

    def latest_model(self) -> ModelVersion | None:
        found = self.list_models(1)
        return found[0] if found else None

    def list_models(self, limit: int | None = None) -> list[ModelVersion]:
        if limit is not None:
            check_limit(limit)
        with self._read() as cur:
            rows = cur.execute(
                "SELECT version, name, fitted_at, created_at, created_by, events FROM models "
                "ORDER BY version DESC LIMIT %s", (limit,)).fetchall()
        return [model_version_row(r) for r in rows]

    # A session advisory lock on a connection of its own (not the pool's): the server
    # releases it when that session ends, so a holder that dies never blocks the others.
    # The key is a hash of the schema and the lock's name, so databases shared by several
    # schemas keep their locks apart.
    _LOCK_KEY = "hashtextextended(current_schema() || '/' || %s, 0)"

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        name, holder, _ = check_lock(name, holder, ttl)
        with self._locks_guard:
            held = self._locks.get(name)
            if held is not None:
                return held[0] == holder and self._session_alive(name)
            try:
                conn = psycopg.connect(self.url, autocommit=True,
                                       connect_timeout=self._connect_timeout)
            except psycopg.OperationalError as exc:
                raise StoreUnavailableError(
                    f"PostgreSQL store {self.display_url} is unavailable: {self._scrub(exc)}"
                ) from exc
            try:
                row = conn.execute(f"SELECT pg_try_advisory_lock({self._LOCK_KEY})",  # type: ignore[arg-type]
                                   (name,)).fetchone()
            except psycopg.Error:
                conn.close()
                raise
            if not (row and row[0]):
                conn.close()
                return False
            self._locks[name] = (holder, conn)
            return True

    def _session_alive(self, name: str) -> bool:
        """Whether the session holding ``name`` still answers (call with the guard held)."""
        holder, conn = self._locks[name]
        try:
            conn.execute("SELECT 1").fetchone()
            return True
        except psycopg.Error:  # the session (and with it the lock) is gone
            self._locks.pop(name, None)
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover - closing is best effort
                pass
            return False

    def renew_lock(self, name: str, holder: str, ttl: float) -> bool:
        name, holder, _ = check_lock(name, holder, ttl)
        with self._locks_guard:
            held = self._locks.get(name)
            return held is not None and held[0] == holder and self._session_alive(name)

    def release_lock(self, name: str, holder: str) -> bool:
        name, holder, _ = check_lock(name, holder)
        with self._locks_guard:
            held = self._locks.get(name)
            if held is None or held[0] != holder:
                return False
            self._locks.pop(name)
            conn = held[1]
            try:
                conn.execute(f"SELECT pg_advisory_unlock({self._LOCK_KEY})",  # type: ignore[arg-type]
                             (name,))
                return True
            except psycopg.Error:  # the session ended: the server released the lock already
                return False
            finally:
                conn.close()

    # users -----------------------------------------------------------------------------
    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        rows = prepare_users(users)
        if not rows:
            return 0
        with self._write() as cur:
            self._upsert_fields(cur, "users", "user_id", rows)
        return len(rows)

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

    def recent_impressions(self, user_id: str, limit: int
                           ) -> list[tuple[str | None, float, list[str]]]:
        check_limit(limit)
        if not is_lookup_id(user_id):
            return []
        with self._read() as cur:
            rows = cur.execute(
                "SELECT impression_id, timestamp, item_ids FROM impressions WHERE user_id = %s "
                "ORDER BY timestamp DESC, id DESC LIMIT %s",
                (user_id, limit),
            ).fetchall()
        return [(r[0], float(r[1]), [str(i) for i in r[2]]) for r in reversed(rows)]

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
    def create_api_key(self, name: str, role: Role, max_active: int | None = None) -> str:
        name = check_key_name(name)
        role = check_role(role)
        key = new_api_key()
        with self._write() as cur:
            if max_active is not None:
                # one key creation at a time across every instance, so the count holds
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (KEY_CREATION_LOCK,))
                got = cur.execute("SELECT COUNT(*) FROM api_keys WHERE role = %s AND "
                                  "NOT revoked", (role,)).fetchone()
                active = got[0] if got is not None else 0
                if active >= max_active:
                    raise ConfigError(too_many_keys(role, int(active), max_active))
            row = cur.execute(
                "INSERT INTO api_keys (name, key_lookup, key_hash, role, created_at, revoked) "
                "VALUES (%s, %s, %s, %s, %s, FALSE) ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, key_lookup(key), hash_key(key), role, time.time()),
            ).fetchone()
            if row is None:
                old = cur.execute("SELECT revoked FROM api_keys WHERE name = %s",
                                  (name,)).fetchone()
                state = " (revoked; names are not reused)" if old and old[0] else ""
                raise ConfigError(f"an API key named {name!r} already exists{state}")
        return key

    def check_api_key(self, key: str) -> Role | None:
        if not isinstance(key, str) or not key or "\x00" in key:
            return None
        with self._read() as cur:
            rows = cur.execute(
                "SELECT id, key_hash, role, last_used_at FROM api_keys "
                "WHERE key_lookup = %s AND NOT revoked",
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
            with self._read() as cur:  # one statement: autocommit is its transaction
                cur.execute("UPDATE api_keys SET last_used_at = %s WHERE id = %s", (now, key_id))
        except StoreUnavailableError:  # the key is still good; the timestamp can wait
            pass

    def revoke_api_key(self, name: str, keep_last_admin: bool = False) -> bool:
        if not is_lookup_id(name):
            return False
        with self._write() as cur:
            if keep_last_admin:
                # one key change at a time across every instance, so the count holds
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (KEY_CREATION_LOCK,))
                row = cur.execute("SELECT role FROM api_keys WHERE name = %s AND NOT revoked",
                                  (name,)).fetchone()
                got = cur.execute("SELECT COUNT(*) FROM api_keys WHERE role = 'admin' AND "
                                  "NOT revoked AND name <> %s", (name,)).fetchone()
                others = got[0] if got is not None else 0
                if row is not None and row[0] == "admin" and others == 0:
                    raise ConfigError(last_admin_key(name))
            cur.execute(
                "UPDATE api_keys SET revoked = TRUE, revoked_at = %s "
                "WHERE name = %s AND NOT revoked",
                (time.time(), name),
            )
            return cur.rowcount > 0

    def list_api_keys(self) -> list[ApiKeyInfo]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT name, role, created_at, revoked_at, last_used_at, revoked FROM api_keys "
                "ORDER BY id"
            ).fetchall()
        return key_infos(rows)

    def count_api_keys(self, role: Role | None = None, active_only: bool = True) -> int:
        sql = "SELECT COUNT(*) FROM api_keys WHERE TRUE"
        params: list[str] = []
        if role is not None:
            sql += " AND role = %s"
            params.append(check_role(role))
        if active_only:
            sql += " AND NOT revoked"
        with self._read() as cur:
            row = cur.execute(sql, params).fetchone()  # type: ignore[arg-type]  # fixed parts
        return int(row[0]) if row else 0

    def api_keys_frame(self) -> pd.DataFrame:
        """Key names, roles and state (never hashes)."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT name, role, created_at, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["name", "role", "created_at", "revoked"])
        return frame.astype({"revoked": bool})

    # a person's data -------------------------------------------------------------------
    def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete everything stored about ``user_id`` in one transaction (see the protocol).

        The rows are gone for every reader at commit; their bytes stay in the table files until
        (auto)vacuum reuses the space, as with any PostgreSQL delete.
        """
        counts = {"events": 0, "impressions": 0, "users": 0, "conversations": 0}
        if not is_lookup_id(user_id):
            return counts
        with self._write() as cur:
            for table in ("events", "impressions", "users", "conversations"):
                cur.execute(
                    f"DELETE FROM {table} WHERE user_id = %s",  # type: ignore[arg-type]
                    (user_id,),
                )
                counts[table] = max(cur.rowcount, 0)
        return counts

    def export_user(self, user_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": user_id, "user": None, "events": [], "impressions": [],
                               "conversations": []}
        if not is_lookup_id(user_id):
            return out
        with self._write() as cur:  # one snapshot for all three reads
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            user = cur.execute(
                "SELECT fields, updated_at FROM users WHERE user_id = %s", (user_id,)
            ).fetchone()
            events = cur.execute(
                "SELECT event_id, item_id, type, timestamp, value, idempotency_key, created_at "
                "FROM events WHERE user_id = %s ORDER BY event_id",
                (user_id,),
            ).fetchall()
            imps = cur.execute(
                "SELECT id, impression_id, item_ids, scores, propensities, preset, discovery, "
                "context, timestamp FROM impressions WHERE user_id = %s ORDER BY id",
                (user_id,),
            ).fetchall()
            convs = cur.execute(
                "SELECT conversation_id, state, messages, created_at, updated_at "
                "FROM conversations WHERE user_id = %s ORDER BY created_at",
                (user_id,),
            ).fetchall()
        if user is not None:
            out["user"] = {"fields": dict(user[0]), "updated_at": float(user[1])}
        out["events"] = [
            {"event_id": int(e), "item_id": i, "type": t, "timestamp": float(ts),
             "value": None if v is None else float(v), "idempotency_key": k,
             "created_at": float(c)}
            for e, i, t, ts, v, k, c in events
        ]
        out["impressions"] = [
            {"id": int(r), "impression_id": k, "item_ids": list(a),
             "scores": [float(x) for x in sc],
             "propensities": None if p is None else [float(x) for x in p],
             "preset": pr, "discovery": float(d), "context": c, "timestamp": float(ts)}
            for r, k, a, sc, p, pr, d, c, ts in imps
        ]
        out["conversations"] = [conversation_dict(c, user_id, st, m, t0, t1)
                                for c, st, m, t0, t1 in convs]
        return out

    def purge_before(self, timestamp: float) -> dict[str, int]:
        cutoff = check_timestamp(timestamp, "purge_before timestamp")
        with self._write() as cur:
            cur.execute("DELETE FROM impressions WHERE timestamp < %s", (cutoff,))
            return {"impressions": max(cur.rowcount, 0)}

    # conversations ---------------------------------------------------------------------
    def save_conversation(self, conversation_id: str, user_id: str | None,
                          state: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        c = prepare_conversation(conversation_id, user_id, state, messages)
        now = time.time()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO conversations (conversation_id, user_id, state, messages, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (conversation_id) DO UPDATE SET user_id = excluded.user_id, "
                "state = excluded.state, messages = excluded.messages, "
                "updated_at = excluded.updated_at",
                (c.conversation_id, c.user_id, c.state, c.messages, now, now),
            )

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        if not is_lookup_id(conversation_id):
            return None
        with self._read() as cur:
            row = cur.execute(
                "SELECT user_id, state, messages, created_at, updated_at FROM conversations "
                "WHERE conversation_id = %s", (conversation_id,)
            ).fetchone()
        if row is None:
            return None
        u, st, m, t0, t1 = row
        return conversation_dict(conversation_id, u, st, m, t0, t1)

    # generated texts -------------------------------------------------------------------
    def get_generation(self, model: str, prompt_hash: str) -> dict[str, Any] | None:
        if not (is_lookup_id(model) and is_lookup_id(prompt_hash)):
            return None
        with self._read() as cur:
            row = cur.execute(
                "SELECT text, prompt_tokens, completion_tokens, created_at FROM generations "
                "WHERE model = %s AND prompt_hash = %s", (model, prompt_hash)
            ).fetchone()
        return None if row is None else generation_dict(model, prompt_hash, row)

    def put_generation(self, model: str, prompt_hash: str, text: str, prompt_tokens: int,
                       completion_tokens: int) -> None:
        g = prepare_generation(model, prompt_hash, text, prompt_tokens, completion_tokens)
        with self._write() as cur:
            cur.execute(
                "INSERT INTO generations (model, prompt_hash, text, prompt_tokens, "
                "completion_tokens, created_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (model, prompt_hash) DO NOTHING",
                (g.model, g.prompt_hash, g.text, g.prompt_tokens, g.completion_tokens,
                 time.time()),
            )
