"""Persistence behind one :class:`Store` protocol: SQLite (embedded default) and PostgreSQL.

``open_store(url)`` picks the back end from the URL and brings the schema up to date.
``redact_url(url)`` hides a URL's password: use it (or ``store.display_url``) wherever a URL
is printed or logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from serendip.errors import ConfigError
from serendip.store._common import KEY_PREFIX, redact_url, role_at_least
from serendip.store.base import (
    EVENT_TYPES,
    ROLES,
    ApiKeyInfo,
    EventAck,
    EventRecord,
    Impression,
    ItemRecord,
    ModelVersion,
    Role,
    Store,
    StoreUnavailableError,
    UserRecord,
)
from serendip.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from serendip.store.postgres import PostgresStore

__all__ = [
    "Role", "ROLES", "EVENT_TYPES", "ItemRecord", "UserRecord", "EventRecord", "EventAck",
    "Impression", "Store", "SQLiteStore", "PostgresStore", "open_store", "role_at_least",
    "KEY_PREFIX", "ApiKeyInfo", "StoreUnavailableError", "redact_url", "ModelVersion",
]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def __getattr__(name: str) -> Any:
    # PostgresStore is imported on first use, so SQLite-only users never load psycopg.
    if name == "PostgresStore":
        from serendip.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str) -> Store:
    """Open (and migrate) the store at ``url``.

    Accepted: ``sqlite:///abs/path.db``, a bare path ending ``.db``/``.sqlite``/``.sqlite3``,
    ``postgresql://...`` or ``postgres://...`` (``?pool_size=N&pool_timeout=S`` set the
    connection pool).  In-memory SQLite is refused: events must survive a restart.  Messages
    show the URL with its password hidden.  An unreachable database raises
    StoreUnavailableError.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"store URL must be a non-empty string, got {url!r}")
    shown = redact_url(url)
    store: Store
    if url.startswith(("postgresql://", "postgres://")):
        from serendip.store.postgres import PostgresStore

        store = PostgresStore(url)
    elif url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise ConfigError(
                f"SQLite URL must look like 'sqlite:///absolute/path.db', got {url!r}"
            )
        path = url[len("sqlite://"):]  # keeps the leading "/" of the absolute path
        if ":memory:" in path or "mode=memory" in path:
            raise ConfigError(
                f"in-memory SQLite is not allowed (events must be stored durably), got {url!r}"
            )
        if "?" in path:
            raise ConfigError(f"SQLite URL must not carry query options, got {url!r}")
        store = SQLiteStore(path)
    elif "://" not in url and url.lower().endswith(_SQLITE_SUFFIXES):
        store = SQLiteStore(Path(url))
    else:
        raise ConfigError(
            f"unknown store URL {shown!r}; use sqlite:///abs/path.db, a path ending .db or "
            ".sqlite, or postgresql://user@host:port/dbname"
        )
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
