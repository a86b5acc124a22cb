"""Validation, API-key hashing and frame building shared by the SQLite and PostgreSQL stores.

Both back ends validate a whole batch *before* opening a transaction, so a bad record names
itself in the error and nothing of its batch is written, and both back ends accept and refuse
exactly the same input.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from serendip.errors import ConfigError, DataError
from serendip.store.base import (
    EVENT_TYPES,
    ROLES,
    ApiKeyInfo,
    EventRecord,
    Impression,
    ItemRecord,
    ModelVersion,
    Role,
    UserRecord,
)

__all__ = [
    "impression_rows",
    "KEY_PREFIX",
    "EVENT_COLUMNS",
    "IMPRESSION_COLUMNS",
    "check_event_types",
    "PreparedEvent",
    "role_at_least",
    "check_id",
    "is_lookup_id",
    "check_fields",
    "prepare_items",
    "prepare_users",
    "prepare_events",
    "check_impression",
    "check_impression_id",
    "prepare_impressions",
    "PreparedImpression",
    "duplicate_impression_ids",
    "check_role",
    "check_key_name",
    "new_api_key",
    "key_lookup",
    "hash_key",
    "verify_key",
    "events_frame_from_rows",
    "fields_frame",
    "redact_url",
    "scrub_secret",
    "check_timestamp",
    "check_version",
    "check_model_name",
    "check_lock",
    "model_version_row",
    "check_count",
    "KEY_TOUCH_INTERVAL",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_POOL_TIMEOUT",
    "PreparedGeneration",
    "prepare_generation",
    "generation_dict",
]

#: Every plaintext key starts with this, so a leaked key is easy to recognise (and grep for).
KEY_PREFIX = "sk_"
EVENT_COLUMNS = ["user_id", "item_id", "timestamp", "type", "value"]
IMPRESSION_COLUMNS = [
    "id", "user_id", "item_ids", "scores", "propensities", "preset", "discovery", "context",
    "timestamp", "impression_id",
]
#: Public impression ids: short, URL- and log-safe tokens.
_IMPRESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HASH_SCHEME = "hmac-sha256"
#: ``last_used_at`` of a key is rewritten at most this often (seconds): a write per request
#: would cost more than the answer is worth.
KEY_TOUCH_INTERVAL = 60.0
#: Connections a store keeps at most (PostgreSQL pool, SQLite readers), and how long an
#: operation waits for one of them before raising StoreUnavailableError (seconds).
DEFAULT_POOL_SIZE = 8
DEFAULT_POOL_TIMEOUT = 10.0
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# password=... in a URL query or a key=value connection string, quoted or not.
_PASSWORD_PARAM = re.compile(
    r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^\s&;]*)", re.IGNORECASE
)
_MAX_ID_LEN = 1024


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, @rest)`` of a URL that has a userinfo part, else None.

    The userinfo runs to the last "@" before the query (or to the last "@" at all when a raw
    "?" or "#" precedes it): a password holding a raw "@" or "/" is still cut out whole, at
    worst along with the host.
    """
    m = _URL_SCHEME.match(url)
    if m is None:
        return None
    rest = url[m.end():]
    stop = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, stop)
    if at < 0:
        at = rest.rfind("@")
    if at < 0:
        return None
    return m.group(0), rest[:at], rest[at:]


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***`` (for logs, reprs and messages).

    Handles ``scheme://user:secret@host/...`` and ``password=secret`` in a query string or a
    ``key=value`` connection string; anything else comes back unchanged.
    """
    text = str(url)
    parts = _userinfo(text)
    if parts is not None and ":" in parts[1]:
        head, userinfo, tail = parts
        text = head + userinfo.split(":", 1)[0] + ":***" + tail
    return _PASSWORD_PARAM.sub(lambda p: p.group("key") + "***", text)


def scrub_secret(message: str, url: str) -> str:
    """``message`` (say, a driver's error text) with the password of ``url`` hidden."""
    found: list[str] = []
    parts = _userinfo(url)
    if parts is not None and ":" in parts[1]:
        found.append(parts[1].split(":", 1)[1])
    found += [p.group("value").strip("'") for p in _PASSWORD_PARAM.finditer(url)]
    # a raw "@" or "/" in a password makes drivers cut the URL elsewhere and quote a piece
    # of it as the host or the database: hide every piece too
    found += [piece for secret in list(found) for piece in re.split(r"[@/:]", secret)
              if len(piece) >= 3]
    out = str(message)
    for secret in sorted(found, key=len, reverse=True):
        if secret and secret != "***":
            out = out.replace(secret, "***")
    return out


def role_at_least(role: Role | None, required: Role) -> bool:
    """True when ``role`` grants ``required`` (read < write < admin)."""
    check_role(required)
    return role is not None and ROLES.index(role) >= ROLES.index(required)


def check_id(value: object, what: str) -> str:
    """Return ``value`` unchanged when it is a usable external id, else raise DataError.

    Ids are stored verbatim (no stripping, no case folding); NUL characters are refused because
    PostgreSQL text cannot hold them and both back ends must accept the same ids.
    """
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {value!r} ({type(value).__name__})")
    if value == "":
        raise DataError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise DataError(f"{what} must not contain NUL characters, got {value!r}")
    if len(value) > _MAX_ID_LEN:
        raise DataError(f"{what} must be at most {_MAX_ID_LEN} characters, got {len(value)}")
    return value


def is_lookup_id(value: object) -> bool:
    """Whether ``value`` could name a stored row (lookups of anything else find nothing)."""
    return isinstance(value, str) and value != "" and "\x00" not in value


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {value!r} ({type(value).__name__})")
    if "\x00" in value:
        raise DataError(f"{what} must not contain NUL characters, got {value!r}")
    return value


def check_fields(fields: object, owner: str, id_column: str) -> dict[str, str]:
    """Text fields of an item or user: string names (not the id column) to string values."""
    if not isinstance(fields, dict):
        raise DataError(f"fields of {owner} must be a dict, got {type(fields).__name__}")
    for name, value in fields.items():
        check_id(name, f"field name of {owner}")
        if name == id_column:
            raise DataError(f"field name of {owner} must not be {id_column!r} (the id column)")
        _check_text(value, f"field {name!r} of {owner}")
    return dict(fields)


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{what} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise DataError(f"{what} must be finite, got {value!r}")
    return out


def check_timestamp(value: object, what: str = "timestamp") -> float:
    """A finite number of seconds since the epoch."""
    return _finite(value, what)


def check_version(value: object) -> int:
    """A catalog version: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"catalog version must be a non-negative integer, got {value!r}")
    return value


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name: object) -> str:
    """A model version's directory name: one path component of ``[A-Za-z0-9._-]`` (not
    starting with a dot), so it can never point outside the shared model directory."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise DataError(f"model name must be 1-128 characters of [A-Za-z0-9._-] starting "
                        f"with a letter or digit, got {name!r}")
    return name


def check_lock(name: object, holder: object, ttl: object | None = None) -> tuple[str, str, float]:
    """A lock's name and holder (ids) and lease length (positive, finite seconds)."""
    n, h = check_id(name, "lock name"), check_id(holder, "lock holder")
    if ttl is None:
        return n, h, 0.0
    t = _finite(ttl, "lock ttl")
    if t <= 0:
        raise DataError(f"lock ttl must be a positive number of seconds, got {ttl!r}")
    return n, h, t


def model_version_row(row: Sequence[Any]) -> ModelVersion:
    """``(version, name, fitted_at, created_at, created_by, events)`` as a ModelVersion."""
    return ModelVersion(int(row[0]), str(row[1]), float(row[2]), float(row[3]), str(row[4]),
                        None if row[5] is None else int(row[5]))


def check_count(value: object, what: str, default: int) -> int:
    """A positive integer option (``None`` gives ``default``), as a ConfigError naming it."""
    if value is None:
        return default
    try:
        out = int(str(value)) if isinstance(value, str) else value
    except ValueError:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}") from None
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return out


def prepare_items(items: Sequence[ItemRecord]) -> dict[str, dict[str, str]]:
    """Validated ``item_id -> fields``; a repeated id in one batch keeps the last record."""
    out: dict[str, dict[str, str]] = {}
    for rec in items:
        if not isinstance(rec, ItemRecord):
            raise DataError(f"expected ItemRecord, got {type(rec).__name__}")
        item_id = check_id(rec.item_id, "item_id")
        out[item_id] = check_fields(rec.fields, f"item {item_id!r}", "item_id")
    return out


def prepare_users(users: Sequence[UserRecord]) -> dict[str, dict[str, str]]:
    """Validated ``user_id -> fields``; a repeated id in one batch keeps the last record."""
    out: dict[str, dict[str, str]] = {}
    for rec in users:
        if not isinstance(rec, UserRecord):
            raise DataError(f"expected UserRecord, got {type(rec).__name__}")
        user_id = check_id(rec.user_id, "user_id")
        out[user_id] = check_fields(rec.fields, f"user {user_id!r}", "user_id")
    return out


@dataclass(frozen=True)
class PreparedEvent:
    user_id: str
    item_id: str
    type: str
    timestamp: float
    value: float | None
    idempotency_key: str | None


def prepare_events(events: Sequence[EventRecord], now: float | None = None) -> list[PreparedEvent]:
    """Validate a batch and fill missing timestamps with ``now`` (one clock reading per batch)."""
    now = time.time() if now is None else now
    out: list[PreparedEvent] = []
    for n, ev in enumerate(events):
        if not isinstance(ev, EventRecord):
            raise DataError(f"event #{n}: expected EventRecord, got {type(ev).__name__}")
        user_id = check_id(ev.user_id, f"event #{n} user_id")
        item_id = check_id(ev.item_id, f"event #{n} item_id")
        if ev.type not in EVENT_TYPES:
            raise DataError(
                f"event #{n}: unknown event type {ev.type!r}; valid types: {', '.join(EVENT_TYPES)}"
            )
        ts = now if ev.timestamp is None else _finite(ev.timestamp, f"event #{n} timestamp")
        value = None if ev.value is None else _finite(ev.value, f"event #{n} value")
        if ev.type == "rating" and value is None:
            raise DataError(f"event #{n}: a 'rating' event needs a value, got None")
        key = ev.idempotency_key
        if key is not None:
            check_id(key, f"event #{n} idempotency_key")
        out.append(PreparedEvent(user_id, item_id, ev.type, ts, value, key))
    return out


def check_event_types(types: Sequence[str] | str) -> list[str]:
    """A filter of event types, each one of EVENT_TYPES."""
    out = [types] if isinstance(types, str) else list(types)
    for t in out:
        if t not in EVENT_TYPES:
            raise DataError(f"unknown event type {t!r}; valid types: {', '.join(EVENT_TYPES)}")
    return out


def check_impression_id(value: object, what: str = "impression_id") -> str:
    """A public impression id: 1 to 64 characters of ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or _IMPRESSION_ID.fullmatch(value) is None:
        raise DataError(
            f"{what} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-', got {value!r}"
        )
    return value


def check_impression(imp: Impression, what: str = "impression") -> Impression:
    """Refuse impressions whose arrays disagree in length or hold non-finite numbers.

    ``what`` starts every message (``"impression #3"`` names a position in a batch).
    """
    if not isinstance(imp, Impression):
        raise DataError(f"{what}: expected Impression, got {type(imp).__name__}")
    if imp.user_id is not None:
        check_id(imp.user_id, f"{what} user_id")
    for i, item_id in enumerate(imp.item_ids):
        check_id(item_id, f"{what} item_ids[{i}]")
    if len(imp.scores) != len(imp.item_ids):
        raise DataError(
            f"{what} scores must align with item_ids, got {len(imp.scores)} scores "
            f"for {len(imp.item_ids)} items"
        )
    for i, s in enumerate(imp.scores):
        _finite(s, f"{what} scores[{i}]")
    if imp.propensities is not None:
        if len(imp.propensities) != len(imp.item_ids):
            raise DataError(
                f"{what} propensities must align with item_ids, got "
                f"{len(imp.propensities)} for {len(imp.item_ids)} items"
            )
        for i, p in enumerate(imp.propensities):
            if not 0.0 <= _finite(p, f"{what} propensities[{i}]") <= 1.0:
                raise DataError(f"{what} propensities[{i}] must lie in [0, 1], got {p!r}")
    check_id(imp.preset, f"{what} preset")
    d = _finite(imp.discovery, f"{what} discovery")
    if not 0.0 <= d <= 1.0:
        raise DataError(f"{what} discovery must lie in [0, 1], got {imp.discovery!r}")
    if imp.context is not None:
        _check_text(imp.context, f"{what} context")
    if imp.timestamp is not None:
        _finite(imp.timestamp, f"{what} timestamp")
    if imp.impression_id is not None:
        check_impression_id(imp.impression_id, f"{what} impression_id")
    return imp


@dataclass(frozen=True)
class PreparedImpression:
    """A validated impression with its lists as plain Python values and a timestamp filled."""

    user_id: str | None
    item_ids: list[str]
    scores: list[float]
    propensities: list[float] | None
    preset: str
    discovery: float
    context: str | None
    timestamp: float
    impression_id: str | None


def prepare_impressions(
    impressions: Sequence[Impression], now: float | None = None, *, single: bool = False
) -> list[PreparedImpression]:
    """Validate a batch, fill missing timestamps with ``now`` and refuse repeated ids.

    Messages name the position in the batch (``impression #2 ...``), or just ``impression``
    with ``single=True`` (``log_impression``).
    """
    if isinstance(impressions, Impression):
        raise DataError("impressions must be a sequence of Impression, got one Impression")
    now = time.time() if now is None else now
    out: list[PreparedImpression] = []
    seen: dict[str, int] = {}
    for n, imp in enumerate(impressions):
        what = "impression" if single else f"impression #{n}"
        check_impression(imp, what)
        key = imp.impression_id
        if key is not None:
            if key in seen:
                raise DataError(
                    f"{what}: impression_id {key!r} repeats impression #{seen[key]} of the batch"
                )
            seen[key] = n
        out.append(
            PreparedImpression(
                imp.user_id,
                list(imp.item_ids),
                [float(s) for s in imp.scores],
                None if imp.propensities is None else [float(p) for p in imp.propensities],
                imp.preset,
                float(imp.discovery),
                imp.context,
                now if imp.timestamp is None else float(imp.timestamp),
                key,
            )
        )
    return out


def duplicate_impression_ids(keys: Iterable[str]) -> DataError:
    """The error for impression ids that are already stored (the batch is not written)."""
    shown = ", ".join(repr(k) for k in list(keys)[:5])
    return DataError(f"impression_id already stored: {shown}; nothing of the batch was written")


def check_role(role: object) -> Role:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def check_key_name(name: object) -> str:
    try:
        return check_id(name, "API key name")
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_lookup(key: str) -> str:
    """A public index into the key table, so checking a key hashes against one row, not all.

    It is an unsalted digest of a 256-bit random secret: it reveals nothing usable, while the
    salted hash in ``key_hash`` is what authenticates.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def hash_key(key: str, salt: bytes | None = None) -> str:
    """``hmac-sha256$salt$digest`` with a per-key salt.

    Keys are 256-bit random tokens, not passwords, so a slow KDF (scrypt) buys nothing against
    guessing and would add tens of milliseconds to every authenticated request.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hmac.new(salt, key.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{_HASH_SCHEME}${salt.hex()}${digest}"


def verify_key(key: str, stored: str) -> bool:
    try:
        scheme, salt_hex, _ = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != _HASH_SCHEME:
        return False
    return hmac.compare_digest(hash_key(key, salt), stored)


def events_frame_from_rows(rows: Iterable[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows of ``user_id, item_id, timestamp, type, value`` as a typed frame."""
    frame = pd.DataFrame.from_records(list(rows), columns=EVENT_COLUMNS, coerce_float=True)
    return frame.astype(
        {
            "user_id": object,
            "item_id": object,
            "timestamp": "float64",
            "type": object,
            "value": "float64",
        }
    )


def fields_frame(id_column: str, rows: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """``id_column`` plus one column per field name (sorted; missing fields are "").

    ``rows`` hold each record's fields as JSON text; they are decoded in one ``json.loads``
    call, several times faster than one call per row on large catalogs.
    """
    ids = [rid for rid, _ in rows]
    records: list[dict[str, str]] = json.loads("[" + ",".join(text for _, text in rows) + "]")
    names: set[str] = set()
    for rec in records:
        names.update(rec)
    columns = sorted(names)
    data: dict[str, list[str]] = {id_column: ids}
    for name in columns:
        data[name] = [rec.get(name, "") for rec in records]
    return pd.DataFrame(data, columns=[id_column, *columns], dtype=object)


def check_limit(limit: int) -> None:
    """Refuse a non-positive or non-integer row limit, naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit!r}")


def impression_rows(prepared: Sequence[PreparedImpression],
                    encode: Callable[[Any], Any]) -> list[tuple[Any, ...]]:
    """Insert parameters for ``impressions`` (column order of both back ends' INSERT); list
    columns go through ``encode`` (JSON text for SQLite, a JSONB adapter for PostgreSQL)."""
    return [
        (p.user_id, encode(p.item_ids), encode(p.scores),
         None if p.propensities is None else encode(p.propensities), p.preset, p.discovery,
         p.context, p.timestamp, p.impression_id)
        for p in prepared
    ]


#: PostgreSQL advisory lock that serialises key creation with a cap (an arbitrary constant).
KEY_CREATION_LOCK = 0x5E4E_D1B0


def too_many_keys(role: str, active: int, limit: int) -> str:
    """The message when creating one more ``role`` key would pass ``limit`` active ones."""
    return (f"the store already has {active} active {role} keys, the limit is {limit}: "
            "revoke one first")


def key_infos(rows: Any) -> list[ApiKeyInfo]:
    """``ApiKeyInfo`` from rows of (name, role, created_at, revoked_at, last_used_at,
    revoked); a key revoked before schema v3 recorded no time and shows its creation time."""
    return [
        ApiKeyInfo(str(n), check_role(r), float(c),
                   None if not rv else float(c if ra is None else ra),
                   None if lu is None else float(lu))
        for n, r, c, ra, lu, rv in rows
    ]


@dataclass(frozen=True)
class PreparedGeneration:
    """A validated generated text, ready for ``put_generation``."""

    model: str
    prompt_hash: str
    text: str
    prompt_tokens: int
    completion_tokens: int


def _token_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def prepare_generation(model: object, prompt_hash: object, text: object,
                       prompt_tokens: object, completion_tokens: object) -> PreparedGeneration:
    """Validate the arguments of ``put_generation`` (DataError naming the bad one)."""
    return PreparedGeneration(
        check_id(model, "generation model"),
        check_id(prompt_hash, "generation prompt_hash"),
        _check_text(text, "generated text"),
        _token_count(prompt_tokens, "prompt_tokens"),
        _token_count(completion_tokens, "completion_tokens"),
    )


def generation_dict(model: str, prompt_hash: str, row: Sequence[Any]) -> dict[str, Any]:
    """A stored generation from a row of (text, prompt_tokens, completion_tokens, created_at)."""
    text, prompt_tokens, completion_tokens, created_at = row
    return {"model": model, "prompt_hash": prompt_hash, "text": str(text),
            "prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
            "created_at": float(created_at)}


def last_admin_key(name: str) -> str:
    """The message when revoking ``name`` would leave no active admin key."""
    return (f"{name!r} is the last active admin key; create another admin key first (or "
            "revoke it with `serendip keys revoke` on the store)")


#: Largest stored conversation (state and messages as JSON, bytes).
MAX_CONVERSATION_BYTES = 1 << 20


@dataclass(frozen=True)
class PreparedConversation:
    conversation_id: str
    user_id: str | None
    state: str
    messages: str


def prepare_conversation(conversation_id: str, user_id: str | None, state: dict[str, Any],
                         messages: list[dict[str, Any]]) -> PreparedConversation:
    """A conversation checked and serialised for storage (errors name the bad value)."""
    if not is_lookup_id(conversation_id):
        raise DataError(f"conversation id must be 1-256 characters without control "
                        f"characters, got {conversation_id!r}")
    if user_id is not None and not is_lookup_id(user_id):
        raise DataError(f"user id must be 1-256 characters without control characters, "
                        f"got {user_id!r}")
    st = json.dumps(state, sort_keys=True)
    msgs = json.dumps(messages)
    if len(st) + len(msgs) > MAX_CONVERSATION_BYTES:
        raise DataError(f"conversation {conversation_id!r} is over {MAX_CONVERSATION_BYTES} "
                        "bytes; start a new one")
    return PreparedConversation(conversation_id, user_id, st, msgs)


def conversation_dict(conversation_id: str, user_id: str | None, state: Any, messages: Any,
                      created_at: float, updated_at: float) -> dict[str, Any]:
    """A stored conversation as the protocol returns it."""
    return {"conversation_id": conversation_id, "user_id": user_id,
            "state": json.loads(state) if isinstance(state, str) else dict(state),
            "messages": json.loads(messages) if isinstance(messages, str) else list(messages),
            "created_at": float(created_at), "updated_at": float(updated_at)}
