"""MMR: known answers on blocks data and a hand-computed case."""

from __future__ import annotations

import numpy as np

from serendip.rerank import MMR
from serendip.types import ItemList, Query
from tests.conftest import make_blocks

A, B = set(range(10)), set(range(10, 20))


def block_a_candidates() -> ItemList:
    """Every item, block A scored clearly above block B."""
    return ItemList(np.arange(20), np.r_[np.linspace(2.0, 1.6, 10), np.linspace(1.0, 0.0, 10)])


def test_high_lam_picks_from_both_blocks() -> None:
    r = MMR(strength=0.9)
    r.train(make_blocks())
    cand = block_a_candidates()
    plain = r(Query(0, discovery=0.0), cand, 4)
    assert set(plain.items.tolist()) <= A
    mixed = r(Query(0, discovery=1.0), cand, 4)
    assert mixed.items[0] == 0  # first pick is the most relevant
    assert set(mixed.items.tolist()) & B
    assert set(mixed.items.tolist()) & A
    b_pos = [i for i, x in enumerate(mixed.items) if x in B]
    assert "unlike the rest of this list" in mixed.reasons[b_pos[0]][-1]


def test_hand_computed_three_items() -> None:
    """vectors: item 0 = e1, item 1 ~ e1, item 2 = e2 (pure genre vectors on blocks data)."""
    data = make_blocks()
    r = MMR(strength=0.5)
    r.train(data)
    vec = r._require_trained()["vectors"]
    cand = ItemList(np.array([0, 1, 12]), np.array([1.0, 0.9, 0.0]))
    out = r(Query(None, discovery=1.0), cand, 3)  # lam = 0.5
    rel = np.array([1.0, 0.9, 0.0])
    sim = vec[[0, 1, 12]] @ vec[[0, 1, 12]].T
    # step 2: 0.5 * rel - 0.5 * cos to item 0
    second = np.argmax([-np.inf, 0.5 * rel[1] - 0.5 * sim[1, 0], 0.5 * rel[2] - 0.5 * sim[2, 0]])
    assert second == 2  # 0.45 - 0.5 * ~1 < 0 - 0.5 * ~0
    np.testing.assert_array_equal(out.items, [0, 12, 1])
    np.testing.assert_allclose(out.scores[:2], [0.5, -0.5 * sim[2, 0]], atol=1e-6)


def test_pure_diversity_picks_least_similar_second() -> None:
    data = make_blocks()
    r = MMR(strength=1.0)
    r.train(data)
    vec = r._require_trained()["vectors"]
    rng = np.random.default_rng(1)
    for _ in range(10):
        items = rng.permutation(20)[:8]
        cand = ItemList(items, rng.normal(size=8))
        out = r(Query(None, discovery=1.0), cand, 2)
        first = cand.top(1).items[0]
        assert out.items[0] == first
        rest = [i for i in items if i != first]
        assert out.items[1] == rest[int(np.argmin(vec[rest] @ vec[first]))]
