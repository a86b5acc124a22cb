"""Every endpoint: happy path and bad input, auth, online feedback, retrain, impressions."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from serendip.service import create_app
from serendip.store import open_store
from tests.service.conftest import build_engine, make_keys

BADGES = {"tail", "novel", "serendipitous"}


# ------------------------------------------------------------------------------ health
def test_health_ready_metrics_docs_need_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert r.json()["model_age_seconds"] >= 0
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/users/{user_id}/recommendations" in spec["paths"]
    assert client.get("/").status_code == 200
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'serendip_http_requests_total{method="GET",route="/healthz",status="200"} 1' in m.text
    assert "serendip_model_age_seconds" in m.text
    assert 'serendip_http_request_duration_seconds_bucket{route="/readyz",le="+Inf"} 1' in m.text
    assert "# TYPE serendip_impressions_dropped_total counter" in m.text
    assert "\nserendip_impressions_dropped_total 0\n" in m.text
    assert "\nserendip_impression_write_failures_total 0\n" in m.text
    assert "# TYPE serendip_impressions_pending gauge" in m.text


def test_readyz_503_before_model(store, tmp_path, seed_files, encoder):
    from serendip.service import Engine, EngineConfig

    engine = Engine(store, EngineConfig(data_dir=tmp_path), encoder=encoder)
    keys = make_keys(store)
    with TestClient(create_app(engine)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        r = c.get("/v1/users/u1/recommendations", headers=keys.h("read"))
        assert r.status_code == 503


# ------------------------------------------------------------------------------ auth
def test_auth_roles(client, keys, api):
    path = "/v1/users/u1/recommendations"
    r = client.get(path)
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    assert client.get(path, headers={"X-API-Key": "sk_wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": f"Bearer {keys.read}"}).status_code == 200
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    body = {"events": [{"user_id": "u1", "item_id": "i1", "type": "click"}]}
    r = api("POST", "/v1/events", "read", json=body)
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert api("POST", "/v1/events", "write", json=body).status_code == 201
    assert api("POST", "/v1/admin/retrain", "write").status_code == 403
    assert api("POST", "/v1/admin/keys", "read", json={"name": "x", "role": "read"}).status_code == 403


def test_created_keys_work_and_are_stored_hashed(api, client, store, tmp_path):
    r = api("POST", "/v1/admin/keys", json={"name": "reader", "role": "read"})
    assert r.status_code == 201
    out = r.json()
    assert out["name"] == "reader" and out["role"] == "read" and out["key"]
    assert client.get("/v1/presets", headers={"X-API-Key": out["key"]}).status_code == 200
    assert api("POST", "/v1/admin/keys", json={"name": "reader", "role": "read"}).status_code == 409
    assert api("POST", "/v1/admin/keys", json={"name": "x", "role": "root"}).status_code == 422
    raw = b"".join(p.read_bytes() for p in Path(tmp_path).glob("serendip.db*"))
    assert out["key"].encode() not in raw  # only a hash is stored


# ------------------------------------------------------------------------------ items & users
def test_items_crud(api, engine):
    r = api("PUT", "/v1/items", "write",
            json={"items": [{"item_id": "new1", "fields": {"title": "A new film", "genres": "Comedy"}}]})
    assert r.status_code == 200 and r.json() == {"upserted": 1}
    assert api("GET", "/v1/items/new1", "read").json() == {
        "item_id": "new1", "fields": {"title": "A new film", "genres": "Comedy"}}
    r = api("GET", "/v1/items/nope", "read")
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]
    assert api("DELETE", "/v1/items/new1", "write").json() == {"deleted": 1}
    assert api("DELETE", "/v1/items/new1", "write").status_code == 404
    # a deleted model item is never recommended again
    assert api("DELETE", "/v1/items/i4", "write").json() == {"deleted": 1}
    for uid in ("u0", "u1", "u2", "u3"):
        ids = [it["item_id"] for it in api("GET", f"/v1/users/{uid}/recommendations?k=20").json()["items"]]
        assert "i4" not in ids
    assert api("GET", "/v1/items/i4/similar").status_code == 404


def test_items_bad_input(api):
    assert api("PUT", "/v1/items", "write", json={"items": []}).status_code == 422
    r = api("PUT", "/v1/items", "write", json={"items": [{"item_id": 5}]})
    assert r.status_code == 422 and "body.items.0.item_id" in r.json()["detail"]
    r = api("PUT", "/v1/items", "write", json={"items": [{"item_id": "a", "fields": {"t": 1}}]})
    assert r.status_code == 422 and "fields" in r.json()["detail"]
    r = api("PUT", "/v1/items", "write", json={"items": [{"item_id": "a", "extra": 1}]})
    assert r.status_code == 422 and "extra" in r.json()["detail"]
    r = api("PUT", "/v1/items", "write", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    r = api("PUT", "/v1/items", "write", json={"items": [{"item_id": "a\u0000b"}]})
    assert r.status_code == 422


def test_users(api):
    r = api("PUT", "/v1/users", "write", json={"users": [{"user_id": "zed", "fields": {"age": "30"}}]})
    assert r.json() == {"upserted": 1}
    users = api("GET", "/v1/users?limit=5", "read").json()["users"]
    assert len(users) == 5 and users[0].startswith("u2")  # the extra i0 events of u20..u39
    h = api("GET", "/v1/users/u0/history?limit=3", "read").json()
    assert h["user_id"] == "u0" and len(h["items"]) == 3
    ts = [it["timestamp"] for it in h["items"]]
    assert ts == sorted(ts, reverse=True)
    assert set(h["items"][0]) == {"item_id", "title", "type", "timestamp", "value"}
    assert api("GET", "/v1/users/zed/history", "read").json()["items"] == []
    r = api("GET", "/v1/users/ghost/history", "read")
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    assert api("GET", "/v1/users?limit=0", "read").status_code == 422


# ------------------------------------------------------------------------------ events
def test_events_idempotent_and_validated(api, store):
    ev = {"user_id": "u1", "item_id": "i2", "type": "like", "idempotency_key": "k-1"}
    r1 = api("POST", "/v1/events", "write", json={"events": [ev]})
    assert r1.status_code == 201
    a1 = r1.json()["acks"][0]
    assert a1["duplicate"] is False
    n = store.count_events()
    r2 = api("POST", "/v1/events", "write", json={"events": [ev, {**ev, "idempotency_key": "k-2"}]})
    acks = r2.json()["acks"]
    assert acks[0] == {"event_id": a1["event_id"], "duplicate": True}
    assert acks[1]["duplicate"] is False
    assert store.count_events() == n + 1
    r = api("POST", "/v1/events", "write", json={"events": [{**ev, "item_id": "nope"}]})
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]
    r = api("POST", "/v1/events", "write", json={"events": [{**ev, "type": "teleport"}]})
    assert r.status_code == 422 and "body.events.0.type" in r.json()["detail"]
    r = api("POST", "/v1/events", "write", json={"events": [{**ev, "value": "high"}]})
    assert r.status_code == 422 and "value" in r.json()["detail"]
    r = api("POST", "/v1/events", "write", json={"events": [{**ev, "timestamp": -5}]})
    assert r.status_code == 422
    r = api("POST", "/v1/events", "write", json={"events": [{"user_id": "u1", "item_id": "i1"}] * 1001})
    assert r.status_code == 422 and "1000" in r.json()["detail"]
    r = api("POST", "/v1/events", "write", json={"events": [{**ev, "type": "rating"}]})
    assert r.status_code == 400 and "value" in r.json()["detail"]  # a rating needs a value
    assert store.count_events() == n + 1


def test_oversize_body_413(api, client, keys):
    big = {"items": [{"item_id": f"x{i}", "fields": {"title": "y" * 5000}} for i in range(300)]}
    r = api("PUT", "/v1/items", "write", json=big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"items": ['
        for i in range(300):
            yield json.dumps({"item_id": f"x{i}", "fields": {"title": "y" * 5000}}).encode() + b","
        yield b'{"item_id": "end"}]}'

    r = client.put("/v1/items", content=chunks(),
                   headers={**keys.h("write"), "Content-Type": "application/json"})
    assert r.status_code == 413


# ------------------------------------------------------------------------------ recommendations
def test_recommendations_shape_and_impressions(api, store, engine):
    before = store.count_impressions()
    r = api("GET", "/v1/users/u0/recommendations?k=5&preset=balanced&discovery=0.5", "read")
    assert r.status_code == 200
    out = r.json()
    assert out["user_id"] == "u0" and out["preset"] == "balanced" and out["discovery"] == 0.5
    assert isinstance(out["impression_id"], str) and len(out["items"]) == 5
    assert re.fullmatch(r"[0-9a-f]{32}", out["impression_id"])
    history = {it["item_id"] for it in api("GET", "/v1/users/u0/history?limit=100").json()["items"]}
    for it in out["items"]:
        assert set(it) == {"item_id", "title", "score", "reasons", "badges", "propensity",
                           "fields", "prose"}
        assert set(it["badges"]) <= BADGES and it["reasons"]
        assert it["item_id"] not in history
    assert engine.impression_writer.flush(timeout=10)
    assert store.count_impressions() == before + 1
    imp = store.impressions_frame().iloc[-1]  # type: ignore[attr-defined]
    assert imp["impression_id"] == out["impression_id"]
    assert list(imp["item_ids"]) == [it["item_id"] for it in out["items"]]
    assert imp["preset"] == "balanced" and imp["user_id"] == "u0"
    # every preset, and a cold-start user
    for preset in ("accurate", "discovery"):
        assert len(api("GET", f"/v1/users/u0/recommendations?k=3&preset={preset}").json()["items"]) == 3
    cold = api("GET", "/v1/users/stranger/recommendations?k=4").json()
    assert cold["user_id"] == "stranger" and len(cold["items"]) == 4


def test_recommendation_badges_are_consistent(api, engine):
    s = engine.state
    out = api("GET", "/v1/users/u30/recommendations?k=10&preset=discovery").json()
    for it in out["items"]:
        i = s.item_pos[it["item_id"]]
        assert ("tail" in it["badges"]) == (not s.head[i])


def test_recommendations_filter_and_bad_params(api, engine):
    out = api("GET", "/v1/users/u30/recommendations?k=5&filter=genres:Comedy").json()
    s = engine.state
    assert out["items"] and all(
        "Comedy" in str(s.rec.data.items.loc[s.item_pos[it["item_id"]], "genres"])
        for it in out["items"])
    assert api("GET", "/v1/users/u30/recommendations?filter=genres:NoSuch").json()["items"] == []
    r = api("GET", "/v1/users/u30/recommendations?filter=colour:red")
    assert r.status_code == 400 and "colour" in r.json()["detail"]
    assert api("GET", "/v1/users/u30/recommendations?filter=nocolon").status_code == 400
    for q in ("k=0", "k=101", "k=abc", "discovery=1.5", "discovery=nan", "preset=a%20b",
              "preset=" + "x" * 65):
        r = api("GET", f"/v1/users/u0/recommendations?{q}")
        assert r.status_code == 422, q
        assert r.json()["errors"][0]["field"].startswith("query.")
    # a well-formed name that is not a preset of this engine: the error lists the valid ones
    r = api("GET", "/v1/users/u0/recommendations?preset=wild")
    assert r.status_code == 400 and "'wild'" in r.json()["detail"]
    assert "balanced" in r.json()["detail"]


def test_feedback_changes_next_list_immediately(api):
    first = [it["item_id"] for it in api("GET", "/v1/users/u5/recommendations?k=5").json()["items"]]
    top = first[0]
    # a like moves the item into the history (excluded, and it reshapes the scores)
    api("POST", "/v1/events", "write", json={"events": [{"user_id": "u5", "item_id": top, "type": "like"}]})
    second = [it["item_id"] for it in api("GET", "/v1/users/u5/recommendations?k=5").json()["items"]]
    assert top not in second and second != first
    # skip: negative, never history, and never recommended again
    skip = second[0]
    api("POST", "/v1/events", "write", json={"events": [{"user_id": "u5", "item_id": skip, "type": "skip"}]})
    third = [it["item_id"] for it in api("GET", "/v1/users/u5/recommendations?k=5").json()["items"]]
    assert skip not in third
    # a brand-new user's clicks personalise their list at once
    cold = [it["item_id"] for it in api("GET", "/v1/users/newbie/recommendations?k=5").json()["items"]]
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "newbie", "item_id": f"i{i}", "type": "click"} for i in (12, 13, 14, 15)]})
    warm = api("GET", "/v1/users/newbie/recommendations?k=5").json()["items"]
    assert [it["item_id"] for it in warm] != cold
    assert all(it["item_id"] not in {"i12", "i13", "i14", "i15"} for it in warm)
    assert warm[0]["reasons"][0].startswith("because you liked")


def test_session_recommendations(api):
    r = api("POST", "/v1/sessions/recommendations", "read",
            json={"item_ids": ["i1", "i2"], "k": 4, "preset": "accurate", "discovery": 0.2})
    out = r.json()
    assert r.status_code == 200 and out["user_id"] is None and len(out["items"]) == 4
    assert not {"i1", "i2"} & {it["item_id"] for it in out["items"]}
    r = api("POST", "/v1/sessions/recommendations", json={"item_ids": ["zzz"]})
    assert r.status_code == 404 and "zzz" in r.json()["detail"]
    assert api("POST", "/v1/sessions/recommendations", json={"k": "ten"}).status_code == 422
    assert len(api("POST", "/v1/sessions/recommendations", json={}).json()["items"]) == 10


def test_similar_items(api):
    out = api("GET", "/v1/items/i1/similar?k=5", "read").json()
    assert out["item_id"] == "i1" and len(out["items"]) == 5
    ids = [it["item_id"] for it in out["items"]]
    assert "i1" not in ids
    # same block (Comedy items i0..i11) is most similar, semantically and collaboratively
    assert all(int(i[1:]) < 12 for i in ids)
    assert all(set(it) == {"item_id", "title", "score", "reasons", "fields"} for it in out["items"])
    assert api("GET", "/v1/items/nope/similar").status_code == 404
    assert api("GET", "/v1/items/i1/similar?k=0").status_code == 422


def test_search(api, store, engine):
    before = store.count_impressions()
    out = api("POST", "/v1/search", "read", json={"query": "a sad war story", "k": 5}).json()
    assert out["user_id"] is None and len(out["items"]) == 5 and len(out["session_items"]) == 3
    assert all(int(it["item_id"][1:]) >= 12 for it in out["items"])  # the Drama block
    assert out["items"][0]["reasons"][0].endswith("matches \u201csad war story\u201d")
    personal = api("POST", "/v1/search", json={"query": "funny space", "user_id": "u0", "k": 5,
                                               "discovery": 0.5}).json()
    assert personal["user_id"] == "u0" and personal["discovery"] == 0.5
    history = {it["item_id"] for it in api("GET", "/v1/users/u0/history?limit=100").json()["items"]}
    assert not history & {it["item_id"] for it in personal["items"]}
    assert engine.impression_writer.flush(timeout=10)
    assert store.count_impressions() == before + 2
    logged = store.impressions_frame()  # type: ignore[attr-defined]
    assert logged["impression_id"].tolist()[-2:] == [out["impression_id"], personal["impression_id"]]
    assert logged["context"].tolist()[-1] == "funny space"
    assert api("POST", "/v1/search", json={"query": ""}).status_code == 422
    assert api("POST", "/v1/search", json={"query": "   "}).status_code == 400
    assert api("POST", "/v1/search", json={"query": "x" * 2001}).status_code == 422


def test_impressions_are_written_in_batches_and_on_shutdown(engine, keys, store):
    """The response does not wait for the impression row; the app's shutdown writes it."""
    from serendip.service.impressions import ImpressionWriter

    engine.impression_writer = ImpressionWriter(store, flush_interval=60.0)  # never on its own
    before = store.count_impressions()
    with TestClient(create_app(engine), headers=keys.h("read")) as c:
        ids = [c.get(f"/v1/users/u{n}/recommendations?k=3").json()["impression_id"]
               for n in range(3)]
        assert len(set(ids)) == 3
        assert store.count_impressions() == before  # still queued
        assert engine.impression_writer.pending == 3
    assert store.count_impressions() == before + 3  # the lifespan's shutdown flushed them
    logged = store.impressions_frame()  # type: ignore[attr-defined]
    assert logged["impression_id"].tolist()[-3:] == ids
    assert engine.impression_writer.written == 3 and engine.impression_writer.failed == 0
    # an engine that outlives its app keeps logging (a new writer thread starts)
    with TestClient(create_app(engine), headers=keys.h("read")) as c:
        c.get("/v1/users/u1/recommendations?k=3")
    assert store.count_impressions() == before + 4


def test_explain(api):
    out = api("GET", "/v1/users/u0/recommendations/i5/explain", "read").json()
    assert out["user_id"] == "u0" and out["item_id"] == "i5" and out["title"]
    assert 1 <= len(out["because"]) <= 3 and all(b["item_id"] != "i5" for b in out["because"])
    sims = [b["similarity"] for b in out["because"]]
    assert sims == sorted(sims, reverse=True)
    assert out["popularity"]["users"] >= 0 and 0 <= out["popularity"]["percentile"] <= 100
    assert out["novelty_bits"] >= 0 and 0 <= out["unexpectedness"] <= 2
    assert str(out["popularity"]["users"]) in out["text"] and out["because"][0]["title"] in out["text"]
    assert api("GET", "/v1/users/u0/recommendations/nope/explain").status_code == 404
    # a person without history gets an explanation that claims nothing about their taste
    ghost = api("GET", "/v1/users/ghost/recommendations/i5/explain")
    assert ghost.status_code == 200 and ghost.json()["because"] == []
    assert "no history yet" in ghost.json()["text"]


def test_presets(api):
    out = api("GET", "/v1/presets", "read").json()["presets"]
    assert [p["name"] for p in out] == ["accurate", "balanced", "discovery", "adaptive"]
    assert all(0 <= p["discovery"] <= 1 and p["description"] for p in out)


def test_unknown_route_is_json_404(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_cors_off_by_default_and_one_origin_when_asked(engine, keys):
    with TestClient(create_app(engine)) as c:
        r = c.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(engine, cors_origin="http://app.example")) as c:
        r = c.options("/v1/presets", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-API-Key"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------------------ retrain
def test_retrain_swaps_model_while_serving(api, engine):
    api("PUT", "/v1/items", "write", json={"items": [{"item_id": "fresh", "fields": {
        "title": "funny space cartoon fresh", "genres": "Comedy"}}]})
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": f"u{u}", "item_id": "fresh", "type": "like"} for u in range(5)]})
    assert api("GET", "/v1/items/fresh/similar").status_code == 404  # not in the model yet
    old_version = engine.version
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(api("GET", "/v1/users/u7/recommendations?k=5", "read").status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = api("POST", "/v1/admin/retrain")
        assert r.status_code == 202 and r.json()["status"] == "running"
        job_id = r.json()["job_id"]
        deadline = time.time() + 60
        while time.time() < deadline:
            job = api("GET", f"/v1/admin/jobs/{job_id}").json()
            if job["status"] != "running":
                break
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert job["status"] == "succeeded", job
    assert job["n_items"] == 25
    assert engine.version == old_version + 1
    assert statuses and set(statuses) == {200}
    assert api("GET", "/v1/items/fresh/similar").status_code == 200
    assert (Path(engine.config.model_dir) / "serendip.json").exists()
    assert api("GET", "/v1/admin/jobs/nope").status_code == 404
    assert api("GET", f"/v1/admin/jobs/{job_id}", "read").status_code == 403


# ------------------------------------------------------------------------------ PostgreSQL
def test_happy_path_on_postgres(request, tmp_path, seed_files, fitted, encoder):
    from serendip.store.testing import create_schema

    store = open_store(create_schema(request.getfixturevalue("pg_url")))
    try:
        engine = build_engine(store, tmp_path, seed_files, fitted, encoder)
        keys = make_keys(store)
        with TestClient(create_app(engine), headers=keys.h()) as c:
            r = c.post("/v1/events", json={"events": [
                {"user_id": "u3", "item_id": "i20", "type": "like", "idempotency_key": "pg-1"}]})
            assert r.status_code == 201
            again = c.post("/v1/events", json={"events": [
                {"user_id": "u3", "item_id": "i20", "type": "like", "idempotency_key": "pg-1"}]})
            assert again.json()["acks"][0]["duplicate"] is True
            out = c.get("/v1/users/u3/recommendations?k=5").json()
            assert len(out["items"]) == 5 and "i20" not in {it["item_id"] for it in out["items"]}
            assert c.get("/v1/users/u3/history?limit=1").json()["items"][0]["item_id"] == "i20"
            assert c.post("/v1/search", json={"query": "war", "k": 3}).status_code == 200
            assert c.get("/v1/items/i3/similar?k=3").status_code == 200
            assert engine.impression_writer.flush(timeout=10)
            assert store.count_impressions() == 2
            assert store.impressions_frame()["impression_id"].iloc[0] == out["impression_id"]  # type: ignore[attr-defined]
            assert c.get("/v1/presets", headers={"X-API-Key": "bad"}).status_code == 401
    finally:
        store.close()


def test_low_rating_is_negative_feedback(api, engine, monkeypatch):
    # the model treats ratings below 3 as negative (as a fit on a 1-5 star log does)
    monkeypatch.setattr(engine.state.rec, "negative_below", 3.0)
    first = [it["item_id"] for it in api("GET", "/v1/users/u5/recommendations?k=5").json()["items"]]
    low, high = first[0], first[1]
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "u5", "item_id": low, "type": "rating", "value": 1},
        {"user_id": "u5", "item_id": high, "type": "rating", "value": 5}]})
    pos, neg = engine.history(engine.state, "u5")
    i_low, i_high = engine.state.item_pos[low], engine.state.item_pos[high]
    assert i_low in neg.tolist() and i_low not in pos.tolist()
    assert i_high in pos.tolist() and i_high not in neg.tolist()
    items = api("GET", "/v1/users/u5/recommendations?k=8").json()["items"]
    assert low not in [it["item_id"] for it in items]
    title = engine.title(low, engine.state)
    assert not any(title in r for it in items for r in it["reasons"])


def test_refit_keeps_tuned_presets(store, tmp_path, seed_files, fitted, encoder):
    from serendip.pipeline import Preset, Recommender
    from tests.service.conftest import build_engine

    tuned = Recommender(fitted.data, fitted.scorers, fitted.config, presets={
        "accurate": Preset(name="accurate", description="tuned here", blend={"ease": 1.0}),
        "odd": Preset(name="odd", blend={"two_tower": 1.0}),  # a model the refit lacks
    }, tuning={"protocol": "time"})
    engine = build_engine(store, tmp_path, seed_files, tuned, encoder)
    try:
        assert engine.state.pipelines["accurate"].preset.description == "tuned here"
        rec = engine.fit_from_store()
        assert set(rec.presets) == {"accurate"} and rec.tuning == {"protocol": "time"}
        assert rec.pipeline("accurate").preset.description == "tuned here"
    finally:
        engine.close()


def test_conversation_routes(api):
    r = api("POST", "/v1/conversations", "read",
            json={"message": "a sad war story, no comedy", "k": 3})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["state"]["not_genres"] == ["comedy"] and len(first["items"]) == 3
    assert first["reply"] and first["turns"] == 1
    cid = first["conversation_id"]
    r = api("POST", f"/v1/conversations/{cid}/messages", "read",
            json={"message": "surprise me", "k": 3})
    assert r.status_code == 200 and r.json()["turns"] == 2 and r.json()["discovery"] == 0.8
    got = api("GET", f"/v1/conversations/{cid}", "read").json()
    assert len(got["messages"]) == 4
    assert api("POST", "/v1/conversations/nope/messages", "read",
               json={"message": "hi"}).status_code == 404
    assert api("POST", "/v1/conversations", "read", json={"message": ""}).status_code == 422
