"""API-key authentication with three roles: read < write < admin.

A key comes in the ``X-API-Key`` header or as ``Authorization: Bearer <key>``.  Keys live in
the store as salted hashes (``store.create_api_key`` / ``check_api_key``); a key given on the
command line (``serve --api-key``) is held in memory as a SHA-256 digest only.  Successful
look-ups are cached for ``cache_ttl`` seconds so the hot path does not hash-and-query on every
request; a key revoked through this process's API stops working at once (the cache is cleared),
one revoked elsewhere (another process, the command line) within ``cache_ttl`` seconds.

The ASGI guard in ``serendip.service.app`` authenticates before any body is read and leaves the
role in the request state; the ``require`` dependency then only checks it against the route's
minimum (and authenticates itself when no guard ran).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serendip.store.base import ROLES, Role, Store

__all__ = ["Authenticator", "require", "api_key_header", "bearer", "key_from_headers", "MISS",
           "GUARD_ROLE"]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


#: Longest key looked up (longer ones are refused without a store query).
MAX_KEY = 512
#: The request-state entry where the guard leaves the authenticated key's role.
GUARD_ROLE = "serendip.role"
#: ``Authenticator.cached`` returns this when only the store can tell.
MISS = object()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key in raw ASGI headers: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    bearer_key = None
    for name, value in headers:
        if name == b"x-api-key":
            if value:
                return value.decode("latin-1")
        elif name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer_key = token.strip()
    return bearer_key


class Authenticator:
    """Maps a presented key to its role (or None), via static keys, a cache, then the store."""

    def __init__(self, store: Store, static_keys: dict[str, Role] | None = None,
                 cache_ttl: float = 30.0, cache_size: int = 10_000) -> None:
        self.store = store
        self._static = {_digest(k): r for k, r in (static_keys or {}).items()}
        self._ttl = cache_ttl
        self._size = cache_size
        self._cache: dict[str, tuple[Role, float]] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by forget(): a look-up begun before it is not cached

    @staticmethod
    def digest(key: str) -> str:
        """The key's SHA-256 (hex): how rate limits and the cache name a key."""
        return _digest(key)

    def cached(self, key: str | None) -> Role | None | object:
        """The role known without asking the store (static keys, cached look-ups), None for a
        key that cannot be valid, or ``MISS`` when only the store can tell."""
        if not key or len(key) > MAX_KEY:
            return None
        d = _digest(key)
        for known, static_role in self._static.items():
            if hmac.compare_digest(known, d):
                return static_role
        hit = self._cache.get(d)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return MISS

    def role(self, key: str | None) -> Role | None:
        known = self.cached(key)
        if known is not MISS:
            return known  # type: ignore[return-value]
        assert key is not None
        d = _digest(key)
        now = time.monotonic()
        generation = self._generation
        try:
            role: Role | None = self.store.check_api_key(key)
        except UnicodeError:
            return None
        if role is not None:
            with self._lock:
                if generation != self._generation:
                    return role  # revoked meanwhile, perhaps: not cached
                if len(self._cache) >= self._size:
                    self._cache.clear()
                self._cache[d] = (role, now + self._ttl)
        return role

    def forget(self) -> None:
        """Drop cached look-ups: after a revocation, so that it takes effect at once."""
        with self._lock:
            self._generation += 1
            self._cache.clear()


def require(minimum: Role) -> Callable[..., Role]:
    """A FastAPI dependency admitting requests whose key has at least the ``minimum`` role."""

    def dependency(
        request: Request,
        x_api_key: Annotated[str | None, Security(api_key_header)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Role:
        state = request.scope.get("state") or {}
        role: Role | None = state.get(GUARD_ROLE)
        if role is not None:  # authenticated by the guard before the body was read
            if ROLES.index(role) < ROLES.index(minimum):
                raise HTTPException(
                    403, f"this route needs a {minimum!r} key; the key given has role {role!r}"
                )
            return role
        key = x_api_key or (credentials.credentials if credentials is not None else None)
        if not key:
            raise HTTPException(
                401, "missing API key: send it as the X-API-Key header or 'Authorization: "
                "Bearer <key>'", headers={"WWW-Authenticate": "Bearer"},
            )
        auth: Authenticator = request.app.state.auth
        role = auth.role(key)
        if role is None:
            raise HTTPException(401, "invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
        if ROLES.index(role) < ROLES.index(minimum):
            raise HTTPException(
                403, f"this route needs a {minimum!r} key; the key given has role {role!r}"
            )
        request.state.role = role
        return role

    dependency.__name__ = f"require_{minimum}"
    dependency.minimum_role = minimum  # type: ignore[attr-defined]  # read by the guard
    return dependency


def depends(minimum: Role) -> Any:
    """``Depends(require(minimum))``, for route decorators' ``dependencies=[...]``."""
    return Depends(require(minimum))
