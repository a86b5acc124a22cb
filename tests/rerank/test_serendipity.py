"""Serendipity: relevant and unexpected beats relevant and expected; irrelevant stays down."""

from __future__ import annotations

import numpy as np

from serendip.rerank import Serendipity
from serendip.types import ItemList, Query
from tests.conftest import make_blocks


def test_prefers_the_far_item_among_equally_relevant() -> None:
    data = make_blocks()
    r = Serendipity(strength=0.8)
    r.train(data)
    hist = data.history(0)[:5]  # block A
    near = [i for i in range(10) if i not in hist][0]
    far = 15
    cand = ItemList(np.array([near, far, 2 if 2 not in hist else 3]), np.array([1.0, 1.0, 0.0]))
    plain = r(Query(0, hist, discovery=0.0), cand, 2)
    assert plain.items[0] == near  # tie keeps the earlier entry
    out = r(Query(0, hist, discovery=0.5), cand, 2)
    np.testing.assert_array_equal(out.items, [far, near])
    assert out.reasons[0][-1].startswith("unlike what you usually choose")
    assert "closest matches" in out.reasons[1][-1]


def test_score_formula_and_irrelevant_items_stay_last() -> None:
    data = make_blocks()
    r = Serendipity(strength=1.0)
    r.train(data)
    vec = r._require_trained()["vectors"].astype(np.float64)
    hist = np.array([0, 1, 2])
    items = np.array([3, 12, 13, 14])
    scores = np.array([1.0, 0.6, 0.4, 0.0])  # 14: unexpected but irrelevant
    out = r(Query(0, hist, discovery=1.0), ItemList(items, scores), 4)
    assert out.items[-1] == 14
    sim = (vec[items] @ vec[hist].T).mean(axis=1)
    expect = scores * np.clip(1 - sim, 0, 1)  # lam = 1
    order = np.argsort(-expect, kind="stable")
    np.testing.assert_array_equal(out.items, items[order])
    np.testing.assert_allclose(out.scores, expect[order], atol=1e-6)
