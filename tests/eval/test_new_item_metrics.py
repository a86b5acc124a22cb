"""New-item and exposure-concentration metrics: hand-computed values and the aggregator."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.eval.metrics import (
    compute_metrics,
    head_by_item_share,
    max_list_share,
    ndcg,
    new_item_share,
    recall,
)

LG3 = 1 / math.log2(3)


# --------------------------------------------------------------------------- standalone
def test_max_list_share_hand_computed():
    lists = np.array([[0, 1], [0, 2], [3, -1]])
    assert max_list_share(lists, 5) == pytest.approx(2 / 3)  # item 0 in 2 of 3 lists
    tail = np.array([False, True, True, True, True])
    assert max_list_share(lists, 5, tail) == pytest.approx(1 / 3)
    # ragged lists are fine; an empty list still counts as an evaluated list
    assert max_list_share([np.array([4]), np.array([4, 1]), np.array([], np.int64)], 5) == (
        pytest.approx(2 / 3)
    )
    assert max_list_share(np.zeros((0, 3), np.int64), 5) == 0.0
    assert max_list_share(lists, 5, np.array([False, False, False, False, True])) == 0.0


def test_max_list_share_bounds_and_errors():
    every = np.tile(np.array([7, 1, 2]), (4, 1))
    assert max_list_share(every, 8) == 1.0  # one item in every list
    spread = np.arange(12).reshape(4, 3)
    assert max_list_share(spread, 12) == pytest.approx(1 / 4)  # nothing repeats
    with pytest.raises(ValueError, match="repeats item 1"):
        max_list_share(np.array([[1, 1]]), 3)
    with pytest.raises(ValueError, match="item index 5"):
        max_list_share(np.array([[5]]), 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        max_list_share(np.array([[0]]), 3, np.array([True]))


def test_new_item_share_hand_computed():
    lists = np.array([[0, 1], [2, -1]])
    assert new_item_share(lists, np.array([1, 2])) == pytest.approx(2 / 3)  # padding not a slot
    assert new_item_share(lists, np.array([], np.int64)) == 0.0
    assert new_item_share([np.array([5, 6, 7, 8])], np.array([8])) == pytest.approx(1 / 4)
    assert new_item_share(np.full((2, 2), -1), np.array([1])) == 0.0


# --------------------------------------------------------------------------- aggregator
def _train() -> Dataset:
    """3 users, 6 items; popularity (3, 2, 0, 0, 0, 0): head (20 %) = items 0 and 1."""
    inter = pd.DataFrame(
        [("u0", "i0"), ("u1", "i0"), ("u1", "i1"), ("u2", "i0"), ("u2", "i1")],
        columns=["user_id", "item_id"],
    )
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(6)]})
    return Dataset.from_frames(inter, items)


RECS = np.array([[4, 1, 2], [5, 1, 3], [1, 3, 4]])
USERS = np.array([0, 1, 2])
TRUTH = {0: np.array([4, 2]), 1: np.array([3]), 2: np.array([5, 4])}
NEW = np.array([4, 5])


def test_compute_metrics_new_items_hand_computed():
    data = _train()
    m = compute_metrics(RECS, USERS, TRUTH, data, 3, new_items=NEW)
    # 9 slots, new items in three: u0's 4, u1's 5, u2's 4
    assert m["new_item_share"] == pytest.approx(3 / 9)
    # 5 held-out pairs, 3 of them new: (u0, 4), (u2, 5), (u2, 4)
    assert m["new_item_test_share"] == pytest.approx(3 / 5)
    # u1 holds out no new item and is skipped; u0 finds 4 at rank 1 of {4};
    # u2 finds 4 at rank 3 of {4, 5}
    assert m["recall_new"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg_new"] == pytest.approx((1 + 0.5 / (1 + LG3)) / 2)
    # item 1 is in every list; among tail items (2..5) 3 and 4 are in two of three
    assert m["max_list_share"] == 1.0
    assert m["max_list_share_tail"] == pytest.approx(2 / 3)
    assert head_by_item_share(data.item_popularity, 0.2).tolist() == [True, True] + [False] * 4


def test_new_item_accuracy_equals_the_per_list_functions():
    data = _train()
    m = compute_metrics(RECS, USERS, TRUTH, data, 3, new_items=NEW)
    rows = [(RECS[r], np.intersect1d(TRUTH[u], NEW)) for r, u in enumerate(USERS)]
    rows = [(rec, rel) for rec, rel in rows if rel.size]
    assert m["recall_new"] == pytest.approx(np.mean([recall(a, b, 3) for a, b in rows]))
    assert m["ndcg_new"] == pytest.approx(np.mean([ndcg(a, b, 3) for a, b in rows]))
    assert m["max_list_share"] == pytest.approx(max_list_share(RECS, data.n_items))


def test_new_item_keys_only_with_new_items():
    data = _train()
    plain = compute_metrics(RECS, USERS, TRUTH, data, 3)
    assert {"new_item_share", "new_item_test_share", "recall_new", "ndcg_new"}.isdisjoint(plain)
    assert plain["max_list_share"] == 1.0
    with_new = compute_metrics(RECS, USERS, TRUTH, data, 3, new_items=NEW)
    for key, value in plain.items():  # the existing keys do not move
        assert with_new[key] == pytest.approx(value, nan_ok=True), key
    none_new = compute_metrics(RECS, USERS, TRUTH, data, 3, new_items=np.array([], np.int64))
    assert none_new["new_item_share"] == 0.0 and none_new["new_item_test_share"] == 0.0
    assert math.isnan(none_new["recall_new"]) and math.isnan(none_new["ndcg_new"])


def test_padding_and_k_cut_apply_to_the_new_metrics():
    data = _train()
    recs = np.array([[-1, 4, 1, 2, 5], [5, -1, 1, 3, 0], [1, 3, 4, -1, 2]])
    m = compute_metrics(recs, USERS, TRUTH, data, 3, new_items=NEW)
    # after dropping padding and cutting at k these are RECS exactly
    base = compute_metrics(RECS, USERS, TRUTH, data, 3, new_items=NEW)
    for key in ("new_item_share", "recall_new", "ndcg_new", "max_list_share",
                "max_list_share_tail"):
        assert m[key] == pytest.approx(base[key]), key
    short = compute_metrics(np.array([[4, -1], [-1, -1], [1, -1]]), USERS, TRUTH, data, 2,
                            new_items=NEW)
    assert short["new_item_share"] == pytest.approx(1 / 2)  # two valid slots, one new
    assert short["max_list_share"] == pytest.approx(1 / 3)


def test_new_items_out_of_range():
    with pytest.raises(ValueError, match="new_items holds item index 9"):
        compute_metrics(RECS, USERS, TRUTH, _train(), 3, new_items=np.array([9]))
