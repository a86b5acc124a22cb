"""The Store protocol: what the service persists, behind one interface and two back ends.

Records cross this boundary as plain dataclasses with external (string) ids; the store never
sees model indices.  Every write is a single transaction: it is either fully stored or not at
all, and a method returns only after its transaction has committed durably.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd

from serendip.errors import StoreError

__all__ = [
    "Role", "ROLES", "ItemRecord", "UserRecord", "EventRecord", "EventAck", "Impression",
    "Store", "EVENT_TYPES", "ApiKeyInfo", "StoreUnavailableError", "ModelVersion",
]

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")

#: Event types the API accepts; ``value`` carries the rating for "rating".
EVENT_TYPES = ("interaction", "click", "like", "skip", "dislike", "rating", "purchase", "view")


class StoreUnavailableError(StoreError):
    """The database cannot be reached right now, or no connection became free in time.

    The request may well succeed later: the HTTP layer answers 503 with a ``Retry-After`` of
    ``retry_after`` seconds.  Messages name the store by its redacted URL.
    """

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ApiKeyInfo:
    """What the store says about an API key: never the key, never its hash.

    ``revoked_at`` is None while the key is active (keys revoked before schema version 3
    carry the time of that upgrade).  ``last_used_at`` is refreshed at most once a minute.
    """

    name: str
    role: Role
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    fields: dict[str, str] = field(default_factory=dict)  # text columns: title, genres, ...


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    user_id: str
    item_id: str
    type: str = "interaction"
    timestamp: float | None = None  # seconds since the epoch; the store fills "now" if None
    value: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class EventAck:
    event_id: int
    duplicate: bool  # True when the idempotency key was already stored (nothing new written)


@dataclass(frozen=True)
class Impression:
    """A list shown to a user: kept for evaluation and for off-policy learning later.

    ``impression_id`` is the public id the API returns with the list (1 to 64 characters of
    ``[A-Za-z0-9_-]``, unique in the store); the engine makes one at serve time so the response
    does not wait for the write.  ``None`` stores no public id (rows older than schema version 2
    have none).
    """

    user_id: str | None
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    preset: str
    discovery: float
    propensities: tuple[float, ...] | None = None
    context: str | None = None  # e.g. the natural-language request
    timestamp: float | None = None
    impression_id: str | None = None


@dataclass(frozen=True)
class ModelVersion:
    """A fitted model published to the store, so every instance on it can load it.

    ``name`` is the model's subdirectory in the model directory the instances share; the
    version is assigned by the store (1, 2, ...) in publishing order.  A row is written only
    after its directory is completely saved, so a published version is always loadable.
    """

    version: int
    name: str
    fitted_at: float
    created_at: float
    created_by: str
    events: int | None = None  # events in the store when the fit read it


@runtime_checkable
class Store(Protocol):
    """Persistence for catalog, users, events, impressions and API keys."""

    url: str  # usable for connecting: it may hold a password, so never print it

    @property
    def display_url(self) -> str:
        """``url`` with any password replaced by ``***``: for logs, reprs and messages."""
        ...

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version now in place."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Return when the database answers; raise StoreUnavailableError when it does not."""

    # catalog -------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[ItemRecord]) -> int: ...
    def get_item(self, item_id: str) -> ItemRecord | None: ...
    def delete_items(self, item_ids: Sequence[str]) -> int: ...
    def catalog_version(self) -> int:
        """A counter bumped (in the same transaction) by every ``upsert_items`` or
        ``delete_items`` that changes the catalog: 0 on a fresh database.  Read it before
        ``items_frame`` so that a change made in between is seen at the next poll."""

    def deleted_items_since(self, version: int) -> list[str]:
        """Ids deleted by catalog versions after ``version`` and not stored again since."""
    def items_frame(self) -> pd.DataFrame:
        """All items: ``item_id`` plus one column per field name (missing fields empty)."""

    def count_items(self) -> int: ...

    # model versions and the cluster-wide lock ----------------------------------------
    def publish_model(self, name: str, fitted_at: float, created_by: str,
                      events: int | None = None) -> ModelVersion:
        """Record a fully saved model directory as the newest version (one transaction);
        a ``name`` already published raises DataError naming it."""

    def latest_model(self) -> ModelVersion | None:
        """The newest published model version, or None when none was published."""

    def list_models(self, limit: int | None = None) -> list[ModelVersion]:
        """Published model versions, newest first (at most ``limit``)."""

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take the named lock for ``holder`` unless someone else holds it; True when held.

        Held across every process on the database: PostgreSQL uses a session advisory lock
        (released by the server if the holder's process dies), SQLite a lease row that
        lapses ``ttl`` seconds after its last renewal.  Taking a lock one already holds
        renews it."""

    def renew_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s hold by ``ttl`` seconds; False when it no longer holds it."""

    def release_lock(self, name: str, holder: str) -> bool:
        """Give the lock back; False when ``holder`` did not hold it."""

    # users ---------------------------------------------------------------------------
    def upsert_users(self, users: Sequence[UserRecord]) -> int: ...
    def get_user(self, user_id: str) -> UserRecord | None: ...

    # events (append-only) ------------------------------------------------------------
    def append_events(self, events: Sequence[EventRecord]) -> list[EventAck]:
        """Store events in one transaction; a repeated idempotency key stores nothing new."""

    def events_frame(self, types: Sequence[str] | None = None) -> pd.DataFrame:
        """Events as ``user_id, item_id, timestamp, type, value`` in insertion order."""

    def user_events(self, user_id: str, limit: int | None = None) -> pd.DataFrame: ...
    def recent_item_events(self, user_id: str, limit: int
                           ) -> list[tuple[str, str, float | None]]:
        """``(item_id, type, value)`` of the user's ``limit`` most recent events, oldest first
        (the request path's history read: no data frame)."""
        ...
    def count_events(self) -> int: ...
    def top_users(self, limit: int) -> list[str]:
        """User ids with the most events first (ties by id)."""

    # impressions ---------------------------------------------------------------------
    def log_impression(self, impression: Impression) -> int:
        """Store one impression; returns its row id (an integer internal to the store)."""

    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store impressions in one transaction, all or none; returns how many were stored.

        Every impression is validated before anything is written; a bad one, or an
        ``impression_id`` that is repeated in the batch or already stored, raises DataError
        naming it and stores nothing of the batch.
        """

    def count_impressions(self) -> int: ...
    def recent_impressions(self, user_id: str, limit: int
                           ) -> list[tuple[str | None, float, list[str]]]:
        """``(impression_id, timestamp, item ids)`` of the user's ``limit`` most recent
        impressions (by timestamp, then insertion), oldest first (the request path's read of
        what a person was shown: no data frame)."""
        ...
    def impressions_frame(self) -> pd.DataFrame:
        """Logged impressions, oldest first (``IMPRESSION_COLUMNS``), list columns decoded."""

    # API keys (only hashes are stored) -----------------------------------------------
    def create_api_key(self, name: str, role: Role, max_active: int | None = None) -> str:
        """Create a key and return its plaintext once; only a hash is stored.

        ``max_active``: refuse (ConfigError naming the limit) when the store already holds
        that many active keys of ``role``; counted in the creating transaction, so concurrent
        creations through any number of instances cannot pass it."""

    def check_api_key(self, key: str) -> Role | None:
        """The role of an active key, or None (unknown, malformed or revoked)."""

    def revoke_api_key(self, name: str, keep_last_admin: bool = False) -> bool:
        """Revoke the key named ``name``; False when no active key has that name.

        ``keep_last_admin``: refuse (ConfigError) when it is the last active admin key,
        checked inside the revoking transaction, so concurrent revocations through any number
        of instances cannot all pass."""

    def list_api_keys(self) -> list[ApiKeyInfo]:
        """Every key ever created, revoked ones included, oldest first."""

    def count_api_keys(self, role: Role | None = None, active_only: bool = True) -> int: ...

    # a person's data -----------------------------------------------------------------
    def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete the user's events, impressions (with their logged request text) and user
        record in one transaction; returns ``{"events": n, "impressions": m, "users": 0|1}``."""

    def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user, read in one snapshot, JSON-serialisable:
        ``{"user_id", "user": {"fields", "updated_at"} | None, "events": [...],
        "impressions": [...]}``."""

    def purge_before(self, timestamp: float) -> dict[str, int]:
        """Retention: delete impressions older than ``timestamp`` (seconds since the epoch);
        returns ``{"impressions": n}``.  Events are training data and are kept."""

    # generated texts (a cache: nothing is generated twice) ---------------------------
    def save_conversation(self, conversation_id: str, user_id: str | None,
                          state: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """Store (or replace) a conversation: its state and messages, erased and exported
        with its user."""

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None: ...

    def get_generation(self, model: str, prompt_hash: str) -> dict[str, Any] | None:
        """The text ``model`` generated for ``prompt_hash``, or None: ``{"model",
        "prompt_hash", "text", "prompt_tokens", "completion_tokens", "created_at"}``."""

    def put_generation(self, model: str, prompt_hash: str, text: str, prompt_tokens: int,
                       completion_tokens: int) -> None:
        """Store a generated text; idempotent: when ``(model, prompt_hash)`` is already
        stored, the first text is kept and nothing is written."""
