"""The batch bound of the text index (bench/batch_floor.py), on a small space."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from batch_floor import measure, refine  # noqa: E402
from index import exact_top, text_space  # noqa: E402
from serendip.models.retrieval import FaissIndex, _query, available  # noqa: E402

pytestmark = pytest.mark.skipif(not available("faiss"), reason="faiss-cpu is not installed")


def _space() -> tuple[np.ndarray, np.ndarray, FaissIndex]:
    x, q = text_space(3000, np.random.default_rng(0), 12, d=32)
    return x, q, FaissIndex(x, 20, iterations=5, seed=0)


def test_batch_re_ranking_returns_what_the_served_search_returns() -> None:
    import faiss

    _, queries, index = _space()
    pool, n_probe = 50, 4
    params = faiss.SearchParametersIVF()
    params.nprobe = n_probe
    q = np.stack([_query(v, index.dim, index._stored) for v in queries])
    found = np.stack([index.index.search(v[None], FaissIndex.REFINE * pool, params=params)[1][0]
                      for v in q])
    got = refine(index, q, found, pool)
    for v, ids in zip(queries, got, strict=True):
        assert ids.tolist() == index.search(v, pool, n_probe).tolist()


def test_probing_every_list_recalls_the_exact_top_and_the_ceiling_counts_the_probed_share(
) -> None:
    x, queries, index = _space()
    pool = 50
    truth = [set(exact_top(x, v, pool).tolist()) for v in queries]
    every = measure(index, queries, truth, pool, index.n_lists, 1e9, x.shape[0], 1)
    assert every["recall"] == pytest.approx(1.0)
    assert every["share"] == 1.0
    # 2 d operations per probed item and query: 1e9 / (2 * 32 * 3000)
    assert every["gemm_ceiling_per_s"] == pytest.approx(1e9 / (2 * 32 * 3000))
    half = measure(index, queries, truth, pool, index.n_lists // 2, 1e9, x.shape[0], 1)
    assert half["gemm_ceiling_per_s"] == pytest.approx(2 * every["gemm_ceiling_per_s"])
    assert half["recall"] <= every["recall"]
