"""Attacks on the HTTP layer, reproduced: oversized and slow request heads, unfinished bodies,
connection floods (against a real uvicorn server on a loopback port), bodies sent without a
key, key guessing, key management, store outages and the response headers."""

from __future__ import annotations

import asyncio
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from serendip.errors import ConfigError
from serendip.service import app as app_module
from serendip.service import create_app
from serendip.service.limits import FailureLimiter, ServerLimits, TokenBuckets, server_config
from serendip.store import open_store

SHORT = 0.5  # seconds: the short timeouts the server tests run under


# ------------------------------------------------------------------------------ helpers
@contextmanager
def served(app: Any, limits: ServerLimits) -> Iterator[int]:
    """``app`` under uvicorn with ``limits``, in a thread, on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, limits, host="127.0.0.1", port=port,
                                          log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a
    close); fails if it is still open after ``limit`` seconds."""
    data = b""
    s.settimeout(limit)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except TimeoutError:
        pytest.fail(f"the server kept the connection open; got {data[:200]!r}")


def request(port: int, raw: bytes) -> bytes:
    s = connect(port)
    try:
        s.sendall(raw)
        return read_until_closed(s)
    finally:
        s.close()


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from a kept-alive connection: status, headers (lower-case), body."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"the connection closed mid-response: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def healthy(port: int) -> bool:
    out = request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return out.startswith(b"HTTP/1.1 200")


@pytest.fixture
def sqlite_store(tmp_path: Path):
    s = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    yield s
    s.close()


@pytest.fixture
def sqlite_engine(sqlite_store, tmp_path, seed_files, fitted, encoder):
    from tests.service.conftest import build_engine

    e = build_engine(sqlite_store, tmp_path, seed_files, fitted, encoder)
    yield e
    e.close()


@pytest.fixture
def sqlite_keys(sqlite_store):
    from tests.service.conftest import make_keys

    return make_keys(sqlite_store)


# ------------------------------------------------------------------------------ server limits
def test_oversized_request_head_is_refused_without_waiting_for_its_end(sqlite_engine):
    limits = ServerLimits(max_header_bytes=16 * 1024, header_timeout=30.0)
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        # a head that never ends: answered as soon as it passes the limit, not at a timeout
        s = connect(port)
        try:
            sent = 0
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                for _ in range(32):  # up to 2 MiB, stopped by the server's close
                    s.sendall(b"X-Pad: " + b"a" * 65_000 + b"\r\n")
                    sent += 65_009
            except (BrokenPipeError, ConnectionResetError):
                pass
            out = read_until_closed(s, limit=10.0)
        finally:
            s.close()
        assert out == b"" or out.startswith(b"HTTP/1.1 431"), out[:200]
        # a complete head of 100 KiB is refused too (it was answered 200 before)
        head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"b" * 100_000 + b"\r\n\r\n"
        try:
            out = request(port, head)
        except (BrokenPipeError, ConnectionResetError):
            out = b""
        assert not out.startswith(b"HTTP/1.1 200"), out[:200]
        assert out == b"" or out.startswith(b"HTTP/1.1 431"), out[:200]
        if out:
            assert b"x-frame-options: deny" in out.lower()
        # a malformed request line: 400, with the headers every response carries
        out = request(port, b"NOT A REQUEST\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400") and b"x-content-type-options: nosniff" in out.lower()
        assert healthy(port)  # the server is still fine


def test_slow_loris_and_idle_connections_are_closed_at_the_header_timeout(sqlite_engine):
    limits = ServerLimits(header_timeout=SHORT)
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        idle = connect(port)  # sends nothing at all
        slow = connect(port)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        got = b""
        closed = False
        for _ in range(200):  # one header byte every 50 ms, for at most 10 s
            try:
                slow.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([slow], [], [], 0.05)
            if readable:
                got = read_until_closed(slow)
                closed = True
                break
        slow.close()
        assert closed, "a head trickling in byte by byte was never cut off"
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]
        out = read_until_closed(idle)
        idle.close()
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        assert b"content-security-policy: default-src 'self'" in out.lower()
        assert healthy(port)


def test_unfinished_body_is_dropped_at_the_body_timeout(sqlite_engine, sqlite_keys):
    limits = ServerLimits(body_timeout=SHORT, header_timeout=30.0)
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        s = connect(port)
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"X-API-Key: " + sqlite_keys.write.encode() + b"\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b'{"events": [')
        out = read_until_closed(s)
        s.close()
        assert out.startswith(b"HTTP/1.1 408"), out[:300]
        assert b"request_timeout" in out
        assert sqlite_engine.store.count_events() > 0  # the store is untouched but alive
        assert healthy(port)


def test_keyless_unfinished_body_gets_401_at_once(sqlite_engine):
    limits = ServerLimits(body_timeout=30.0, header_timeout=30.0)
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        s = connect(port)
        s.sendall(b"PUT /v1/items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000\r\n\r\n" + b'{"items": [')
        out = read_until_closed(s)  # long before the 30 s body deadline
        s.close()
        assert out.startswith(b"HTTP/1.1 401"), out[:300]
        assert b"connection: close" in out.lower()


def test_connections_beyond_the_cap_get_503(sqlite_engine):
    limits = ServerLimits(max_connections=3, header_timeout=30.0)
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        held = [connect(port) for _ in range(3)]
        try:
            extra = connect(port)
            out = read_until_closed(extra)
            extra.close()
            assert out.startswith(b"HTTP/1.1 503"), out[:200]
            assert b"too many connections" in out
            held.pop().close()  # a slot frees up: a new connection is served
            for _ in range(50):
                out = request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
                                    b"Connection: close\r\n\r\n")
                if out.startswith(b"HTTP/1.1 200"):
                    break
                time.sleep(0.05)  # the server has not seen the close yet
            assert out.startswith(b"HTTP/1.1 200"), out[:200]
        finally:
            for s in held:
                s.close()


def test_a_store_outage_answers_503_and_keeps_the_connection(sqlite_engine, sqlite_keys,
                                                           monkeypatch):
    from serendip.store.base import StoreUnavailableError

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("the database is unreachable", retry_after=4)

    limits = ServerLimits()
    with served(create_app(sqlite_engine, limits=limits), limits) as port:
        s = connect(port)
        get = (b"GET /v1/items/i1 HTTP/1.1\r\nHost: t\r\nX-API-Key: "
               + sqlite_keys.read.encode() + b"\r\n\r\n")
        try:
            monkeypatch.setattr(sqlite_engine.store, "get_item", down)
            s.sendall(get)
            status, headers, body = read_response(s)
            assert status == 503 and headers["retry-after"] == "4", body
            assert headers.get("connection") != "close"
            monkeypatch.undo()
            s.sendall(get)  # the same connection serves the next request
            status, _, body = read_response(s)
            assert status == 200 and b'"item_id":"i1"' in body
        finally:
            s.close()


def test_a_store_outage_during_the_key_check_is_503_too(sqlite_engine, sqlite_keys,
                                                       monkeypatch):
    """A key not yet cached is looked up in the store: when that fails, 503 + Retry-After on
    a connection that stays open, not a 500 and a reset."""
    from serendip.store.base import StoreUnavailableError

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("the database is unreachable", retry_after=3)

    limits = ServerLimits()
    app = create_app(sqlite_engine, limits=limits)
    with served(app, limits) as port:
        s = connect(port)
        get = (b"GET /v1/presets HTTP/1.1\r\nHost: t\r\nX-API-Key: "
               + sqlite_keys.read.encode() + b"\r\n\r\n")
        try:
            monkeypatch.setattr(sqlite_engine.store, "check_api_key", down)
            s.sendall(get)
            status, headers, body = read_response(s)
            assert status == 503 and headers["retry-after"] == "3", body
            assert "content-security-policy" in headers
            monkeypatch.undo()
            s.sendall(get)  # the same connection, the store back
            status, _, _ = read_response(s)
            assert status == 200
        finally:
            s.close()


def test_server_limits_are_validated():
    with pytest.raises(ConfigError, match="header_timeout"):
        ServerLimits(header_timeout=0)
    with pytest.raises(ConfigError, match="max_connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ConfigError, match="key_rate"):
        ServerLimits(key_rate=-1)
    with pytest.raises(ConfigError, match="body_timeout"):
        ServerLimits(body_timeout=float("inf"))


# ------------------------------------------------------------------------------ authenticate first
def _asgi_call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
               body: bytes, client: tuple[str, int] = ("10.0.0.1", 1234)) -> tuple[int, int]:
    """Call the ASGI app directly: (status, how many times it asked for the body)."""
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]
    asked = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked <= len(chunks):
            return {"type": "http.request", "body": chunks[asked - 1],
                    "more_body": asked < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "client": client,
             "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"t"), (b"content-length", str(len(body)).encode()),
                         (b"content-type", b"application/json"), *headers]}
    asyncio.run(app(scope, receive, send))
    return status, asked


def test_a_body_is_never_read_before_the_key_is_checked(engine, keys):
    app = create_app(engine)
    big = b'{"items": [' + b'{"item_id": "x", "fields": {"title": "y"}},' * 23_000 + b"{}]}"
    assert 900_000 < len(big) <= 1 << 20
    assert _asgi_call(app, "PUT", "/v1/items", [], big) == (401, 0)
    bad = [(b"x-api-key", b"sk_not_a_key")]
    assert _asgi_call(app, "PUT", "/v1/items", bad, big) == (401, 0)
    read = [(b"x-api-key", keys.read.encode())]
    assert _asgi_call(app, "PUT", "/v1/items", read, big) == (403, 0)
    # the same body with a write key is read (and refused for its content)
    status, asked = _asgi_call(app, "PUT", "/v1/items", [(b"x-api-key", keys.write.encode())],
                               big)
    assert asked > 1 and status == 422


def test_repeated_bad_keys_from_one_address_get_429(engine, keys):
    app = create_app(engine, limits=ServerLimits(auth_failure_limit=3, auth_failure_window=60))
    with TestClient(app, client=("10.0.0.7", 1000)) as c, \
            TestClient(app, client=("10.0.0.8", 1000)) as other:
        assert c.get("/v1/presets", headers=keys.h("read")).status_code == 200
        for n in range(3):
            r = c.get("/v1/presets", headers={"X-API-Key": f"sk_guess{n}"})
            assert r.status_code == 401
        r = c.get("/v1/presets", headers={"X-API-Key": "sk_guess9"})
        assert r.status_code == 429 and r.json()["error"] == "too_many_requests"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # the key in use from that address keeps working; other addresses are unaffected
        assert c.get("/v1/presets", headers=keys.h("read")).status_code == 200
        assert other.get("/v1/presets", headers=keys.h("write")).status_code == 200
        assert other.get("/v1/presets", headers={"X-API-Key": "sk_x"}).status_code == 401


def test_limiters_count_and_recover():
    lim = FailureLimiter(limit=2, window=10.0)
    assert lim.fail("a", now=0.0) == 0.0
    assert lim.fail("a", now=1.0) == pytest.approx(9.0)
    assert lim.retry_after("a", now=5.0) == pytest.approx(5.0)
    assert lim.retry_after("b", now=5.0) == 0.0
    assert lim.retry_after("a", now=10.0) == 0.0  # the window is over
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", now=0.0) == pytest.approx(0.5)  # 1 token every 0.5 s
    assert buckets.take("other", now=0.0) == 0.0
    assert buckets.take("k", now=0.5) == 0.0
    assert TokenBuckets(rate=0, burst=1).take("k") == 0.0  # rate 0: no limit


def test_per_key_rate_limit(engine, keys):
    app = create_app(engine, limits=ServerLimits(key_rate=0.01, key_burst=3))
    with TestClient(app) as c:
        statuses = [c.get("/v1/presets", headers=keys.h("read")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = c.get("/v1/presets", headers=keys.h("read"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert c.get("/v1/presets", headers=keys.h("write")).status_code == 200


# ------------------------------------------------------------------------------ key management
def test_keys_are_listed_without_secrets_and_revoked_at_once(api, client, keys, store):
    r = api("GET", "/v1/keys")
    assert r.status_code == 200
    listed = {k["name"]: k for k in r.json()["keys"]}
    assert {"t-admin", "t-write", "t-read"} <= set(listed)
    assert listed["t-read"]["role"] == "read" and listed["t-read"]["revoked"] is False
    assert set(listed["t-read"]) == {"name", "role", "created_at", "revoked", "revoked_at"}
    for secret in (keys.admin, keys.write, keys.read):
        assert secret not in r.text
    assert api("GET", "/v1/keys", "write").status_code == 403
    # the read key works (and is cached), then stops at once when revoked
    assert client.get("/v1/presets", headers=keys.h("read")).status_code == 200
    r = api("DELETE", "/v1/keys/t-read")
    assert r.status_code == 200 and r.json() == {"name": "t-read", "revoked": True}
    assert client.get("/v1/presets", headers=keys.h("read")).status_code == 401
    after = {k["name"]: k for k in api("GET", "/v1/keys").json()["keys"]}
    assert after["t-read"]["revoked"] is True and after["t-read"]["revoked_at"] is not None
    assert api("DELETE", "/v1/keys/t-read").status_code == 404  # already revoked
    assert api("DELETE", "/v1/keys/nobody").status_code == 404
    assert api("DELETE", "/v1/keys/t-write", "write").status_code == 403
    # the last active admin key stays: revoking it would lock every administrator out
    r = api("DELETE", "/v1/keys/t-admin")
    assert r.status_code == 409 and "last active admin key" in r.json()["detail"]
    assert client.get("/v1/keys", headers=keys.h("admin")).status_code == 200


def test_a_revocation_during_a_lookup_is_not_undone_by_the_cache():
    from serendip.service.auth import MISS, Authenticator

    class Store:
        def check_api_key(self, key: str) -> str:
            auth.forget()  # revoked while this look-up was running
            return "read"

    auth = Authenticator(Store())  # type: ignore[arg-type]
    assert auth.role("sk_x") == "read"
    assert auth.cached("sk_x") is MISS  # the next request asks the store again

    class Plain(Store):
        def check_api_key(self, key: str) -> str:
            return "read"

    plain = Authenticator(Plain())  # type: ignore[arg-type]
    assert plain.role("sk_x") == "read" and plain.cached("sk_x") == "read"


def test_active_admin_keys_are_capped(api, store):
    from serendip.service.app import MAX_ADMIN_KEYS

    have = store.count_api_keys(role="admin")
    for n in range(MAX_ADMIN_KEYS - have):
        assert api("POST", "/v1/admin/keys", json={"name": f"a{n}", "role": "admin"}
                   ).status_code == 201
    r = api("POST", "/v1/admin/keys", json={"name": "one-more", "role": "admin"})
    assert r.status_code == 409 and str(MAX_ADMIN_KEYS) in r.json()["detail"]
    assert store.count_api_keys(role="admin") == MAX_ADMIN_KEYS
    # other roles are not capped, and a revocation frees a slot
    assert api("POST", "/v1/admin/keys", json={"name": "r1", "role": "read"}).status_code == 201
    assert api("DELETE", "/v1/keys/a0").status_code == 200
    assert api("POST", "/v1/admin/keys", json={"name": "one-more", "role": "admin"}
               ).status_code == 201


def test_no_admin_key_is_created_silently_for_a_new_data_dir(sqlite_store, tmp_path):
    first = tmp_path / "first"
    key = app_module._admin_key(sqlite_store, first)
    assert (first / "admin.key").read_text().strip() == key
    assert app_module._admin_key(sqlite_store, first) == key  # the same key next time
    assert sqlite_store.count_api_keys(role="admin") == 1
    with pytest.raises(ConfigError, match="--api-key") as err:
        app_module._admin_key(sqlite_store, tmp_path / "second")
    assert "serendip keys create --name NAME --role admin" in str(err.value)
    assert "\n" not in str(err.value)
    assert sqlite_store.count_api_keys(role="admin") == 1
    assert not (tmp_path / "second" / "admin.key").exists()


def test_store_urls_are_shown_without_password():
    class Bare:  # a store without display_url
        url = "postgresql://serendip:s3cret-pw@db.example:5432/reco?sslmode=require"

    shown = app_module._display_url(Bare())
    assert "s3cret-pw" not in shown
    assert "serendip" in shown and "db.example:5432/reco" in shown

    class Shown(Bare):
        display_url = "postgresql://serendip:***@db.example:5432/reco"

    assert app_module._display_url(Shown()) == Shown.display_url


def test_the_start_banner_hides_the_postgres_password(request, tmp_path, seed_files):
    import os
    import subprocess
    import sys

    from serendip.store.testing import create_schema

    url = create_schema(request.getfixturevalue("pg_url"))
    assert "postgres@" in url
    secret_url = url.replace("postgres@", "postgres:hunter2-secret@", 1)  # trust auth: ignored
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "serendip.cli", "serve", "--store", secret_url,
           "--data-dir", str(tmp_path / "data"), "--port", str(port),
           "--api-key", "sk_banner_test_key", "--seed-interactions", str(seed_files.interactions),
           "--seed-items", str(seed_files.items)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for _ in range(200):  # the banner comes before the model loads
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("admin API key"):
                break
    finally:
        proc.kill()
        proc.wait(10)
    out = "".join(lines)
    assert "admin API key" in out and "store postgresql://postgres:***@127.0.0.1" in out, out
    assert "hunter2-secret" not in out


# ------------------------------------------------------------------------------ input and errors
def test_control_characters_in_path_ids_are_refused(api, engine, store):
    assert engine.impression_writer.flush(timeout=10)
    before = store.count_impressions()
    for bad in ("a%00b", "a%0Ab", "%7F", "a%1Fb"):
        r = api("GET", f"/v1/users/{bad}/recommendations", "read")
        assert r.status_code == 422, bad
        assert r.json()["errors"][0]["field"] == "path.user_id"
        assert "control characters" in r.json()["detail"]
        assert api("GET", f"/v1/items/{bad}", "read").status_code == 422
    assert api("GET", "/v1/users/u%C3%A9/recommendations", "read").status_code == 200
    assert engine.impression_writer.flush(timeout=10)
    assert store.count_impressions() == before + 1


def test_body_errors_name_the_field_or_position(api):
    h = {"Content-Type": "application/json"}
    r = api("PUT", "/v1/items", "write", content=b'{"items": [}', headers=h)
    assert r.status_code == 400 and "at character 11" in r.json()["detail"]
    r = api("PUT", "/v1/items", "write", content=b"[1, 2]", headers=h)
    assert r.status_code == 422 and r.json()["detail"] == "body: expected a JSON object, got an array"
    r = api("PUT", "/v1/items", "write", content=b"", headers=h)
    assert r.status_code == 422 and r.json()["detail"] == "body: a JSON body is required"
    r = api("PUT", "/v1/items", "write", content=b'{"items": []}',
            headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]


@pytest.mark.parametrize("bad", [True, "10", 10.0, 10.5])
def test_numbers_in_bodies_are_strict(api, bad):
    for path, body in (("/v1/search", {"query": "war", "k": bad}),
                       ("/v1/sessions/recommendations", {"item_ids": ["i1"], "k": bad})):
        r = api("POST", path, "read", json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.k", (path, bad)
    r = api("POST", "/v1/search", "read", json={"query": "war", "discovery": "0.5"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.discovery"
    r = api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "u1", "item_id": "i1", "type": "rating", "value": "5"}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.events.0.value"
    assert api("POST", "/v1/search", "read", json={"query": "war", "k": 3,
                                                   "discovery": 1}).status_code == 200


def test_unknown_paths_are_404_and_wrong_methods_405(api, client):
    for method in ("GET", "POST", "PUT", "DELETE"):
        r = api(method, "/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"] == "not_found", method
    assert client.post("/v1/nothing-here").status_code == 404  # no key needed to learn that
    r = api("DELETE", "/v1/presets")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
    assert r.json()["error"] == "method_not_allowed"
    assert client.post("/no-such-page").status_code == 404
    assert client.post("/index.html").status_code == 405


def test_store_outage_is_503_with_retry_after(api, engine, monkeypatch):
    from serendip.store.base import StoreUnavailableError

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("store postgresql://u:***@h/db is unreachable",
                                    retry_after=7)

    monkeypatch.setattr(engine.store, "get_item", down)
    r = api("GET", "/v1/items/i1", "read")
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.json()["error"] == "unavailable" and "store is unavailable" in r.json()["detail"]
    assert "postgresql" not in r.text  # what failed is in the log, not in the answer

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(engine.store, "get_item", locked)
    r = api("GET", "/v1/items/i1", "read")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.store, "get_item", bug)
    r = api("GET", "/v1/items/i1", "read")  # a JSON 500, not an exception out of the app
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert "RuntimeError" in r.json()["detail"]
    assert api("GET", "/v1/presets", "read").status_code == 200


def test_readyz_checks_the_store_and_the_encoder(client, engine, monkeypatch):
    assert client.get("/readyz").status_code == 200
    from serendip.store.base import StoreUnavailableError

    def down() -> None:
        raise StoreUnavailableError("postgresql://u:secret@h/db does not answer", retry_after=3)

    monkeypatch.setattr(engine.store, "ping", down, raising=False)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert "does not answer" in r.json()["detail"] and "secret" not in r.text
    monkeypatch.undo()
    monkeypatch.setattr(engine.config, "warm_encoder", True, raising=False)
    monkeypatch.setattr(app_module, "_encoder_loaded", lambda e: False)
    r = client.get("/readyz")
    assert r.status_code == 503 and "encoder" in r.json()["detail"]


def test_security_headers_on_every_response(client, keys):
    responses = [client.get("/healthz"), client.get("/"), client.get("/docs"),
                 client.get("/v1/presets"), client.get("/v1/presets", headers=keys.h("read")),
                 client.get("/v1/nothing")]
    for r in responses:
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, r.url
        # images may come from a catalog's https URLs; nothing else leaves the origin
        assert "unsafe-inline" not in csp and "http:" not in csp
        assert "https:" not in csp.replace("img-src 'self' https: data:", "")
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"


def test_docs_are_served_from_this_origin(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/") or ref == "data:," for ref in refs), refs
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    for ref in refs:
        if ref.startswith("/"):
            r = client.get(ref)
            assert r.status_code == 200 and r.content, ref
    assert "/openapi.json" in client.get("/docs/init.js").text
    assert client.get("/redoc").status_code == 404  # it loaded its script from a CDN


# ------------------------------------------------------------------------------ bandits and roles
def test_a_read_key_does_not_teach_bandit_presets(api, engine):
    def learned() -> dict[str, float] | None:
        return {p["name"]: p["learned"] for p in api("GET", "/v1/presets", "read").json()["presets"]
                }.get("adaptive")

    before = learned()
    assert before is not None
    for u in range(5):
        assert api("GET", f"/v1/users/u{u}/recommendations?preset=adaptive&k=5",
                   "read").status_code == 200
        assert api("POST", "/v1/sessions/recommendations", "read",
                   json={"item_ids": ["i1"], "preset": "adaptive", "k": 5}).status_code == 200
    assert learned() == before
    # a list served to a write key is counted (shown, reward 0 so far)
    for u in range(5):
        api("GET", f"/v1/users/u{u}/recommendations?preset=adaptive&k=5", "write")
    assert learned() != before


# ------------------------------------------------------------------------------ a person's data
def test_erase_and_export_a_user(api, engine, store):
    from serendip.service import Engine

    if not hasattr(Engine, "erase_user"):
        pytest.skip("the engine has no erase_user yet")
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "eve", "item_id": "i3", "type": "like"}]})
    out = api("GET", "/v1/users/eve/export")
    assert out.status_code == 200
    doc = out.json()
    assert doc["user_id"] == "eve" and [e["item_id"] for e in doc["events"]] == ["i3"]
    assert api("GET", "/v1/users/eve/export", "write").status_code == 403
    assert api("DELETE", "/v1/users/eve", "write").status_code == 403
    r = api("DELETE", "/v1/users/eve")
    assert r.status_code == 200 and r.json()["removed"]["events"] == 1
    assert api("GET", "/v1/users/eve/history", "read").status_code == 404
    assert api("DELETE", "/v1/users/eve").status_code == 404
