"""Exploration over HTTP: ?explore= shows pool items, and every impression logs propensities."""

from __future__ import annotations

import numpy as np


def test_explore_param_logs_propensities(api, engine, store):
    plain = api("GET", "/v1/users/u2/recommendations?k=5").json()
    assert plain["explore"] == 0.0
    assert all(it["propensity"] == 1.0 and "explore" not in it["badges"] for it in plain["items"])
    seen_explored = False
    for _ in range(15):  # epsilon 0.6 over 5 slots: an explored slot is all but certain
        out = api("GET", "/v1/users/u2/recommendations?k=5&explore=0.6").json()
        assert out["explore"] == 0.6 and len(out["items"]) == 5
        assert len({it["item_id"] for it in out["items"]}) == 5
        for it in out["items"]:
            explored = "explore" in it["badges"]
            seen_explored |= explored
            if explored:
                assert it["reasons"][0].startswith("exploring") and it["propensity"] < 0.4
            else:
                assert it["propensity"] == 0.4 or it["propensity"] == 1.0
    assert seen_explored
    engine.impression_writer.flush(10)
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    last = frame[frame["impression_id"] == out["impression_id"]].iloc[0]
    np.testing.assert_allclose(last["propensities"], [it["propensity"] for it in out["items"]])
    assert list(last["item_ids"]) == [it["item_id"] for it in out["items"]]
    for bad in ("explore=1.5", "explore=-0.1", "explore=nan", "explore=abc"):
        r = api("GET", f"/v1/users/u2/recommendations?{bad}")
        assert r.status_code == 422 and "explore" in r.json()["errors"][0]["field"], bad
