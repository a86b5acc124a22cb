"""The HTTP API (FastAPI): ``create_app(engine)`` builds it, ``serve(...)`` runs it.

Everything lives under ``/v1`` except ``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI
documents (``/docs``, ``/openapi.json``) and the web page at ``/``.  Errors are JSON
``{"error": code, "detail": sentence}``; bad input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from serendip import __version__
from serendip.errors import ConfigError, DataError, SerendipError, StoreError, UnknownIdError
from serendip.privacy import read_key_file
from serendip.service import schemas as S
from serendip.service.auth import GUARD_ROLE, MISS, Authenticator, key_from_headers, require
from serendip.service.engine import Engine, NotReadyError
from serendip.service.limits import (
    SECURITY_HEADERS,
    FailureLimiter,
    ServerLimits,
    TokenBuckets,
)
from serendip.service.metrics import Metrics
from serendip.store import redact_url
from serendip.store.base import ROLES, EventRecord, ItemRecord, Role, UserRecord

__all__ = ["create_app", "serve", "DEFAULT_MAX_BODY", "MAX_ADMIN_KEYS", "SECURITY_HEADERS"]

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); larger ones get 413.
DEFAULT_MAX_BODY = 1 << 20
#: /readyz header naming the published model version served (shared model directory only)
MODEL_VERSION_HEADER = "X-Serendip-Model-Version"
#: Most active admin keys a store may hold; creating one more is refused (409).
MAX_ADMIN_KEYS = 5
STATIC_DIR = Path(__file__).parent / "static"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

IdPath = Annotated[
    str,
    PathParam(min_length=1, max_length=S.MAX_ID, pattern=S.ID_PATTERN,
              description="an external id: 1-256 characters, no '/', no control characters"),
    AfterValidator(S._storable),
]
K = Annotated[int, QueryParam(ge=1, le=100, description="list length")]
#: The role of a key admitted with at least 'read' (routes whose behaviour depends on it).
ReadRole = Annotated[Role, Depends(require("read"))]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.Error, "description": desc}
    for code, desc in ((400, "bad input"), (401, "missing or invalid API key"),
                       (403, "the key's role is too low"), (404, "unknown id"),
                       (408, "the request was not sent in time"),
                       (413, "request body too large"), (422, "invalid request"),
                       (429, "too many requests (see Retry-After)"),
                       (503, "model not loaded yet, or the store is unreachable"))
}
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
          429: "too_many_requests", 500: "internal", 503: "unavailable"}


def _error(status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class _TooLarge(HTTPException):
    """Raised while reading a body past the limit; FastAPI passes HTTPExceptions through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes",
                         headers={"Connection": "close"})


class _BodyTimeout(HTTPException):
    """Raised when the body is not complete in time (the connection is then closed)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body was not complete within {seconds:g} seconds",
                         headers={"Connection": "close"})


def _store_outage(exc: BaseException) -> int | None:
    """Seconds to suggest in Retry-After when ``exc`` says the store is unreachable, else None.

    Recognises the store's own errors and the drivers' connection-level ones by class name,
    so that neither driver is imported here.
    """
    if isinstance(exc, StoreError):
        return int(getattr(exc, "retry_after", 5) or 5)
    for cls in type(exc).__mro__:
        module = cls.__module__.split(".")[0]
        if (cls.__name__ == "OperationalError" and module in ("sqlite3", "psycopg")) or (
                cls.__name__ == "PoolTimeout" and module == "psycopg_pool"):
            return 5
    return None


class GuardMiddleware:
    """Plain ASGI middleware in front of every request (no BaseHTTPMiddleware overhead):

    - authenticates before anything else, from the headers alone: a request to a protected
      route without a valid key gets 401, with a key whose role is too low 403, and its body is
      never read; failed authentications are counted per client address (429 with
      Retry-After past ``limits.auth_failure_limit`` a window) and requests per key go through
      a token bucket (429 when it is empty);
    - answers 404 for unknown ``/v1`` paths and 405 (with Allow) for a known path with another
      method;
    - limits the body to ``max_body`` bytes (413) and its reading to ``limits.body_timeout``
      seconds (408, connection closed);
    - answers 503 with Retry-After when the store is unreachable and a JSON 500 (logged) for any
      other unexpected error, without dropping the connection;
    - adds ``SECURITY_HEADERS`` to every response and records Prometheus request metrics.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, router: Any,
                 auth: Authenticator, limits: ServerLimits) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.router = router
        self.auth = auth
        self.limits = limits
        self.failures = FailureLimiter(limits.auth_failure_limit, limits.auth_failure_window)
        self.buckets = TokenBuckets(limits.key_rate, limits.key_burst)
        self._minimum: dict[int, Role | None] = {}
        self.static_paths = {"/"} | {
            "/" + p.name for p in STATIC_DIR.glob("*") if p.is_file()}

    # ------------------------------------------------------------------ routing
    def _route(self, scope: Scope) -> tuple[Any, set[str]]:
        """The API route that fully matches, else None and the methods of routes whose path
        matches (empty when none does)."""
        methods: set[str] = set()
        for route in self.router.routes:
            if isinstance(route, Mount):
                continue
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route, methods
            if match is Match.PARTIAL:
                methods |= set(getattr(route, "methods", None) or ())
        return None, methods

    def _minimum_role(self, route: Any) -> Role | None:
        """The lowest role the route admits (its ``require`` dependency); every ``/v1`` route
        needs at least a read key even if it declares none (fail closed)."""
        key = id(route)
        if key not in self._minimum:
            found: list[Any] = []
            for dep in getattr(route, "dependencies", ()):
                found.append(getattr(getattr(dep, "dependency", None), "minimum_role", None))
            for dep in getattr(getattr(route, "dependant", None), "dependencies", ()):
                found.append(getattr(getattr(dep, "call", None), "minimum_role", None))
            roles = [r for r in found if r in ROLES]
            if not roles and str(getattr(route, "path", "")).startswith("/v1/"):
                roles = ["read"]
            self._minimum[key] = max(roles, key=ROLES.index) if roles else None
        return self._minimum[key]

    # ------------------------------------------------------------------ the request
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = scope.get("headers", [])
        has_body = any(n in (b"content-length", b"transfer-encoding") and v not in (b"0", b"")
                       for n, v in headers)
        # "body_done": the whole body was read (or there is none)
        status: dict[str, Any] = {"code": 500, "started": False, "body_done": not has_body}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                status["started"] = True
                out = list(message.get("headers", []))
                present = {bytes(n).lower() for n, _ in out}
                out += [h for h in SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": out}
            await send(message)

        async def reply(code: int, detail: str, extra: dict[str, str] | None = None) -> None:
            hdrs = dict(extra or {})
            if not status["body_done"]:
                hdrs["Connection"] = "close"  # a body left unread: do not keep the connection
            await _error(code, _CODES.get(code, "http_error"), detail, headers=hdrs)(
                scope, receive, send_wrapper)

        try:
            try:
                admitted = await self._admit(scope, headers, reply)
            except Exception as e:  # the key look-up reached a store that does not answer
                wait = _store_outage(e)
                if wait is None:
                    raise
                log.warning("store unavailable while checking a key: %s", e)
                await reply(503, "the store is unavailable; retry shortly",
                            {"Retry-After": str(wait)})
                admitted = False
            if admitted:
                await self._call_app(scope, receive, send_wrapper, reply, status)
        finally:
            self._observe(scope, status["code"], t0)

    async def _admit(self, scope: Scope, headers: list[tuple[bytes, bytes]],
                     reply: Callable[..., Awaitable[None]]) -> bool:
        """Routing, authentication and rate limits, from the request head only."""
        state = scope.setdefault("state", {})
        state.pop(GUARD_ROLE, None)
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        if method == "OPTIONS":
            return True  # CORS preflights carry no key
        route, methods = self._route(scope)
        if route is None:
            if methods:
                allow = ", ".join(sorted(methods))
                await reply(405, f"{method} is not allowed on {path}; allowed: {allow}",
                            {"Allow": allow})
                return False
            api = path == "/v1" or path.startswith("/v1/")
            if api or (method not in ("GET", "HEAD") and path not in self.static_paths
                       and not path.startswith("/docs/assets/")):
                await reply(404, f"no route {path}")
                return False
            return True
        scope["route"] = route  # metrics label (the router sets it again)
        minimum = self._minimum_role(route)
        if minimum is None:
            return True
        key = key_from_headers(headers)
        if not key:
            await reply(401, "missing API key: send it as the X-API-Key header or "
                        "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
            return False
        client = scope.get("client")
        addr = str(client[0]) if client else "unknown"
        role = self.auth.cached(key)
        if role is MISS:
            wait = self.failures.retry_after(addr)
            if wait > 0:
                await reply(429, "too many failed authentications from this address; retry "
                            f"in {_retry_after(wait)} seconds", {"Retry-After": _retry_after(wait)})
                return False
            role = await run_in_threadpool(self.auth.role, key)
        if role is None:
            self.failures.fail(addr)
            await reply(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
            return False
        assert isinstance(role, str)
        if ROLES.index(role) < ROLES.index(minimum):  # type: ignore[arg-type]
            await reply(403, f"this route needs a {minimum!r} key; the key given has role "
                        f"{role!r}")
            return False
        wait = self.buckets.take(Authenticator.digest(key))
        if wait > 0:
            await reply(429, f"too many requests with this API key (at most "
                        f"{self.limits.key_rate:g} a second); retry in {_retry_after(wait)} "
                        "seconds", {"Retry-After": _retry_after(wait)})
            return False
        state[GUARD_ROLE] = role
        return True

    async def _call_app(self, scope: Scope, receive: Receive, send: Send,
                        reply: Callable[..., Awaitable[None]], status: dict[str, Any]) -> None:
        limit = self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await reply(413, f"request body exceeds the limit of {limit} bytes")
                    return
        received = 0
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout

        async def receive_wrapper() -> Message:
            nonlocal received
            if status["body_done"]:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout(self.limits.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
                status["body_done"] = not message.get("more_body", False)
            else:
                status["body_done"] = True
            return message

        try:
            await self.app(scope, receive_wrapper, send)
        except (_TooLarge, _BodyTimeout) as e:
            if status["started"]:
                raise
            status["body_done"] = False  # what is left of it is not read
            await reply(e.status_code, str(e.detail))
        except Exception as e:
            if status["started"]:
                raise  # a response half sent: the server closes the connection
            wait = _store_outage(e)
            if wait is not None:
                log.warning("store unavailable on %s %s: %s", scope.get("method"),
                            scope.get("path"), e)
                await reply(503, "the store is unavailable; retry later (the server log "
                            "says why)", {"Retry-After": str(wait)})
                return
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await reply(500, f"internal error ({type(e).__name__}); see the server log")

    def _observe(self, scope: Scope, code: int, t0: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or ("/" if scope.get("path") == "/" else "unmatched")
        self.metrics.observe(scope.get("method", "GET"), path, code, time.perf_counter() - t0)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) if parts else "body"


def _encoder_loaded(engine: Engine) -> bool:
    """Whether the engine's text encoder is loaded (the engine, or its lifecycle, says)."""
    for owner in (engine, getattr(engine, "lifecycle", None)):
        loaded = getattr(owner, "encoder_loaded", None)
        if loaded is not None:
            return bool(loaded() if callable(loaded) else loaded)
    return getattr(engine, "_encoder", None) is not None


def create_app(engine: Engine, *, static_keys: dict[str, Role] | None = None,
               max_body: int = DEFAULT_MAX_BODY, cors_origin: str | None = None,
               start_engine: bool = False, limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI application over ``engine``.

    ``start_engine=True`` starts the engine in a background thread when the app starts
    (``/readyz`` answers 503 until the model is loaded); tests pass a started engine.
    ``limits`` gives the body-read deadline and the rate limits (``ServerLimits()`` when None).
    """
    metrics = Metrics()
    limits = limits or ServerLimits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if start_engine and not engine.ready:
            engine.start_background()
        yield
        engine.close()  # write the impressions still queued

    app = FastAPI(
        title="serendip", version=__version__, lifespan=lifespan,
        description="Recommendations that find what people did not know they wanted. "
                    "Authenticate with the X-API-Key header (or Authorization: Bearer).",
        responses=_ERRORS,  # type: ignore[arg-type]
        docs_url=None, redoc_url=None,  # /docs is served from this process (swagger.py)
    )
    auth = Authenticator(engine.store, static_keys)
    app.state.engine = engine
    app.state.auth = auth
    app.state.metrics = metrics
    engine.on_impression = metrics.impression

    from serendip.service.swagger import add_docs

    add_docs(app)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            loc = tuple(e.get("loc", ()))
            message = str(e.get("msg", ""))
            if e.get("type") == "json_invalid":
                reason = str((e.get("ctx") or {}).get("error", "")) or message
                at = loc[-1] if len(loc) > 1 and isinstance(loc[-1], int) else None
                message = reason + (f" (at character {at})" if at is not None else "")
                loc = ("body",)
            elif e.get("type") == "string_pattern_mismatch" and (
                    (e.get("ctx") or {}).get("pattern") == S.ID_PATTERN):
                message = "an id must not contain '/' or control characters"
            elif loc == ("body",) and e.get("type") == "missing":
                message = "a JSON body is required"
            elif loc == ("body",) and e.get("type") in ("model_attributes_type", "dict_type"):
                got = e.get("input")
                kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
                        float: "a number", type(None): "null"}.get(type(got))
                message = "expected a JSON object, got " + (
                    kind or "a body that is not JSON (send Content-Type: application/json)")
            errors.append({"field": _field_name(loc), "message": message,
                           "type": str(e.get("type", ""))})
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON: "
                          + "; ".join(e["message"] for e in errors), errors)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:10])
        return _error(422, "invalid_request", detail or "invalid request", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            cause = exc.__cause__
            detail = ("the request body could not be parsed"
                      + (f": {type(cause).__name__}: {cause}" if cause else "")
                      + " (send UTF-8 JSON with Content-Type: application/json)")
        return _error(exc.status_code, _CODES.get(exc.status_code, "http_error"), detail,
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownIdError)
    async def _unknown(request: Request, exc: UnknownIdError) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(NotReadyError)
    async def _not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return _error(503, "not_ready", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(ConfigError)
    @app.exception_handler(DataError)
    async def _bad(request: Request, exc: SerendipError) -> JSONResponse:
        return _error(400, "bad_request", str(exc))

    # ------------------------------------------------------------------ health & metrics
    @app.get("/healthz", response_model=S.Status, tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.Ready, tags=["health"],
             responses={503: {"model": S.Error}})
    def readyz(response: Response) -> Any:
        """Ready when the model is loaded, the text encoder too (when the engine warms it)
        and the store answers.  Instances sharing a model directory also say which published
        model version they serve (``X-Serendip-Model-Version``), so a load balancer or an
        operator can see every replica follow a retrain."""
        age = engine.model_age()
        model_version = getattr(engine, "model_version", None)
        extra: dict[str, Any] = {}
        if model_version is not None:
            response.headers[MODEL_VERSION_HEADER] = str(model_version)
            extra = {"model_version": model_version}
        if age is None:
            detail = engine.start_error or "the model is loading"
            return _error(503, "not_ready", detail, headers={"Retry-After": "5"})
        if getattr(engine.config, "warm_encoder", False) and not _encoder_loaded(engine):
            failed = engine.lifecycle.encoder_error
            if failed is None:
                return _error(503, "not_ready", "the text encoder is loading",
                              headers={"Retry-After": "5"})
            # lists work without it; only search needs it: ready, and say what is degraded
            return {"status": "degraded", "model_age_seconds": round(age, 3),
                    "detail": f"search is unavailable: the text encoder failed to load "
                              f"({failed})", "generator": generator_name(), **extra}
        ping = getattr(engine.store, "ping", None)
        if ping is not None:
            try:
                ping()
            except Exception as e:  # any failure to answer means: not ready
                log.warning("readiness: the store does not answer: %s", e)
                return _error(503, "unavailable", "the store does not answer (the server log "
                              "says why)", headers={"Retry-After": str(_store_outage(e) or 5)})
        return {"status": "ready", "model_age_seconds": round(age, 3),
                "generator": generator_name(), **extra}

    def generator_name() -> str | None:
        gen = getattr(engine, "generator", None)
        return None if gen is None else str(gen.model)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    def prometheus() -> PlainTextResponse:
        def gauges() -> dict[str, tuple[str, float | None]]:
            return {
                "serendip_model_age_seconds": ("Seconds since the served model was fitted.",
                                               engine.model_age()),
                "serendip_model_ready": ("1 once a model is loaded.", 1.0 if engine.ready else 0.0),
                "serendip_model_version": ("Models installed by this process.",
                                           float(engine.version)),
                "serendip_impressions_pending": ("Impressions queued, not yet written.",
                                                 float(engine.impression_writer.pending)),
            }

        def counters() -> dict[str, tuple[str, float | None]]:
            w = engine.impression_writer.stats()
            return {
                "serendip_impressions_written_total": (
                    "Impressions written to the store by the background writer.", w["written"]),
                "serendip_impressions_dropped_total": (
                    "Impressions dropped because the write queue was full.", w["dropped"]),
                "serendip_impressions_lost_total": (
                    "Impressions whose write failed (not stored).", w["lost"]),
                "serendip_impression_write_failures_total": (
                    "Impression batch writes that raised an error.", w["failed"]),
            }

        return PlainTextResponse(metrics.render(gauges, counters),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ catalog
    write, admin = Depends(require("write")), Depends(require("admin"))
    read = Depends(require("read"))

    @app.put("/v1/items", response_model=S.Upserted, tags=["items"], dependencies=[write])
    def put_items(body: S.ItemsIn) -> dict[str, Any]:
        n = engine.upsert_items([ItemRecord(it.item_id, dict(it.fields)) for it in body.items])
        return {"upserted": n}

    @app.get("/v1/items/{item_id}", response_model=S.ItemOut, tags=["items"], dependencies=[read])
    def get_item(item_id: IdPath) -> dict[str, Any]:
        rec = engine.store.get_item(item_id)
        if rec is None:
            raise UnknownIdError(f"unknown item id {item_id!r}")
        return {"item_id": rec.item_id, "fields": rec.fields}

    @app.delete("/v1/items/{item_id}", response_model=S.Deleted, tags=["items"],
                dependencies=[write])
    def delete_item(item_id: IdPath) -> dict[str, Any]:
        return {"deleted": engine.delete_item(item_id)}

    @app.get("/v1/items/{item_id}/similar", response_model=S.Similar, tags=["items"],
             dependencies=[read])
    def similar(item_id: IdPath, k: K = 10) -> dict[str, Any]:
        return engine.similar(item_id, k)

    # ------------------------------------------------------------------ users & events
    @app.put("/v1/users", response_model=S.Upserted, tags=["users"], dependencies=[write])
    def put_users(body: S.UsersIn) -> dict[str, Any]:
        n = engine.store.upsert_users([UserRecord(u.user_id, dict(u.fields)) for u in body.users])
        return {"upserted": n}

    @app.get("/v1/users", response_model=S.UserList, tags=["users"], dependencies=[read])
    def list_users(limit: Annotated[int, QueryParam(ge=1, le=1000)] = 50) -> dict[str, Any]:
        return {"users": engine.top_users(limit)}

    @app.get("/v1/users/{user_id}/history", response_model=S.History, tags=["users"],
             dependencies=[read])
    def history(user_id: IdPath, limit: Annotated[int, QueryParam(ge=1, le=1000)] = 20
                ) -> dict[str, Any]:
        return {"user_id": user_id, "items": engine.history_rows(user_id, limit)}

    @app.delete("/v1/users/{user_id}", response_model=dict[str, Any], tags=["users"],
                dependencies=[admin])
    def erase_user(user_id: IdPath) -> dict[str, Any]:
        """Erase everything stored about a person (events, impressions, user record); the
        answer counts what was removed."""
        return dict(engine.erase_user(user_id))

    @app.get("/v1/users/{user_id}/export", response_model=dict[str, Any], tags=["users"],
             dependencies=[admin])
    def export_user(user_id: IdPath) -> dict[str, Any]:
        """Everything stored about a person, as one JSON document."""
        return dict(engine.export_user(user_id))

    @app.post("/v1/events", status_code=201, response_model=S.Acks, tags=["events"],
              dependencies=[write])
    def post_events(body: S.EventsIn) -> dict[str, Any]:
        acks = engine.append_events([
            EventRecord(e.user_id, e.item_id, e.type, e.timestamp, e.value, e.idempotency_key)
            for e in body.events
        ])
        dup = sum(a.duplicate for a in acks)
        metrics.events(len(acks) - dup, dup)
        return {"acks": [{"event_id": a.event_id, "duplicate": a.duplicate} for a in acks]}

    # ------------------------------------------------------------------ recommendations
    @app.get("/v1/users/{user_id}/recommendations", response_model=S.Recommendations,
             tags=["recommendations"])
    def recommendations(
        user_id: IdPath,
        role: ReadRole,
        k: K = 10,
        preset: Annotated[str | None, QueryParam(
            min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
            description="a preset name from /v1/presets (default: balanced)")] = None,
        discovery: Annotated[float | None, QueryParam(ge=0.0, le=1.0, allow_inf_nan=False)] = None,
        explore: Annotated[float | None, QueryParam(
            ge=0.0, le=1.0, allow_inf_nan=False,
            description="exploration rate: the chance that a slot shows an item from just below "
                        "the list, logged with its propensity (default: the preset's, usually 0)",
        )] = None,
        filter: Annotated[  # the contract's parameter name
            list[str] | None,
            QueryParam(max_length=10, description="field:value, e.g. genres:Comedy (all must match)"),
        ] = None,
        prose: Annotated[Literal["template", "generator"], QueryParam(
            description="'generator': ask the configured generator for each item's prose "
                        "(fact-checked, within a deadline; templates otherwise)")] = "template",
    ) -> dict[str, Any]:
        filters = filter or []
        for f in filters:
            if len(f) > 300:
                raise ConfigError(f"filter is too long ({len(f)} characters, at most 300)")
        # only lists served to write and admin keys teach bandit presets: a read key (a
        # public front end, say) must not move the shared learned weights
        return engine.recommend(user_id, k, preset, discovery, filters, explore,
                                learn=role != "read", prose=prose)

    @app.post("/v1/sessions/recommendations", response_model=S.Recommendations,
              tags=["recommendations"])
    def session_recommendations(body: S.SessionIn, role: ReadRole) -> dict[str, Any]:
        return engine.recommend_session(body.item_ids, body.k, body.preset, body.discovery,
                                        learn=role != "read")

    @app.post("/v1/conversations", response_model=S.ConversationTurn,
              tags=["recommendations"], dependencies=[read])
    def start_conversation(body: S.ConversationIn) -> dict[str, Any]:
        """Start a conversation with a first message; the answer carries its id."""
        if not body.message.strip():
            raise ConfigError("message must contain some text, got only whitespace")
        return engine.converse(body.message, None, body.user_id, body.k)

    @app.post("/v1/conversations/{conversation_id}/messages", response_model=S.ConversationTurn,
              tags=["recommendations"], dependencies=[read])
    def continue_conversation(conversation_id: IdPath, body: S.MessageIn) -> dict[str, Any]:
        """The next message of a conversation: it refines what the earlier ones said."""
        if not body.message.strip():
            raise ConfigError("message must contain some text, got only whitespace")
        return engine.converse(body.message, conversation_id, None, body.k)

    @app.get("/v1/conversations/{conversation_id}", tags=["recommendations"],
             dependencies=[read])
    def get_conversation(conversation_id: IdPath) -> dict[str, Any]:
        """A stored conversation: its state and messages (resumable)."""
        return engine.conversation(conversation_id)

    @app.post("/v1/search", response_model=S.SearchResults, tags=["recommendations"],
              dependencies=[read])
    def search(body: S.SearchIn) -> dict[str, Any]:
        if not body.query.strip():
            raise ConfigError("query must contain some text, got only whitespace")
        return engine.search(body.query, body.user_id, body.k, body.discovery)

    @app.get("/v1/users/{user_id}/recommendations/{item_id}/explain",
             response_model=S.Explanation, tags=["recommendations"], dependencies=[read])
    def explain(user_id: IdPath, item_id: IdPath) -> dict[str, Any]:
        return engine.explain(user_id, item_id)

    @app.get("/v1/presets", response_model=S.Presets, tags=["recommendations"],
             dependencies=[read])
    def presets() -> dict[str, Any]:
        return {"presets": engine.presets()}

    # ------------------------------------------------------------------ admin
    @app.post("/v1/admin/retrain", status_code=202, response_model=S.Job, tags=["admin"],
              dependencies=[admin])
    def retrain() -> dict[str, Any]:
        return engine.retrain().as_dict()

    @app.get("/v1/admin/jobs/{job_id}", response_model=S.Job, tags=["admin"],
             dependencies=[admin])
    def job(job_id: IdPath) -> dict[str, Any]:
        return engine.job(job_id).as_dict()

    @app.get("/v1/admin/ope", response_model=S.OffPolicy, tags=["admin"], dependencies=[admin])
    def off_policy(
        preset: Annotated[list[str] | None, QueryParam(
            max_length=20, description="presets to evaluate (default: every preset served)")] = None,
        explore: Annotated[float, QueryParam(ge=0.0, le=1.0, allow_inf_nan=False,
                                             description="the targets' exploration rate")] = 0.0,
        window: Annotated[float, QueryParam(gt=0.0, le=365 * 86400.0, allow_inf_nan=False,
                                            description="seconds after a list in which an "
                                            "event on a shown item counts as its reward")] = 86400.0,
        limit: Annotated[int, QueryParam(ge=1, le=100_000,
                                         description="most recent impressions used")] = 2000,
    ) -> dict[str, Any]:
        return engine.off_policy(preset or None, explore, window, limit)

    @app.post("/v1/admin/keys", status_code=201, response_model=S.KeyOut, tags=["admin"],
              dependencies=[admin], responses={409: {"model": S.Error}})
    def create_key(body: S.KeyIn) -> Any:
        try:
            key = engine.store.create_api_key(
                body.name, body.role, max_active=MAX_ADMIN_KEYS if body.role == "admin" else None)
        except ConfigError as e:
            if "already exists" in str(e) or "the limit is" in str(e):
                return _error(409, "conflict", str(e))
            raise
        return {"name": body.name, "role": body.role, "key": key}

    @app.get("/v1/keys", response_model=S.KeyList, tags=["admin"], dependencies=[admin])
    def list_keys() -> dict[str, Any]:
        """Every API key, revoked ones included: name, role and dates, never a key or hash."""
        return {"keys": [
            {"name": k.name, "role": k.role, "created_at": k.created_at,
             "revoked": k.revoked_at is not None, "revoked_at": k.revoked_at}
            for k in engine.store.list_api_keys()
        ]}

    @app.delete("/v1/keys/{name}", response_model=S.Revoked, tags=["admin"],
                dependencies=[admin])
    def revoke_key(name: IdPath) -> Any:
        """Revoke a key: it stops working at once in this process (other processes on the
        same store drop it from their key cache within 30 seconds).  The last active admin
        key cannot be revoked here: that would lock every administrator out of the API."""
        try:
            done = engine.store.revoke_api_key(name, keep_last_admin=True)
        except ConfigError as e:  # the last admin key, checked inside the transaction
            return _error(409, "conflict", str(e))
        if not done:
            raise UnknownIdError(f"no active API key named {name!r}")
        auth.forget()
        return {"name": name, "revoked": True}

    # ------------------------------------------------------------------ web page
    if (STATIC_DIR / "index.html").exists():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def index() -> str:
            return "<!doctype html><title>serendip</title><p>serendip API: see <a href='/docs'>/docs</a>."

    if cors_origin:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=[cors_origin],
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(GuardMiddleware, metrics=metrics, max_body=max_body,  # type: ignore[arg-type]
                       router=app.router, auth=auth, limits=limits)
    return app


def _display_url(store: Any) -> str:
    """The store's URL without its password, for printing."""
    shown = getattr(store, "display_url", None)
    return shown if isinstance(shown, str) else redact_url(str(store.url))


def _admin_key(store: Any, data_dir: Path) -> str:
    """The admin key kept in ``<data_dir>/admin.key`` (0600), created on the first start of a
    store that has no admin key.

    The store holds only a hash, so the plaintext printed at start-up lives in this file.  A
    store that already has an active admin key (another data directory made it, or the file
    was lost) gets no new one: a ConfigError says how to go on.
    """
    path = data_dir / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        if key and store.check_api_key(key) == "admin":
            return key
    if store.count_api_keys(role="admin") > 0:
        why = "holds no valid admin key" if path.exists() else "does not exist"
        raise ConfigError(
            f"the store {_display_url(store)} already has an admin API key and {path} {why}: "
            "pass an admin key with --api-key (create one with `serendip keys create --name NAME "
            "--role admin`)"
        )
    name = "admin"
    try:
        key = store.create_api_key(name, "admin")
    except ConfigError:  # a revoked key holds the name "admin"
        name = f"admin-{int(time.time())}"
        key = store.create_api_key(name, "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".admin.key.tmp")
    tmp.write_text(key + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


_LIMIT_DEFAULTS = ServerLimits()


def _preset_file(path: str, load: Any) -> Any:
    """A preset TOML file given to ``serve --preset`` (an error names a missing file)."""
    if not path.endswith(".toml"):
        raise ConfigError(f"--preset takes a .toml file, got {path!r}")
    if not Path(path).is_file():
        raise ConfigError(f"preset file not found: {path!r}")
    preset = load(path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", preset.name):
        raise ConfigError(
            f"preset name {preset.name!r} (from {path!r}) cannot be requested over HTTP: use "
            "1 to 64 letters, digits, '_', '.' or '-' (rename the file or set 'name')"
        )
    return preset


def serve(*, store_url: str | None = None, data_dir: str | Path = "serendip-data",
          host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          cors_origin: str | None = None, seed_interactions: str | None = None,
          seed_items: str | None = None, fit_config: str | None = None,
          max_body: int = DEFAULT_MAX_BODY, log_level: str = "warning",
          presets: Sequence[str] = (), refresh_interval: float | None = 60.0,
          unknown_items: str = "error", sep: str | None = None,
          items_sep: str | None = None, encoding: str | None = None,
          max_header_bytes: int = _LIMIT_DEFAULTS.max_header_bytes,
          header_timeout: float = _LIMIT_DEFAULTS.header_timeout,
          body_timeout: float = _LIMIT_DEFAULTS.body_timeout,
          keep_alive_timeout: int = _LIMIT_DEFAULTS.keep_alive_timeout,
          max_connections: int = _LIMIT_DEFAULTS.max_connections,
          graceful_shutdown_timeout: float = _LIMIT_DEFAULTS.graceful_shutdown_timeout,
          auth_failure_limit: int = _LIMIT_DEFAULTS.auth_failure_limit,
          auth_failure_window: float = _LIMIT_DEFAULTS.auth_failure_window,
          key_rate: float = _LIMIT_DEFAULTS.key_rate,
          key_burst: int = _LIMIT_DEFAULTS.key_burst,
          retention_days: float | None = None, user_id_key_file: str | None = None,
          catalog_poll: float | None = 1.0, generator: Any = None,
          generator_deadline: float = 10.0, shared_model_dir: str | Path | None = None,
          role: str = "primary", model_poll: float | None = 1.0) -> int:
    """Run the service with uvicorn (one worker) until interrupted; the `serve` command.

    The limit keyword arguments are the fields of :class:`ServerLimits` (see there).
    ``retention_days``: impressions (with logged search text) older than this are deleted;
    ``user_id_key_file``: pseudonymise user ids with this key (``serendip.privacy``);
    ``catalog_poll``: seconds between checks of the store's catalog version;
    ``sep`` / ``items_sep`` / ``encoding``: the seed events' and catalog's CSV delimiters
    (each found from its header when None) and their text encoding (None: UTF-8);
    ``generator``: a :class:`serendip.llm.GeneratorConfig` (None: templates and rules only),
    whose answers a request waits for at most ``generator_deadline`` seconds;
    ``shared_model_dir`` / ``role`` / ``model_poll``: several instances over one store
    (docs/deployment.md, ``EngineConfig``).

    Seeding an empty store happens before the server listens, all or nothing: a bad seed file
    raises its one-line error and leaves the store as it was.
    """
    import sys
    import threading

    import uvicorn

    from serendip.pipeline import load_fit_config, load_preset
    from serendip.service.engine import EngineConfig
    from serendip.service.limits import server_config
    from serendip.store import open_store

    limits = ServerLimits(
        max_header_bytes=max_header_bytes, header_timeout=header_timeout,
        body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections, graceful_shutdown_timeout=graceful_shutdown_timeout,
        auth_failure_limit=auth_failure_limit, auth_failure_window=auth_failure_window,
        key_rate=key_rate, key_burst=key_burst,
    )
    t0 = time.perf_counter()
    ddir = Path(data_dir).expanduser().resolve()
    ddir.mkdir(parents=True, exist_ok=True)
    url = store_url or f"sqlite:///{ddir / 'serendip.db'}"
    store = open_store(url)
    cfg = EngineConfig(
        data_dir=ddir, fit_config=load_fit_config(fit_config) if fit_config else None,
        seed_interactions=seed_interactions, seed_items=seed_items, warm_encoder=True,
        seed_sep=sep, seed_items_sep=items_sep, seed_encoding=encoding,
        progress=sys.stderr.isatty(),
        unknown_items=unknown_items,
        presets=tuple(_preset_file(p, load_preset) for p in presets),
        refresh_interval=refresh_interval,
        retention=None if retention_days is None else retention_days * 86_400.0,
        user_id_key=read_key_file(user_id_key_file) if user_id_key_file else None,
        catalog_poll=catalog_poll, generator=generator, generator_deadline=generator_deadline,
        shared_model_dir=(None if shared_model_dir is None
                          else Path(shared_model_dir).expanduser().resolve()),
        role=role, model_poll=model_poll,
    )
    try:
        engine = Engine(store, cfg)
        if store.count_items() == 0 or (seed_interactions is not None
                                        and store.count_events() == 0):
            print("seeding the store" + (f" from {seed_interactions}" if seed_interactions
                                         else " with MovieLens-100K") + " ...", flush=True)
            try:
                engine.seed()
            except SerendipError as e:
                raise type(e)(f"{e}; nothing was stored: fix the file and start again") from None
        key = api_key or _admin_key(store, ddir)
    except BaseException:
        store.close()
        raise
    static = {api_key: "admin"} if api_key else None
    app = create_app(engine, static_keys=static, max_body=max_body,  # type: ignore[arg-type]
                     cors_origin=cors_origin, limits=limits)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"serendip {__version__}: store {_display_url(store)}, data {ddir}", flush=True)
    print(f"web page: http://{shown}:{port}/#key={key}", flush=True)
    print(f"admin API key: {key}", flush=True)
    if generator is not None:
        where = generator.base_url or generator.model_dir
        print(f"text generator: {engine.generator.model if engine.generator else '?'} "
              f"({where}); answers waited for at most {generator_deadline:g}s", flush=True)

    def one_thread_per_request() -> None:
        # Requests run concurrently in a thread pool; BLAS/OpenMP pools inside each one would
        # oversubscribe the cores (and spin), so numeric libraries get one thread each.
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)

    def start() -> None:
        t1 = time.perf_counter()
        one_thread_per_request()
        try:
            engine.start()
            one_thread_per_request()  # libraries loaded by the start (torch's OpenMP)
        except Exception as e:
            engine.start_error = f"{type(e).__name__}: {e}"
            log.exception("engine start failed")
            print(f"serendip: model failed to load: {engine.start_error}", file=sys.stderr,
                  flush=True)
            return
        s = engine.state
        print(f"model ready in {time.perf_counter() - t1:.1f}s ({s.rec.data.describe()}); "
              f"started {time.perf_counter() - t0:.1f}s after launch", flush=True)

    threading.Thread(target=start, name="serendip-start", daemon=True).start()
    try:
        uvicorn.Server(server_config(app, limits, host=host, port=port,
                                     log_level=log_level)).run()
    finally:
        engine.close()  # normally done by the app's shutdown already
        store.close()
    return 0
