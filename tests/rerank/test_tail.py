"""xQuAD over head/tail groups: hand-computed steps and a higher tail share on blocks data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.rerank import TailXQuAD
from serendip.types import ItemList, Query
from tests.conftest import make_blocks


def staircase() -> Dataset:
    """Item i (0..9) is seen by 10 - i users, so with head_share 0.2 the head is {0, 1}."""
    rows = [(f"u{u}", f"i{i}") for u in range(10) for i in range(10 - u)]
    return Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id"]))


CAND = ItemList(np.array([0, 1, 5, 6, 9]), np.array([1.0, 0.9, 0.6, 0.5, 0.0]))


def test_head_is_the_most_popular_fifth() -> None:
    r = TailXQuAD()
    r.train(staircase())
    np.testing.assert_array_equal(np.flatnonzero(r._require_trained()["head"]), [0, 1])


@pytest.mark.parametrize("binary", [True, False])
def test_hand_computed(binary: bool) -> None:
    """lam = 0.5, P(tail|u) = 0.5 (no history): val = 0.5 rel + 0.25 * cover(group)."""
    r = TailXQuAD(strength=1.0, binary=binary)
    r.train(staircase())
    out = r(Query(None, discovery=0.5), CAND, 5)
    # step 1: item 0 (0.75); step 2: tail item 5 (0.55) beats head item 1 (0.45 + 0.25 * cover)
    np.testing.assert_array_equal(out.items, [0, 5, 1, 6, 9])
    if binary:  # both groups covered after step 2: pure relevance afterwards
        np.testing.assert_allclose(out.scores, [0.75, 0.55, 0.45, 0.25, 0.0])
    else:  # smooth: 0.575 at step 3 is clipped to the running minimum 0.55
        np.testing.assert_allclose(out.scores, [0.75, 0.55, 0.55, 0.25 + 0.25 * 2 / 3, 0.125])
    assert out.reasons[1][-1] == "few people have found it yet (5 so far)"
    assert "closest matches" in out.reasons[0][-1]


def test_user_preference_steers_promotion() -> None:
    """A user who only watches head items gets no tail push; a tail watcher does."""
    r = TailXQuAD(strength=1.0)
    r.train(staircase())
    head_fan = r(Query(0, np.array([0, 1]), discovery=0.5), CAND, 3)
    tail_fan = r(Query(0, np.array([4, 7, 8]), discovery=0.5), CAND, 3)
    np.testing.assert_array_equal(head_fan.items, [0, 1, 5])
    assert set(tail_fan.items.tolist()) >= {5, 6}


def test_raises_tail_share_on_blocks() -> None:
    data = make_blocks()
    r = TailXQuAD(strength=1.0)
    r.train(data)
    head = r._require_trained()["head"]
    pop = data.item_popularity
    cand = ItemList(np.arange(20), pop + np.linspace(0, 0.01, 20))  # a popularity-biased scorer
    shares = []
    for user in range(data.n_users):
        q0 = Query(user, data.history(user), discovery=0.0)
        q1 = Query(user, data.history(user), discovery=1.0)
        before = r(q0, cand, 5).items
        after = r(q1, cand, 5).items
        shares.append((1 - head[before].mean(), 1 - head[after].mean()))
    before_mean, after_mean = np.mean(shares, axis=0)
    assert after_mean > before_mean + 0.2
    assert all(a >= b for b, a in shares)
