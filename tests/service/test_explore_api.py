"""Exploration over HTTP: ?explore= shows pool items, and every impression logs propensities."""

from __future__ import annotations

import numpy as np
import pytest


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


def serve_and_click(api, users, rounds=4, explore=0.5):  # type: ignore[no-untyped-def]
    """Explored lists for ``users``; each user clicks the first and the last item shown."""
    shown = []
    for _ in range(rounds):
        for u in users:
            out = api("GET", f"/v1/users/{u}/recommendations?k=4&explore={explore}").json()
            shown.append((u, out["items"]))
    clicked = set()
    for u, items in shown:
        for it in (items[0], items[-1]):
            if (u, it["item_id"]) not in clicked:
                clicked.add((u, it["item_id"]))
                r = api("POST", "/v1/events", "write", json={"events": [
                    {"user_id": u, "item_id": it["item_id"], "type": "click"}]})
                assert r.status_code == 201
    return shown, clicked


def test_off_policy_estimates_from_the_service_logs(api, engine):
    users = ["u1", "u5", "u22", "u31"]
    shown, clicked = serve_and_click(api, users)
    r = api("GET", "/v1/admin/ope?preset=balanced&explore=0.5")
    assert r.status_code == 200, r.text
    out = r.json()
    n_slots = sum(len(items) for _, items in shown)
    assert out["impressions"] == len(shown) and out["rounds"] == n_slots
    rewards = [float((u, it["item_id"]) in clicked) for u, items in shown for it in items]
    assert out["logged"]["value"] == pytest.approx(np.mean(rewards))
    # the logging policy as its own target: every weight is 1, IPS is the logged mean
    same = out["targets"]["balanced"]
    assert same["overlap"] == 1.0
    assert same["ips"]["value"] == pytest.approx(np.mean(rewards))
    assert same["snips"]["value"] == pytest.approx(np.mean(rewards))
    # the greedy list: weight 1 / (1 - 0.5) on slots that kept the ranked item, 0 elsewhere
    greedy = api("GET", "/v1/admin/ope?preset=balanced&preset=accurate&explore=0").json()
    kept = [float((u, it["item_id"]) in clicked) * ("explore" not in it["badges"])
            for u, items in shown for it in items]
    assert greedy["targets"]["balanced"]["ips"]["value"] == pytest.approx(2 * np.mean(kept))
    assert set(greedy["targets"]) == {"balanced", "accurate"}
    assert 0 <= greedy["targets"]["accurate"]["overlap"] <= 1


def test_off_policy_endpoint_checks_its_input(api):
    assert api("GET", "/v1/admin/ope", "read").status_code == 403
    r = api("GET", "/v1/admin/ope")  # nothing logged with propensities yet: a clear 400
    assert r.status_code == 400 and "no logged recommendation slots" in r.json()["detail"]
    api("GET", "/v1/users/u1/recommendations?k=3")
    for bad in ("explore=2", "window=0", "limit=0", "window=inf"):
        assert api("GET", f"/v1/admin/ope?{bad}").status_code == 422, bad
    r = api("GET", "/v1/admin/ope?preset=nope")
    assert r.status_code == 400 and "'nope'" in r.json()["detail"]


def test_ope_command_reads_the_same_logs(api, engine, store, tmp_path, capsys):
    from serendip.cli import main

    serve_and_click(api, ["u2", "u30"], rounds=3)
    engine.impression_writer.flush(10)
    engine.state.rec.save(tmp_path / "model")
    url = store.url if not store.url.startswith("sqlite://") else store.url
    code = main(["ope", "--store", url, "--model", str(tmp_path / "model"),
                 "--presets", "balanced,discovery", "--explore", "0.5",
                 "--json", str(tmp_path / "ope.json")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "24 logged slots" in text and "balanced" in text and "discovery" in text
    import json

    saved = json.loads((tmp_path / "ope.json").read_text())
    api_view = api("GET", "/v1/admin/ope?preset=balanced&explore=0.5").json()
    assert saved["targets"]["balanced"]["ips"]["value"] == pytest.approx(
        api_view["targets"]["balanced"]["ips"]["value"])
    assert main(["ope", "--store", url, "--model", str(tmp_path / "model"),
                 "--window", "-1"]) == 2
    capsys.readouterr()
    # a data directory without a store: an error, and no empty store left behind
    empty = tmp_path / "nostore"
    empty.mkdir()
    assert main(["ope", "--data-dir", str(empty), "--model", str(tmp_path / "model")]) == 2
    assert "no store in --data-dir" in capsys.readouterr().err
    assert not (empty / "serendip.db").exists()


def test_replay_respects_skips_and_leaves_filtered_lists_out(api, engine):
    users = ["u1", "u6", "u25", "u33"]
    for u in users:  # skip the item each user would have seen first
        top = api("GET", f"/v1/users/{u}/recommendations?k=1").json()["items"][0]["item_id"]
        api("POST", "/v1/events", "write", json={"events": [
            {"user_id": u, "item_id": top, "type": "skip"}]})
    before = api("GET", "/v1/admin/ope?preset=balanced").json()["impressions"]
    shown, clicked = serve_and_click(api, users, rounds=2)
    api("GET", "/v1/users/u1/recommendations?k=4&filter=genres:Drama&explore=0.5")
    out = api("GET", "/v1/admin/ope?preset=balanced&explore=0.5").json()
    assert out["impressions"] == before + len(shown)  # the filtered list is not replayed
    target = out["targets"]["balanced"]
    assert target["overlap"] == 1.0  # the replayed user state includes the skips
    new_slots = sum(len(items) for _, items in shown)
    assert out["rounds"] >= new_slots and target["ips"]["value"] == pytest.approx(
        out["logged"]["value"])
