"""The benchmark's own baselines and peer tuning (bench/peers.py), on tiny synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from peers import Peer, search_peer, top_k, transition_matrix, transition_scores, tune_peer  # noqa: E402
from serendip.data import Dataset  # noqa: E402
from serendip.data.splits import Split  # noqa: E402


def _sequence_log() -> Dataset:
    """Ten users walk the chain a -> b -> c -> d; user "x" has only done a, b (order known)."""
    rows = []
    for u in range(10):
        for t, item in enumerate("abcd"):
            rows.append((f"u{u}", item, t))
    # a second, rarer pattern so the transitions are not all one path: b -> e once
    rows += [("v", "b", 0), ("v", "e", 1), ("v", "f", 2)]
    rows += [("x", "a", 0), ("x", "b", 1)]
    return Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


def _split(data: Dataset, held_out: dict[str, str]) -> Split:
    test = pd.DataFrame({
        "user": [data.user_number(u) for u in held_out],
        "item": data.item_numbers(list(held_out.values())),
    })
    return Split("synthetic", data, test)


def test_transition_baseline_puts_the_known_next_item_first() -> None:
    data = _sequence_log()
    split = _split(data, {"x": "c"})
    users = np.array([data.user_number("x")])
    for window in (1, 3):
        for normalize in (True, False):
            scores = transition_scores(split, users, window=window, normalize=normalize)
            recs = top_k(scores, users, split, 3)
            assert data.item_ids[recs[0, 0]] == "c"
            # the user's own items are never recommended back
            assert not set(data.item_ids[recs[0][recs[0] >= 0]]) & {"a", "b"}


def test_transition_matrix_counts_consecutive_events_only() -> None:
    data = _sequence_log()
    t = transition_matrix(data, normalize=False).toarray()
    idx = {i: n for n, i in enumerate(data.item_ids)}
    assert t[idx["a"], idx["b"]] == 11  # ten walkers and x
    assert t[idx["b"], idx["c"]] == 10
    assert t[idx["b"], idx["e"]] == 1
    assert t[idx["a"], idx["c"]] == 0  # not consecutive
    assert t[idx["d"]].sum() == 0  # last event of every walk
    p = transition_matrix(data, normalize=True).toarray()
    assert p[idx["b"], idx["c"]] == pytest.approx(10 / 11)


def test_top_k_skips_history_and_ranks_unscorable_items_last() -> None:
    data = _sequence_log()
    split = _split(data, {"x": "c"})
    users = np.array([data.user_number("x")])
    scores = np.full((1, data.n_items), -np.inf)
    idx = {i: n for n, i in enumerate(data.item_ids)}
    scores[0, idx["a"]] = 9.0  # in the history: never returned
    scores[0, idx["d"]] = 1.0
    recs = top_k(scores, users, split, data.n_items)
    assert recs[0, 0] == idx["d"]
    assert idx["a"] not in recs[0] and idx["b"] not in recs[0]
    assert (recs[0, -2:] == -1).all()  # two history items: the list runs out


def _planted_peer(best: float) -> Peer:
    """Ranks each user's held-out item first only at lamb == best, last otherwise."""

    def fit_score(split: Split, users: np.ndarray, lamb: float) -> np.ndarray:
        truth = dict(zip(split.test["user"], split.test["item"], strict=True))
        rng = np.random.default_rng(0)
        scores = rng.random((len(users), split.train.n_items))
        for r, u in enumerate(users):
            scores[r, truth[int(u)]] = 10.0 if lamb == best else -10.0
        return scores

    axes = {"lamb": (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)}
    return Peer("planted", fit_score, axes, {"lamb": 500.0})


def test_tune_peer_picks_the_planted_best_lambda() -> None:
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}", t) for u in range(30)
            for t, i in enumerate(rng.choice(40, size=6, replace=False))]
    data = Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    inter = data.interactions.sort_values(["user", "timestamp"])
    last = inter.groupby("user").tail(1)
    val = Split("validation", data.with_interactions(inter.drop(last.index)),
                last[["user", "item"]].reset_index(drop=True))
    users = np.unique(val.test["user"].to_numpy())
    assert tune_peer(_planted_peer(200.0), val, users) == {"lamb": 200.0}
    found = search_peer(_planted_peer(50.0), val, users)
    assert found.params == {"lamb": 50.0}
    assert found.ndcg == pytest.approx(1.0)
    assert len(found.trials) == 7


def test_tune_peer_rejects_users_without_held_out_items() -> None:
    data = _sequence_log()
    split = _split(data, {"x": "c"})
    with pytest.raises(ValueError, match="held-out"):
        tune_peer(_planted_peer(200.0), split, np.array([data.user_number("u0")]))


def test_cornac_ease_is_tuned_over_its_grid_on_the_validation_split() -> None:
    pytest.importorskip("cornac")
    data = _sequence_log()
    split = _split(data, {"x": "c"})
    users = np.array([data.user_number("x")])
    found = search_peer("cornac-EASE", split, users, grid=[{"lamb": 1.0}, {"lamb": 100.0}])
    assert found.params["lamb"] in (1.0, 100.0)
    assert [t[0]["lamb"] for t in found.trials] == [1.0, 100.0]
    # walkers who did a, b also did c and d: EASE, blind to order, ranks c in its top two
    assert found.ndcg >= 1.0 / np.log2(3) - 1e-9


def test_search_extends_an_axis_when_the_best_sits_at_its_end() -> None:
    rng = np.random.default_rng(2)
    rows = [(f"u{u}", f"i{i}", t) for u in range(20)
            for t, i in enumerate(rng.choice(30, size=5, replace=False))]
    data = Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    inter = data.interactions.sort_values(["user", "timestamp"])
    last = inter.groupby("user").tail(1)
    val = Split("validation", data.with_interactions(inter.drop(last.index)),
                last[["user", "item"]].reset_index(drop=True))

    def fit_score(split: Split, users: np.ndarray, lamb: float) -> np.ndarray:
        # accuracy rises with lambda up to 4000 (one step past the grid's end), then falls
        truth = dict(zip(split.test["user"], split.test["item"], strict=True))
        scores = np.random.default_rng(0).random((len(users), split.train.n_items))
        share = max(0.0, 1.0 - abs(np.log2(lamb / 4000.0)) / 12.0)
        good = np.arange(len(users)) < len(users) * share
        for r, u in enumerate(users):
            scores[r, truth[int(u)]] = 10.0 if good[r] else -10.0
        return scores

    peer = Peer("edge", fit_score, {"lamb": (10.0, 100.0, 1000.0, 2000.0)}, {"lamb": 10.0})
    found = search_peer(peer, val)
    assert found.params == {"lamb": 4000.0}
    assert [t[0]["lamb"] for t in found.trials] == [10.0, 100.0, 1000.0, 2000.0, 4000.0, 8000.0]
