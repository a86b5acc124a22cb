"""Resource limits of the HTTP service, kept in one place: :class:`ServerLimits`.

The server side (header size, time to send the request head, idle keep-alive, connection
cap, graceful shutdown) is enforced by :func:`server_config`'s uvicorn configuration and its
HTTP protocol, :func:`guarded_protocol`: an h11 protocol that

- closes a connection whose request head is not complete ``header_timeout`` seconds after its
  first byte (or after the connection opened), answering 408 (slow-loris clients);
- answers 431 and closes when the head grows past ``max_header_bytes`` (h11 buffers at most
  that much, so a huge head is never held in memory);
- answers 503 and closes at once when ``max_connections`` connections are already open;
- closes the connection when a response is complete while the client is still sending a body
  nobody will read.

The application side (body-read deadline, failed-authentication and per-key rate limits) is
enforced by the ASGI guard in ``serendip.service.app`` with :class:`FailureLimiter` and
:class:`TokenBuckets`, over the same ``ServerLimits``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any

from serendip.errors import ConfigError

__all__ = ["ServerLimits", "FailureLimiter", "TokenBuckets", "guarded_protocol", "server_config"]


@dataclass(frozen=True)
class ServerLimits:
    """Limits and timeouts of one service process (defaults suit a service on a LAN or behind
    a reverse proxy; every field is a ``serve()`` keyword argument of the same name)."""

    #: Largest request head (request line and headers) in bytes; larger ones get 431.
    max_header_bytes: int = 64 * 1024
    #: Seconds a client has to send a complete request head (from its first byte, or from
    #: the connection's opening); then 408 and the connection is closed.
    header_timeout: float = 10.0
    #: Seconds a client has to send a complete request body (from the end of its head);
    #: then 408 and the connection is closed.
    body_timeout: float = 30.0
    #: Seconds an idle keep-alive connection is kept open between requests.
    keep_alive_timeout: int = 5
    #: Most connections open at once; more are answered 503 and closed.
    max_connections: int = 256
    #: Seconds shutdown waits for requests in flight before closing their connections.
    graceful_shutdown_timeout: float = 10.0
    #: Failed authentications allowed from one client address per ``auth_failure_window``;
    #: after that, requests from it with an unknown key get 429 until the window ends.
    auth_failure_limit: int = 20
    #: Seconds of the failed-authentication window.
    auth_failure_window: float = 60.0
    #: Requests per second allowed for one API key, on average (0: no per-key limit).
    key_rate: float = 500.0
    #: Requests one API key may send in a burst above ``key_rate``.
    key_burst: int = 1000

    def __post_init__(self) -> None:
        positive = {
            "max_header_bytes": (1024, None), "header_timeout": (0.0, None),
            "body_timeout": (0.0, None), "keep_alive_timeout": (0, None),
            "max_connections": (1, None), "graceful_shutdown_timeout": (0.0, None),
            "auth_failure_limit": (1, None), "auth_failure_window": (0.0, None),
            "key_burst": (1, None),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
            low = positive.get(f.name, (0.0, None))[0]
            strict = f.name in ("header_timeout", "body_timeout", "auth_failure_window")
            if value < low or (strict and value <= 0):
                bound = f"more than {low}" if strict else f"at least {low}"
                raise ConfigError(f"{f.name} must be {bound}, got {value!r}")
        if self.key_rate < 0:
            raise ConfigError(f"key_rate must be at least 0, got {self.key_rate!r}")


class FailureLimiter:
    """Failed authentications per client address in fixed windows.

    ``fail(addr)`` records one; once an address has ``limit`` failures in its current window,
    ``retry_after(addr)`` is the number of seconds until that window ends (0 when the address
    may try again).  At most ``max_addresses`` addresses are tracked (expired windows are
    dropped first), so memory stays bounded whatever addresses clients use.
    """

    def __init__(self, limit: int, window: float, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}

    def retry_after(self, addr: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        hit = self._seen.get(addr)
        if hit is None:
            return 0.0
        start, count = hit
        if now - start >= self.window:
            del self._seen[addr]
            return 0.0
        return start + self.window - now if count >= self.limit else 0.0

    def fail(self, addr: str, now: float | None = None) -> float:
        """Record a failure; returns ``retry_after(addr)`` after it."""
        now = time.monotonic() if now is None else now
        hit = self._seen.get(addr)
        if hit is None or now - hit[0] >= self.window:
            if len(self._seen) >= self.max_addresses:
                self._prune(now)
            self._seen[addr] = (now, 1)
        else:
            self._seen[addr] = (hit[0], hit[1] + 1)
        return self.retry_after(addr, now)

    def _prune(self, now: float) -> None:
        self._seen = {a: v for a, v in self._seen.items() if now - v[0] < self.window}
        if len(self._seen) >= self.max_addresses:
            self._seen.clear()


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, up to ``burst`` saved.

    ``take(key)`` spends a token and returns 0, or returns the seconds until one is due (and
    spends nothing).  ``rate=0`` admits everything.  At most ``max_keys`` buckets are kept
    (full ones are dropped first).
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        hit = self._buckets.get(key)
        if hit is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            tokens = self.burst
        else:
            tokens = min(self.burst, hit[0] + (now - hit[1]) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _prune(self, now: float) -> None:
        self._buckets = {
            k: v for k, v in self._buckets.items()
            if v[0] + (now - v[1]) * self.rate < self.burst
        }
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


#: Added to every response.  The web page and /docs load scripts and styles from this origin
#: only; ``data:`` images are the page's empty favicon and Swagger UI's icons, ``https:`` ones
#: a catalog's cover images (loaded without a referrer).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' https: data:; object-src 'none'; base-uri 'none'; "
     b"frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def _raw_response(status: int, reason: str, detail: str,
                  extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (written to the transport
    directly, where h11 cannot send one: before any request head was parsed)."""
    body = json.dumps({"error": reason.lower().replace(" ", "_"), "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    head += [f"{k}: {v}" for k, v in extra]
    head += [f"{k.decode()}: {v.decode()}" for k, v in SECURITY_HEADERS]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(limits: ServerLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header deadline, a header size limit answered 431, a
    connection cap and no body left unread on a kept-alive connection (see the module)."""
    import h11
    from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

    max_head = limits.max_header_bytes

    class SizedConnection(h11.Connection):
        """h11's connection, refusing request heads over ``max_head`` bytes: h11 itself only
        bounds a head that is still incomplete, not one that arrived whole."""

        head_too_large = False

        def next_event(self) -> Any:
            try:
                event = super().next_event()
            except h11.RemoteProtocolError as e:
                self.head_too_large = e.error_status_hint == 431
                raise
            if isinstance(event, h11.Request):
                size = len(event.method) + len(event.target) + 12 + sum(
                    len(name) + len(value) + 4 for name, value in event.headers.raw_items())
                if size > max_head:
                    self.head_too_large = True
                    raise h11.RemoteProtocolError("request head too large",
                                                  error_status_hint=431)
            return event

    class GuardedH11Protocol(H11Protocol):
        _limits = limits
        _refused = 0  # connections refused for the cap, and when that was last logged
        _refused_logged = -math.inf

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = SizedConnection(h11.SERVER, max_incomplete_event_size=max_head)
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self._limits.max_connections:
                GuardedH11Protocol._refused += 1
                now = time.monotonic()
                if now - GuardedH11Protocol._refused_logged >= 10.0:  # not one line each
                    GuardedH11Protocol._refused_logged = now
                    self.logger.warning(
                        "connections refused: %d so far, %d open (the limit is %d)",
                        GuardedH11Protocol._refused, len(self.connections) - 1,
                        self._limits.max_connections)
                self._close_with(_raw_response(
                    503, "Service Unavailable",
                    f"too many connections (the limit is {self._limits.max_connections})",
                    (("retry-after", "1"),)))
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()  # the first byte of a new request head
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # the client is still sending a body the application did not read
                self.conn.send(h11.ConnectionClosed())
                self.transport.close()
                self.server_state.total_requests += 1
                return
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            """A malformed or oversized request head: 400 or 431, with the security headers
            every response carries, and the connection closed."""
            status = 400
            detail = msg.encode("utf-8", "replace")
            if getattr(self.conn, "head_too_large", False):
                status = 431
                self.logger.info("request head over %d bytes refused",
                                 self._limits.max_header_bytes)
                detail = (f"the request head exceeds the limit of "
                          f"{self._limits.max_header_bytes} bytes").encode()
            event = h11.Response(status_code=status, reason=STATUS_PHRASES[status], headers=[
                (b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                *SECURITY_HEADERS])
            self.transport.write(self.conn.send(event))
            self.transport.write(self.conn.send(h11.Data(data=detail)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self._limits.header_timeout,
                                                    self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is still being written (pipelined requests)
            self._close_with(_raw_response(
                408, "Request Timeout",
                f"the request head was not complete within {self._limits.header_timeout:g} "
                "seconds"))

        def _close_with(self, response: bytes) -> None:
            self._cancel_head_timer()
            self._unset_keepalive_if_required()
            self.transport.write(response)
            self.transport.close()

    return GuardedH11Protocol


def server_config(app: Any, limits: ServerLimits, *, host: str, port: int,
                  log_level: str = "warning") -> Any:
    """The ``uvicorn.Config`` that serves ``app`` under ``limits`` (one worker, h11)."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, workers=1, log_level=log_level, access_log=False,
        http=guarded_protocol(limits), ws="none", lifespan="on",  # the API has no websockets
        h11_max_incomplete_event_size=limits.max_header_bytes,
        # requests in flight; the connection cap itself is enforced at connection time
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=limits.keep_alive_timeout,
        timeout_graceful_shutdown=math.ceil(limits.graceful_shutdown_timeout),
        server_header=False,
    )
