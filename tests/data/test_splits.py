"""Splits: the as-deployed time cut, rolling origins, random holdout, validation carving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import (
    PROTOCOLS,
    Dataset,
    leave_last_out,
    make_split,
    random_split,
    rolling_time_splits,
    temporal_split,
    time_split,
    validation_split,
)
from serendip.errors import ConfigError

# (user, item, time).  Cut at 6: u0..u2 return after it; u3 only appears after it.
# Item "n" is first seen after the cut (by returning users), "d" only by the new user u3,
# "m" is never used at all.
EVENTS = [
    ("u0", "a", 1), ("u0", "b", 2), ("u1", "b", 3), ("u1", "a", 4), ("u2", "c", 5),
    ("u0", "c", 7), ("u0", "n", 8), ("u1", "n", 9), ("u2", "a", 10),
    ("u3", "d", 11), ("u3", "n", 12),
]
ITEMS = ["a", "b", "c", "d", "n", "m"]


def events_data(rows=EVENTS, *, with_time: bool = True) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if not with_time:
        inter = inter.drop(columns="timestamp")
    items = pd.DataFrame({"item_id": ITEMS, "title": [f"title {i}" for i in ITEMS]})
    return Dataset.from_frames(inter, items)


def pairs(data: Dataset, frame: pd.DataFrame) -> set[tuple[str, str]]:
    return {
        (str(data.user_ids[u]), str(data.item_ids[i]))
        for u, i in zip(frame["user"], frame["item"], strict=True)
    }


# --------------------------------------------------------------------------- time cut
def test_time_split_known_answer():
    d = events_data()
    s = time_split(d, 6)
    assert s.name == "time-6"
    assert pairs(d, s.train.interactions) == {
        ("u0", "a"), ("u0", "b"), ("u1", "b"), ("u1", "a"), ("u2", "c")
    }
    # u3 has no training event, so its events are not tested; "d" is therefore not new
    assert pairs(d, s.test) == {("u0", "c"), ("u0", "n"), ("u1", "n"), ("u2", "a")}
    assert s.new_items is not None
    assert [d.item_ids[i] for i in s.new_items] == ["n"]
    assert s.cold_items is None
    # the catalog is kept whole, with text, for items first seen after the cut
    assert s.train.n_items == d.n_items == 6
    assert s.train.items["title"].tolist() == [f"title {i}" for i in ITEMS]
    assert s.train.item_popularity[d.item_numbers(["n"])].tolist() == [0.0]


def test_time_split_min_train_keeps_only_returning_users():
    d = events_data()
    s = time_split(d, 6, min_train=2)  # u2 has one training event
    assert pairs(d, s.test) == {("u0", "c"), ("u0", "n"), ("u1", "n")}
    with pytest.raises(ConfigError, match="min_train must be an integer >= 1, got 0"):
        time_split(d, 6, min_train=0)


def test_time_split_quantile_cut():
    d = events_data()
    # 11 events; the 0.5 quantile cut sits at the event with index floor(5.5) = 5 (time 7),
    # so the 5 earliest events train: the same split as the cut time 6
    s = time_split(d, 0.5)
    assert s.name == "time-0.5"
    assert pairs(d, s.train.interactions) == pairs(d, time_split(d, 6).train.interactions)
    assert pairs(d, s.test) == pairs(d, time_split(d, 6).test)
    # a numeric string is read as the number
    assert pairs(d, time_split(d, "0.5").test) == pairs(d, s.test)


def test_time_split_quantile_counts_on_distinct_times():
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{rng.integers(40)}", float(t))
            for t, u in enumerate(rng.integers(0, 10, size=400))]
    d = Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    n = len(d.interactions)
    for q in (0.3, 0.7, 0.9):
        s = time_split(d, q)
        assert len(s.train.interactions) == int(np.floor(q * n + 1e-9))
        last_train = s.train.interactions["timestamp"].max()
        test_times = d.interactions.merge(s.test, on=["user", "item"])["timestamp"]
        assert (test_times > last_train).all()


def test_time_split_iso_date_matches_epoch_seconds():
    day = 86_400.0
    rows = [(u, i, f"2020-01-{t:02d}") for u, i, t in EVENTS]
    d = events_data(rows)
    assert d.interactions["timestamp"].min() == 1_577_836_800.0  # 2020-01-01 UTC
    by_date = time_split(d, "2020-01-06")
    assert by_date.name == "time-2020-01-06"
    by_number = time_split(d, 1_577_836_800.0 + 5 * day)
    expected = pairs(events_data(), time_split(events_data(), 6).test)
    assert pairs(d, by_date.test) == pairs(d, by_number.test) == expected
    # a zone offset is honoured: 01:00 at +01:00 is midnight UTC
    tz = time_split(d, "2020-01-06T01:00:00+01:00")
    assert pairs(d, tz.train.interactions) == pairs(d, by_date.train.interactions)


def test_time_split_never_tests_a_pair_already_in_train():
    d = events_data()
    # a re-consumption after the cut, as a raw Dataset could hold it
    again = pd.DataFrame({"user": [1], "item": [int(d.item_numbers(["b"])[0])],
                          "timestamp": [13.0]})
    d2 = d.with_interactions(pd.concat([d.interactions, again], ignore_index=True))
    s = time_split(d2, 6)
    assert ("u1", "b") not in pairs(d2, s.test)
    assert pairs(d2, s.test) == pairs(d, time_split(d, 6).test)


@pytest.mark.parametrize(
    "cut, message",
    [
        (0, "leaves the training part empty"),
        (1.0, "leaves the training part empty"),
        (100, "leaves nothing to test"),
        ("1999-13-45", "'1999-13-45' is neither a number nor an ISO-8601 date"),
        ("soon", "'soon'"),
        (True, "True"),
        (float("nan"), "nan"),
        (11, "leaves no test events"),  # only the new user u3 acts after 11
        ([0.5], r"\[0.5\]"),
    ],
)
def test_bad_time_cut_is_one_line_config_error(cut, message):
    with pytest.raises(ConfigError, match=message) as info:
        time_split(events_data(), cut)
    assert "\n" not in str(info.value)


def test_rolling_time_splits_move_the_origin():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(30)}", float(t))
            for t, u in enumerate(rng.integers(0, 8, size=300))]
    d = Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    splits = rolling_time_splits(d, (0.6, 0.75, 0.9))
    assert [s.name for s in splits] == ["time-0.6", "time-0.75", "time-0.9"]
    sizes = [len(s.train.interactions) for s in splits]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert [s.name for s in rolling_time_splits(d)] == ["time-0.7", "time-0.8", "time-0.9"]
    with pytest.raises(ConfigError, match=r"\(\)"):
        rolling_time_splits(d, ())


# --------------------------------------------------------------------------- data without time
def test_time_reading_protocols_refuse_row_order():
    d = events_data(with_time=False)
    assert not d.has_time
    for split in (lambda: time_split(d), lambda: temporal_split(d), lambda: leave_last_out(d),
                  lambda: make_split(d, "time"), lambda: rolling_time_splits(d)):
        with pytest.raises(ConfigError, match="no timestamp column.*'random'"):
            split()
    s = make_split(d, "random", test_ratio=0.5, seed=0)  # the protocol for such data
    assert not s.train.has_time and s.new_items is None


# --------------------------------------------------------------------------- random
def random_data() -> Dataset:
    # user a: 10 events, b: 5, c: 4, d: 1 -> floor(0.2 n) held out = 2, 1, 0, 0
    rows = [(u, f"i{j}") for u, n in (("a", 10), ("b", 5), ("c", 4), ("d", 1)) for j in range(n)]
    return Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id"]))


def test_random_split_holds_out_a_share_per_user():
    d = random_data()
    s = random_split(d, 0.2, seed=7)
    assert s.name == "random-0.2"
    per_user = s.test.groupby("user").size().to_dict()
    assert per_user == {0: 2, 1: 1}
    assert len(s.train.interactions) + len(s.test) == len(d.interactions)
    assert not pairs(d, s.train.interactions) & pairs(d, s.test)
    # the same seed gives the same split, and training histories keep their order
    again = random_split(d, 0.2, seed=7)
    assert pairs(d, again.test) == pairs(d, s.test)
    kept = [i for i in d.history(0) if i not in set(s.test[s.test.user == 0].item)]
    assert list(s.train.history(0)) == kept
    others = {frozenset(pairs(d, random_split(d, 0.2, seed=x).test)) for x in range(8)}
    assert len(others) > 1
    # min_train protects short histories: a 5-event user at ratio 0.9 keeps 2
    big = random_split(d, 0.9, seed=1, min_train=2)
    assert big.test.groupby("user").size().to_dict() == {0: 8, 1: 3, 2: 2}


def test_random_split_bad_ratio():
    with pytest.raises(ConfigError, match="test_ratio must be in \\(0, 1\\), got 1.2"):
        random_split(random_data(), 1.2)


# --------------------------------------------------------------------------- validation
def busy_data(seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{rng.integers(60)}", float(t))
            for t, u in enumerate(rng.integers(0, 12, size=600))]
    return Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


@pytest.mark.parametrize("protocol", ["time", "temporal", "random", "loo", "cold-items"])
def test_validation_split_stays_inside_train(protocol):
    d = busy_data()
    outer = make_split(d, protocol)
    inner = validation_split(outer.train, protocol)
    assert inner.name == f"validation-{outer.name}"
    outer_train = pairs(d, outer.train.interactions)
    inside = pairs(d, inner.train.interactions) | pairs(d, inner.test)
    assert inside <= outer_train
    assert not inside & pairs(d, outer.test)
    assert inner.train.n_items == d.n_items


def test_validation_time_cut_is_a_quantile_of_training_events():
    d = busy_data()
    outer = time_split(d, 0.8)
    inner = validation_split(outer.train, "time")
    n_train = len(outer.train.interactions)
    assert len(inner.train.interactions) == int(np.floor(0.8 * n_train + 1e-9))
    assert inner.train.interactions["timestamp"].max() < outer.train.interactions[
        "timestamp"
    ].sort_values().iloc[len(inner.train.interactions)] + 1e-9
    other = validation_split(outer.train, "time", cut=0.5)
    assert other.name == "validation-time-0.5"


# --------------------------------------------------------------------------- by name
def test_make_split_protocols_and_kwargs():
    d = events_data()
    assert {"time", "random", "temporal", "loo", "cold-items"} == set(PROTOCOLS)
    assert pairs(d, make_split(d, "time", cut=6).test) == pairs(d, time_split(d, 6).test)
    assert make_split(d, "time", cut=6, min_train=2).name == "time-6"
    assert make_split(d, "random", test_ratio=0.5, seed=3).name == "random-0.5"
    assert make_split(d, "temporal", test_ratio=0.5).name == "temporal-0.5"
    assert make_split(d, "loo").name == "loo"
    with pytest.raises(ConfigError, match="'time' does not take 'test_ratio'; it takes: cut"):
        make_split(d, "time", test_ratio=0.2)
    with pytest.raises(ConfigError, match="unknown protocol 'nope'; valid: .*time.*random"):
        make_split(d, "nope")
