"""DPP: the fast greedy MAP equals brute-force greedy log-det maximisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serendip.rerank import DPP
from serendip.rerank.base import minmax
from serendip.rerank.dpp import dpp_alpha, dpp_kernel, greedy_map
from serendip.types import ItemList, Query
from tests.conftest import make_blocks


def brute_force_greedy(kernel: np.ndarray, k: int) -> list[int]:
    """At each step the item whose addition gives the largest log det (no shortcuts)."""
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = -1, -np.inf
        for i in range(kernel.shape[0]):
            if i in chosen:
                continue
            idx = [*chosen, i]
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(idx, idx)])
            val = logdet if sign > 0 else -np.inf
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen


def test_alpha_mapping() -> None:
    assert dpp_alpha(1.0) == 0.0
    assert dpp_alpha(0.5) == 0.5
    assert dpp_alpha(0.2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="0.0"):
        dpp_alpha(0.0)


def test_greedy_map_matches_brute_force_on_six_items() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(6, 4))
    kernel = v @ v.T + 0.1 * np.eye(6)
    picks, gains = greedy_map(np.diag(kernel), lambda j: kernel[j], 6, 1e-12)
    assert picks == brute_force_greedy(kernel, 6)
    # gains are the det ratios, and their product is det of the whole selection
    dets = [np.linalg.det(kernel[np.ix_(picks[: t + 1], picks[: t + 1])]) for t in range(6)]
    np.testing.assert_allclose(np.cumprod(gains), dets, rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), lam=st.floats(0.05, 1.0))
def test_greedy_map_matches_brute_force_property(seed: int, n: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    kernel = dpp_kernel(v, minmax(rng.normal(size=n)), lam)
    picks, _ = greedy_map(np.diag(kernel), lambda j: kernel[j], n, 1e-9)
    assert picks == brute_force_greedy(kernel, len(picks))


def test_reranker_matches_brute_force_on_blocks() -> None:
    data = make_blocks()
    r = DPP(strength=0.8)
    r.train(data)
    vec = r._require_trained()["vectors"]
    items = np.array([0, 1, 2, 11, 12, 13])
    scores = np.array([3.0, 2.9, 2.7, 1.5, 1.4, 0.2])
    lam = 0.8 * 0.75
    out = r(Query(None, discovery=0.75), ItemList(items, scores), 4)
    kernel = dpp_kernel(vec[items], minmax(scores), lam)
    expect = items[brute_force_greedy(kernel, 4)]
    np.testing.assert_array_equal(out.items, expect)
    assert set(out.items[:2].tolist()) == {0, 11}  # one from each block first


def test_early_stop_fills_by_relevance() -> None:
    """Two groups of identical vectors: the kernel has rank 2, so two greedy picks, then fill."""
    data = make_blocks().with_item_vectors(
        np.repeat(np.eye(2, 8, dtype=np.float32), 10, axis=0)
    )
    r = DPP(strength=1.0)
    r.train(data)
    cand = ItemList(np.arange(20), np.linspace(1.0, 0.0, 20))
    out = r(Query(None, discovery=1.0), cand, 6)
    np.testing.assert_array_equal(out.items, [0, 10, 1, 2, 3, 4])
    assert np.all(np.diff(out.scores) <= 0)
