"""Replay of the service's logs: unknown items as zero terms, users as clusters, and the
targets' lists computed exactly as serving computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.explore.replay import evaluate_targets, replay_log, served_distribution
from serendip.pipeline import Recommender
from serendip.store import open_store
from serendip.types import ItemList, Query
from tests.service.conftest import SMALL, HashEncoder, build_engine, write_seed


class FixedPipe:
    """A target that always shows item 0 in slot 0 and item 1 in slot 1."""

    rerankers: list[object] = []
    bandit = None

    def slot_distribution(self, query, k, explore=0.0, allowed=None):  # type: ignore[no-untyped-def]
        return np.array([0, 1]), np.eye(2)[:, :k]

    def recommend_many(self, queries, k, discovery, candidates, explore=0.0):  # type: ignore[no-untyped-def]
        return [ItemList(np.array([0, 1]), np.array([2.0, 1.0]))]


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    imps = pd.DataFrame({
        "user_id": ["a", "a", "b"], "context": [None, None, None],
        "propensities": [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
        "timestamp": [100.0, 200.0, 300.0], "item_ids": [["x", "gone"], ["x", "y"], ["gone", "x"]],
        "impression_id": ["i1", "i2", "i3"],
    })
    events = pd.DataFrame({
        "user_id": ["a", "a", "a", "b"], "item_id": ["y", "gone", "x", "x"],
        "timestamp": [50.0, 110.0, 210.0, 310.0], "type": ["like", "click", "click", "click"],
        "value": [np.nan] * 4,
    })
    return imps, events


def test_unknown_logged_items_count_as_zero_terms():
    imps, events = frames()
    replay = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2)
    log = replay.log
    # six logged slots, two of them on an item the model does not know: kept, as action 2
    assert len(log) == 6 and replay.unknown == 2 and log.n_actions == 3
    assert log.action.tolist() == [0, 2, 0, 1, 2, 0]
    # a click within a day after the list on a shown item is its reward (x at 210 counts for
    # both of a's lists)
    assert log.reward.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert log.cluster.tolist() == [0, 0, 0, 0, 1, 1]  # one cluster per user
    out = evaluate_targets(replay, {"fixed": FixedPipe()})
    ips = out["targets"]["fixed"]["ips"]  # type: ignore[index]
    # weight 1 / 0.5 = 2 where the logged (item, slot) is (0, 0) or (1, 1): rounds 0, 2, 3;
    # rewards there 1, 1, 0 -> terms 2, 0, 2, 0, 0, 0 over all six slots (dropping the two
    # unknown slots would give 4 / 4)
    assert ips.value == pytest.approx(4 / 6)
    assert out["logged"].value == pytest.approx(4 / 6)  # type: ignore[union-attr]
    assert out["unknown_items"] == 2 and out["users"] == 2


def test_ratings_below_the_threshold_are_negative_history_as_in_serving():
    imps, events = frames()
    events = pd.concat([events, pd.DataFrame({
        "user_id": ["b"], "item_id": ["y"], "timestamp": [10.0], "type": ["rating"],
        "value": [1.0]})], ignore_index=True)
    replay = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2,
                        negative_below=3.0)
    assert replay.negatives[2].tolist() == [1] and replay.queries[2].history.size == 0
    # a user without any history then is served as a new person (no user row)
    assert replay.queries[2].user == 1  # b had a (negative) event: known
    plain = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2)
    assert plain.queries[2].history.tolist() == [1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("replay")
    (d / "seed").mkdir()
    seed = write_seed(d / "seed")
    encoder = HashEncoder()
    data = Dataset.from_files(seed.interactions, seed.items)
    rec = Recommender.fit(data, SMALL, progress=False, encoder=encoder)  # type: ignore[arg-type]
    store = open_store(f"sqlite:///{d / 'serendip.db'}")
    engine = build_engine(store, Path(d), seed, rec, encoder)
    yield engine, store
    engine.close()
    store.close()


def test_replayed_lists_are_the_lists_the_service_served(served):
    engine, store = served
    users = ["u1", "u5", "u22", "u31", "someone-new"]
    shown = {}
    for u in users:
        out = engine.recommend(u, k=5, preset="balanced")
        shown[out["impression_id"]] = [it["item_id"] for it in out["items"]]
    engine.impression_writer.flush(10)
    s = engine.state
    replay = replay_log(store.impressions_frame(), store.events_frame(), s.item_pos, s.user_pos,
                        s.n_items, negative_below=s.rec.negative_below,
                        excluded=s.excluded if s.excluded.any() else None)
    pipe = s.pipelines["balanced"]
    checked = 0
    for n, imp_id in enumerate(replay.impression_ids):
        if imp_id not in shown:
            continue
        allowed = None
        if replay.negatives[n].size:
            allowed = np.ones(s.n_items, dtype=bool)
            allowed[replay.negatives[n]] = False
        items, probs = served_distribution(pipe, replay.queries[n], replay.sizes[n], 0.0, allowed)
        top = [str(s.item_ids[items[np.argmax(probs[:, slot])]]) for slot in range(probs.shape[1])]
        assert np.allclose(probs.max(axis=0), 1.0)  # deterministic: one item per slot
        assert top == shown[imp_id], imp_id
        checked += 1
    assert checked == len(users)
    # the served balanced list is its own target: every weight is 1, IPS is the logged mean
    out = evaluate_targets(replay, {"balanced": pipe})
    assert out["targets"]["balanced"]["overlap"] == 1.0  # type: ignore[index]
    assert out["targets"]["balanced"]["ips"].value == pytest.approx(out["logged"].value)  # type: ignore[index,union-attr]


def test_query_of_a_new_person_matches_serving():
    imps, events = frames()
    imps.loc[2, "user_id"] = "c"  # c has no events at all
    replay = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1, "c": 2}, n_items=2)
    assert replay.queries[2].user is None and replay.queries[2].history.size == 0
    assert isinstance(replay.queries[0], Query)


def test_replayed_queries_carry_what_the_person_was_shown_before():
    """``Query.shown``: the items of the person's lists logged before, of any kind (a search
    list with its context counts, though it is no round), oldest first, unknown items left
    out, at most ``shown_limit`` lists back; nobody else's."""
    imps, events = frames()
    search = pd.DataFrame({"user_id": ["a"], "context": ["space films"], "propensities": [None],
                           "timestamp": [150.0], "item_ids": [["y", "y"]],
                           "impression_id": ["s1"]})
    imps = pd.concat([imps, search], ignore_index=True)
    replay = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2)
    assert replay.impression_ids == ["i1", "i2", "i3"]
    assert [q.shown.tolist() for q in replay.queries] == [[], [0, 1, 1], []]
    one = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2, shown_limit=1)
    assert [q.shown.tolist() for q in one.queries] == [[], [1, 1], []]
    none = replay_log(imps, events, {"x": 0, "y": 1}, {"a": 0, "b": 1}, n_items=2, shown_limit=0)
    assert all(q.shown.size == 0 for q in none.queries)


def test_replayed_shown_items_are_what_serving_read(served, monkeypatch):
    """The adaptive preset reads the person's earlier lists for its ``shown`` feature; replay
    rebuilds, for each logged list, the very items the bandit was given when it was served,
    also when lists follow each other faster than the impression log writes them."""
    engine, store = served
    s = engine.state
    bandit = s.pipelines["adaptive"].bandit
    given = []
    features = bandit.features

    def spy(query, candidates):  # type: ignore[no-untyped-def]
        given.append(query.shown.copy())
        return features(query, candidates)

    monkeypatch.setattr(bandit, "features", spy)
    served_ids = []
    for u in ["u1", "u1", "u5", "u1", "someone-new", "someone-new", "u1"]:
        served_ids.append(engine.recommend(u, k=5, preset="adaptive")["impression_id"])
    monkeypatch.setattr(bandit, "features", features)
    assert len(given) == len(served_ids)
    engine.impression_writer.flush(10)
    replay = replay_log(store.impressions_frame(), store.events_frame(), s.item_pos, s.user_pos,
                        s.n_items, negative_below=s.rec.negative_below,
                        shown_limit=engine.config.shown_limit)
    got = {i: q.shown for i, q in zip(replay.impression_ids, replay.queries, strict=True)}
    for imp_id, before in zip(served_ids, given, strict=True):
        np.testing.assert_array_equal(got[imp_id], before)
    assert given[-1].size >= 15  # u1's fourth list here: three lists back, none lost
