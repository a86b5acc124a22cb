"""The HTTP API (FastAPI): ``create_app(engine)`` builds it, ``serve(...)`` runs it.

Everything lives under ``/v1`` except ``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI
documents (``/docs``, ``/openapi.json``) and the web page at ``/``.  Errors are JSON
``{"error": code, "detail": sentence}``; bad input never yields a 5xx.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serendip import __version__
from serendip.errors import ConfigError, DataError, SerendipError, UnknownIdError
from serendip.service import schemas as S
from serendip.service.auth import Authenticator, depends
from serendip.service.engine import Engine, NotReadyError
from serendip.service.metrics import Metrics
from serendip.store.base import EventRecord, ItemRecord, Role, UserRecord

__all__ = ["create_app", "DEFAULT_MAX_BODY"]

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); larger ones get 413.
DEFAULT_MAX_BODY = 1 << 20
STATIC_DIR = Path(__file__).parent / "static"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

IdPath = Annotated[str, PathParam(min_length=1, max_length=S.MAX_ID, description="an external id")]
K = Annotated[int, QueryParam(ge=1, le=100, description="list length")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.Error, "description": desc}
    for code, desc in ((400, "bad input"), (401, "missing or invalid API key"),
                       (403, "the key's role is too low"), (404, "unknown id"),
                       (413, "request body too large"), (422, "invalid request"),
                       (503, "model not loaded yet"))
}


def _error(status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


class _TooLarge(HTTPException):
    """Raised while reading a body past the limit; FastAPI passes HTTPExceptions through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class GuardMiddleware:
    """Request body limit (413) and Prometheus request metrics, as plain ASGI (no overhead of
    BaseHTTPMiddleware on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}
        limit = self.max_body

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                status["started"] = True
            await send(message)

        too_large = _error(413, "payload_too_large",
                           f"request body exceeds the limit of {limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await too_large(scope, receive, send_wrapper)
                    self._observe(scope, status["code"], t0)
                    return
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _TooLarge:
            if not status["started"]:
                await too_large(scope, receive, send_wrapper)
        finally:
            self._observe(scope, status["code"], t0)

    def _observe(self, scope: Scope, code: int, t0: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or ("/" if scope.get("path") == "/" else "unmatched")
        self.metrics.observe(scope.get("method", "GET"), path, code, time.perf_counter() - t0)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) if parts else "body"


def create_app(engine: Engine, *, static_keys: dict[str, Role] | None = None,
               max_body: int = DEFAULT_MAX_BODY, cors_origin: str | None = None,
               start_engine: bool = False) -> FastAPI:
    """The FastAPI application over ``engine``.

    ``start_engine=True`` starts the engine in a background thread when the app starts
    (``/readyz`` answers 503 until the model is loaded); tests pass a started engine.
    """
    metrics = Metrics()

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
    )
    app.state.engine = engine
    app.state.auth = Authenticator(engine.store, static_keys)
    app.state.metrics = metrics
    engine.on_impression = metrics.impression

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", "")),
             "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON: "
                          + "; ".join(e["message"] for e in errors), errors)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:10])
        return _error(422, "invalid_request", detail or "invalid request", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
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

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal", f"internal error ({type(exc).__name__}); see the server log")

    # ------------------------------------------------------------------ health & metrics
    @app.get("/healthz", response_model=S.Status, tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.Ready, tags=["health"],
             responses={503: {"model": S.Error}})
    def readyz() -> Any:
        age = engine.model_age()
        if age is None:
            detail = engine.start_error or "the model is loading"
            return _error(503, "not_ready", detail, headers={"Retry-After": "5"})
        return {"status": "ready", "model_age_seconds": round(age, 3)}

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
    read, write, admin = depends("read"), depends("write"), depends("admin")

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
             tags=["recommendations"], dependencies=[read])
    def recommendations(
        user_id: IdPath,
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
    ) -> dict[str, Any]:
        filters = filter or []
        for f in filters:
            if len(f) > 300:
                raise ConfigError(f"filter is too long ({len(f)} characters, at most 300)")
        return engine.recommend(user_id, k, preset, discovery, filters, explore)

    @app.post("/v1/sessions/recommendations", response_model=S.Recommendations,
              tags=["recommendations"], dependencies=[read])
    def session_recommendations(body: S.SessionIn) -> dict[str, Any]:
        return engine.recommend_session(body.item_ids, body.k, body.preset, body.discovery)

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
              dependencies=[admin])
    def create_key(body: S.KeyIn) -> dict[str, Any]:
        try:
            key = engine.store.create_api_key(body.name, body.role)
        except ConfigError as e:
            if "already exists" in str(e):
                return _error(409, "conflict", str(e))  # type: ignore[return-value]
            raise
        return {"name": body.name, "role": body.role, "key": key}

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
    app.add_middleware(GuardMiddleware, metrics=metrics, max_body=max_body)
    return app


def _admin_key(store: Any, data_dir: Path) -> str:
    """The admin key kept in ``<data_dir>/admin.key`` (0600), created on first start.

    The store holds only a hash, so the plaintext printed at start-up lives in this file.
    """
    path = data_dir / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        if key and store.check_api_key(key) == "admin":
            return key
    name = "admin"
    try:
        key = store.create_api_key(name, "admin")
    except ConfigError:  # an "admin" key exists but its plaintext is lost: add another
        name = f"admin-{int(time.time())}"
        key = store.create_api_key(name, "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".admin.key.tmp")
    tmp.write_text(key + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


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
          presets: Sequence[str] = (), refresh_interval: float | None = 60.0) -> int:
    """Run the service with uvicorn (one worker) until interrupted; the `serve` command."""
    import sys
    import threading

    import uvicorn

    from serendip.pipeline import load_fit_config, load_preset
    from serendip.service.engine import EngineConfig
    from serendip.store import open_store

    t0 = time.perf_counter()
    ddir = Path(data_dir).expanduser().resolve()
    ddir.mkdir(parents=True, exist_ok=True)
    url = store_url or f"sqlite:///{ddir / 'serendip.db'}"
    store = open_store(url)
    cfg = EngineConfig(
        data_dir=ddir, fit_config=load_fit_config(fit_config) if fit_config else None,
        seed_interactions=seed_interactions, seed_items=seed_items, warm_encoder=True,
        presets=tuple(_preset_file(p, load_preset) for p in presets),
        refresh_interval=refresh_interval,
    )
    engine = Engine(store, cfg)
    key = api_key or _admin_key(store, ddir)
    static = {api_key: "admin"} if api_key else None
    app = create_app(engine, static_keys=static, max_body=max_body,  # type: ignore[arg-type]
                     cors_origin=cors_origin)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"serendip {__version__}: store {store.url}, data {ddir}", flush=True)
    print(f"web page: http://{shown}:{port}/#key={key}", flush=True)
    print(f"admin API key: {key}", flush=True)

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
        print(f"model ready in {time.perf_counter() - t1:.1f}s ({s.rec.data!r}); "
              f"started {time.perf_counter() - t0:.1f}s after launch", flush=True)

    threading.Thread(target=start, name="serendip-start", daemon=True).start()
    try:
        uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level,
                    access_log=False)
    finally:
        engine.close()  # normally done by the app's shutdown already
        store.close()
    return 0
