"""The adaptive preset in the service: shown slots count, rewards credit once, state persists."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.service.conftest import build_engine


def stats(engine):  # type: ignore[no-untyped-def]
    return engine.state.pipelines["adaptive"].bandit.statistics()


def test_adaptive_lists_learn_from_clicks_and_persist(api, engine, store, tmp_path, seed_files,
                                                      fitted, encoder):
    a0, b0 = stats(engine)
    shown = []
    for _ in range(3):
        out = api("GET", "/v1/users/u3/recommendations?k=4&preset=adaptive").json()
        assert out["preset"] == "adaptive" and len(out["items"]) == 4
        for it in out["items"]:
            assert 0 < it["propensity"] <= 1 and "features" not in it
        shown.append([it["item_id"] for it in out["items"]])
    a1, b1 = stats(engine)
    assert a1[0, 0] == pytest.approx(a0[0, 0] + 12)  # 12 slots counted (bias feature is 1)
    np.testing.assert_allclose(b1, b0)  # ... each with reward 0 so far
    item = shown[-1][0]
    for key in ("c1", "c1", "c2"):  # a duplicate post, then a second click: credited once
        r = api("POST", "/v1/events", "write", json={"events": [
            {"user_id": "u3", "item_id": item, "type": "click", "idempotency_key": key}]})
        assert r.status_code == 201
    a2, b2 = stats(engine)
    assert b2[0] == pytest.approx(b1[0] + 1.0)
    listed = {p["name"]: p for p in api("GET", "/v1/presets", "read").json()["presets"]}
    learned = listed["adaptive"]["learned"]
    assert set(learned) == {"bias", "relevance", "unexpectedness", "novelty", "tail"}
    assert learned == pytest.approx(engine.state.pipelines["adaptive"].bandit.weights(), abs=1e-6)
    assert listed["balanced"]["learned"] is None
    np.testing.assert_allclose(a2, a1)
    unseen = next(f"i{n}" for n in range(24) if f"i{n}" not in sum(shown, []))
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "u3", "item_id": unseen, "type": "like"}]})
    np.testing.assert_allclose(stats(engine)[1], b2)  # not shown: nothing to credit
    # a refitted model keeps what was learned
    engine._install(engine.state.rec, time.time())
    np.testing.assert_allclose(stats(engine)[1], b2)
    # and so does a restart: the statistics are saved in the data directory on close
    engine.close()
    again = build_engine(store, tmp_path, seed_files, fitted, encoder)
    try:
        a3, b3 = stats(again)
        np.testing.assert_allclose(a3, a2)
        np.testing.assert_allclose(b3, b2)
    finally:
        again.close()


def test_concurrent_saves_of_bandit_state_do_not_collide(engine, tmp_path):
    import threading

    errors = []

    def save() -> None:
        try:
            for _ in range(20):
                engine.save_bandits()
        except Exception as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    files = sorted(p.name for p in (tmp_path / "bandits").iterdir())
    assert files == ["adaptive.npz"]  # no temporary files left behind
