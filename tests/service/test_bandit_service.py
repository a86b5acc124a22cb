"""The adaptive preset in the service: shown slots count, rewards credit once, state persists,
new items get their exposure budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serendip.data.dataset import Dataset
from serendip.explore.bandit import FEATURES
from serendip.pipeline import Recommender
from tests.service.conftest import SMALL, Seed, build_engine, write_seed


def bandit(engine):  # type: ignore[no-untyped-def]
    return engine.state.pipelines["adaptive"].bandit


def stats(engine):  # type: ignore[no-untyped-def]
    return bandit(engine).statistics()


def test_adaptive_lists_learn_from_clicks_and_persist(api, engine, store, tmp_path, seed_files,
                                                      fitted, encoder):
    b = bandit(engine)
    # the shipped preset
    assert b.config.hierarchy and b.config.new_item_share == 0.2 and b.config.positions
    a0, _ = stats(engine)
    shown = []
    for _ in range(3):
        out = api("GET", "/v1/users/u3/recommendations?k=4&preset=adaptive").json()
        assert out["preset"] == "adaptive" and len(out["items"]) == 4
        for it in out["items"]:
            assert 0 < it["propensity"] <= 1 and "features" not in it
        shown.append([it["item_id"] for it in out["items"]])
    a1, b1 = stats(engine)
    # 12 slots counted (bias feature 1), each weighed by its slot's examination rate squared:
    # before any click the rates stay near 1 (slot 0's is 1)
    assert 9.0 <= a1[0, 0] - a0[0, 0] <= 12.0
    d = len(FEATURES)  # one person, the items:
    assert b1[d:d + 2].tolist() == [1.0, float(len(set(sum(shown, []))))]
    exam = b.examination()
    assert exam is not None and exam.shape[1] >= 4 and (exam[1, :4] > 0).all()
    assert (exam[0] == 0).all()  # no click yet
    pos = engine.state.item_pos
    item = shown[-1][0]
    n1, sum1 = b.item_sums(np.array([pos[item]]))
    assert n1[0] == pytest.approx(sum(s.count(item) for s in shown), rel=0.25)
    for key in ("c1", "c1", "c2"):  # a duplicate post, then a second click: credited once
        r = api("POST", "/v1/events", "write", json={"events": [
            {"user_id": "u3", "item_id": item, "type": "click", "idempotency_key": key}]})
        assert r.status_code == 201
    a2, b2 = stats(engine)
    # the shared part: bias feature 1, in the top slot (rate 1); the slot's click counted
    assert b2[0] == pytest.approx(b1[0] + 1.0)
    assert b.examination()[0, 0] == 1.0
    n2, sum2 = b.item_sums(np.array([pos[item]]))
    assert (n2[0], sum2[0]) == (n1[0], pytest.approx(sum1[0] + 1.0))  # and the item's offset
    np.testing.assert_allclose(a2, a1)
    listed = {p["name"]: p for p in api("GET", "/v1/presets", "read").json()["presets"]}
    learned = listed["adaptive"]["learned"]
    assert set(learned) == set(FEATURES)
    assert learned == pytest.approx(b.weights(), abs=1e-6)
    assert listed["balanced"]["learned"] is None
    unseen = next(f"i{n}" for n in range(24) if f"i{n}" not in sum(shown, []))
    api("POST", "/v1/events", "write", json={"events": [
        {"user_id": "u3", "item_id": unseen, "type": "like"}]})
    np.testing.assert_allclose(stats(engine)[1], b2)  # not shown: nothing to credit
    # a refitted model keeps what was learned, offsets included
    learnt_curve = b.examination()
    engine._install(engine.state.rec, time.time())
    np.testing.assert_allclose(stats(engine)[1], b2)
    np.testing.assert_array_equal(bandit(engine).examination(), learnt_curve)
    # and so does a restart: the statistics are saved in the data directory on close
    engine.close()
    again = build_engine(store, tmp_path, seed_files, fitted, encoder)
    try:
        a3, b3 = stats(again)
        np.testing.assert_allclose(a3, a2)
        np.testing.assert_allclose(b3, b2)
        assert bandit(again).item_sums(np.array([pos[item]]))[1][0] == pytest.approx(sum2[0])
        np.testing.assert_array_equal(bandit(again).examination(), learnt_curve)
    finally:
        again.close()


def test_the_adaptive_bandit_sees_how_often_each_candidate_was_shown(api, engine):
    """Each slot's features row (what a click later credits) carries 1 - 0.5^n, n the times
    the person was shown the item in their earlier logged lists; a person shown nothing
    starts at 0, and another person's lists do not count."""
    col = FEATURES.index("shown")
    lists = []
    for user in ("u4", "u4", "u5", "u4"):
        out = api("GET", f"/v1/users/{user}/recommendations?k=6&preset=adaptive").json()
        engine.impression_writer.flush(10.0)  # logged before the next request reads it
        ids = [it["item_id"] for it in out["items"]]
        rows = {item: engine.feedback._shown[(user, item)][1] for item in ids}
        before = sum((got for who, got in lists if who == user), [])
        expect = [1.0 - 0.5 ** before.count(item) for item in ids]
        np.testing.assert_allclose([rows[item][col] for item in ids], expect)
        lists.append((user, ids))
    # the repeats were there to be counted
    assert any(r[col] > 0 for r in (engine.feedback._shown[("u4", i)][1] for i in lists[-1][1]))
    # erased: nothing shown before counts any more
    job = engine.erase_user("u4")["retrain_job"]
    out = api("GET", "/v1/users/u4/recommendations?k=6&preset=adaptive").json()
    assert [engine.feedback._shown[("u4", it["item_id"])][1][col] for it in out["items"]] == [0.0] * 6
    deadline = time.time() + 60  # the erasure's retrain, done before the store closes
    while engine.job(job).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.05)
    assert engine.job(job).status == "succeeded"


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


def test_a_saved_bandit_state_is_restored_whole_or_not_at_all(engine, tmp_path, caplog):
    """An old file without the slot curve restores the statistics and leaves a fresh curve; a
    file whose curve is malformed restores nothing (not the statistics without the curve)."""
    fb = engine.feedback
    b = bandit(engine)
    a0, b0 = (v.copy() for v in b.statistics())
    path = fb._bandit_path("adaptive")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, A=a0 + np.eye(len(a0)), b=b0)  # written before the curve was saved
    fb._carry_bandits(None, engine.state)
    np.testing.assert_allclose(b.statistics()[0], a0 + np.eye(len(a0)))
    assert b.examination() is not None and not b.examination().any()  # fresh curve
    np.savez(path, A=a0 + 2 * np.eye(len(a0)), b=b0, E=np.array([[1.0, np.nan], [1.0, 1.0]]))
    with caplog.at_level("WARNING"):
        fb._carry_bandits(None, engine.state)
    np.testing.assert_allclose(b.statistics()[0], a0 + np.eye(len(a0)))  # unchanged
    assert "examination state must hold finite sums >= 0, got nan" in caplog.text


NEW = ["i24", "i25", "i26"]


def seed_with_new_items(d: Path) -> Seed:
    """The service's seed plus three catalog items nobody has used (new at fit time)."""
    d.mkdir(parents=True, exist_ok=True)
    seed = write_seed(d)
    items = pd.read_csv(seed.items, dtype=str)
    extra = pd.DataFrame({"item_id": NEW, "title": [f"funny space cartoon {i}" for i in NEW],
                          "genres": ["Comedy|Family"] * len(NEW)})
    pd.concat([items, extra], ignore_index=True).to_csv(seed.items, index=False)
    return seed


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_new_items_get_the_configured_exposure_with_exact_weights(store, tmp_path, encoder):
    seed = seed_with_new_items(tmp_path / "seed")
    data = Dataset.from_files(seed.interactions, seed.items)
    assert (data.item_popularity[data.item_numbers(NEW)] == 0).all()
    rec = Recommender.fit(data, SMALL, progress=False, encoder=encoder)  # type: ignore[arg-type]
    engine = build_engine(store, tmp_path / "data", seed, rec, encoder)
    try:
        pipe = engine.state.pipelines["adaptive"]
        q = pipe.query("u3")
        n, k = 1500, 4
        new_pos = {int(i) for i in data.item_numbers(NEW)}
        last = np.zeros(n, dtype=np.int64)
        inv = np.zeros(n)
        for t in range(n):
            lst = pipe.recommend(q, k)
            last[t], inv[t] = lst.items[-1], 1.0 / lst.fields["propensity"][-1]
        is_new = np.isin(last, list(new_pos))
        # the budget alone gives new items the last slot 20% of the time; the bandit may add
        share = is_new.mean()
        assert share >= 0.2 - 4 * np.sqrt(0.2 * 0.8 / n), share
        # each new item's 1{in the last slot} / propensity has mean 1: the logged propensities
        # are the policy's, budget included
        for i in new_pos:
            w = np.where(last == i, inv, 0.0)
            assert (last == i).any()
            assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n), (i, w.mean())
    finally:
        engine.close()
