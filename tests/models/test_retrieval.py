"""Candidate retrieval: exact statistics, exact and IVF search, and the blend it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serendip.errors import ConfigError
from serendip.models import SCORERS, Hybrid
from serendip.models.retrieval import FactorSpace, IVFIndex, RetrievalConfig, Retriever
from serendip.pipeline import FitConfig, Recommender, load_fit_config
from serendip.types import Query
from tests.conftest import make_blocks


def brute_top(x: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    s = x @ q
    return np.lexsort((np.arange(s.size), -s))[:n]


def clustered(n: int = 3000, d: int = 16, k: int = 12, seed: int = 0, unit: bool = True):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    x = centres[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, d))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:
        x *= rng.lognormal(sigma=1.5, size=(n, 1))
    return x.astype(np.float32), rng


@pytest.mark.parametrize("unit", [True, False])
def test_ivf_probing_every_list_is_exact(unit):
    x, rng = clustered(unit=unit)
    index = IVFIndex(x, n_lists=20)
    assert sorted(index.ids.tolist()) == list(range(len(x)))  # every item in one list
    for _ in range(5):
        q = rng.normal(size=x.shape[1]).astype(np.float32)
        got = index.search(q, 50, n_probe=index.n_lists)
        assert set(got.tolist()) == set(brute_top(x, q, 50).tolist())
        s = x[got] @ q
        assert np.all(np.diff(s) <= 1e-6)  # best first


def test_ivf_recall_with_partial_probing():
    x, rng = clustered(n=5000, d=24, k=20)
    index = IVFIndex(x)  # sqrt(n) = 71 lists
    recalls = []
    for _ in range(20):
        q = x[rng.integers(0, len(x))] + 0.1 * rng.normal(size=x.shape[1]).astype(np.float32)
        got = index.search(q, 100, n_probe=12)
        recalls.append(len(set(got.tolist()) & set(brute_top(x, q, 100).tolist())) / 100)
    assert np.mean(recalls) >= 0.9


def test_ivf_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        IVFIndex(np.zeros((0, 4), np.float32))
    index = IVFIndex(np.eye(4, dtype=np.float32), n_lists=2)
    with pytest.raises(ValueError, match="3 dimensions"):
        index.search(np.ones(3), 2, 1)


@given(n_items=st.integers(1, 600), d=st.integers(1, 6), n=st.integers(1, 700),
       seed=st.integers(0, 10_000))
def test_norm_ordered_scan_is_exact(n_items, d, n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n_items, d)) * rng.lognormal(sigma=2.0, size=(n_items, 1)))
    x = x.astype(np.float32)
    space = FactorSpace(x, RetrievalConfig(exact_flops=10**9))
    space.BLOCK = 16  # many blocks, so the early stop is exercised
    q = rng.normal(size=d)
    got = space.search(q, n)
    want = brute_top(x, q.astype(np.float32), n)
    assert len(got) == min(n, n_items)
    np.testing.assert_allclose(np.sort(x[got] @ q.astype(np.float32)),
                               np.sort(x[want] @ q.astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_space_statistics_are_the_catalog_moments():
    x, rng = clustered(n=700, d=9, unit=False)
    space = FactorSpace(x, RetrievalConfig())
    for _ in range(3):
        q = rng.normal(size=9)
        scores = x.astype(np.float64) @ q + 2.5
        mu, sd = space.stats(q, 2.5)
        assert mu == pytest.approx(scores.mean(), rel=1e-9, abs=1e-9)
        assert sd == pytest.approx(scores.std(), rel=1e-9)


@pytest.fixture(scope="module")
def data():
    return make_blocks(n_users=60, n_items=40)


@pytest.fixture(scope="module")
def trained(data):
    out = {}
    for name in ("popularity", "ease", "als", "semantic", "textcf", "transition", "knn"):
        m = SCORERS[name]()
        m.train(data)
        out[name] = m
    return out


@pytest.mark.parametrize("tail_boost", [0.0, 2.0])
def test_blend_on_candidates_equals_full_blend(data, trained, tail_boost):
    weights = {"popularity": 0.3, "ease": 1.0, "als": 0.5, "semantic": 0.4, "textcf": 0.7,
               "transition": 0.25}
    hybrid = Hybrid(trained, weights, data.item_popularity, tail_boost)
    retriever = Retriever(trained, data.n_items, RetrievalConfig(mode="ann"))
    assert set(retriever.space_of) == {"popularity", "als", "semantic", "textcf"}
    assert retriever.space_of["semantic"] == retriever.space_of["textcf"]  # one text space
    for q in (Query(0, data.history(0)), Query(45, data.history(45)), Query(None, [3, 4])):
        full = hybrid.score_many([q])[0]
        items = np.array([0, 5, 17, 22, 39])
        np.testing.assert_allclose(hybrid.score_items(q, retriever, items), full[items],
                                   rtol=1e-4, atol=1e-4)


def test_retrieve_matches_exact_top_and_respects_masks(data, trained):
    weights = {"als": 1.0, "textcf": 0.5, "transition": 0.25}
    hybrid = Hybrid(trained, weights, data.item_popularity)
    retriever = Retriever(trained, data.n_items,
                          RetrievalConfig(mode="ann", per_source=10, exact_flops=0, n_lists=4))
    allowed = np.ones(data.n_items, dtype=bool)
    allowed[[1, 2, 30]] = False
    for u in (0, 7, 50):
        q = Query(u, data.history(u))
        full = hybrid.score_many([q])[0]
        full[q.history] = -np.inf
        full[~allowed] = -np.inf
        got = hybrid.retrieve(q, retriever, 8, allowed)
        assert not set(got.items.tolist()) & (set(q.history.tolist()) | {1, 2, 30})
        np.testing.assert_allclose(got.scores, full[got.items], rtol=1e-4, atol=1e-4)
        best = np.sort(full[np.isfinite(full)])[::-1][:8]
        np.testing.assert_allclose(got.scores, best, rtol=1e-4, atol=1e-4)
    # a filter that leaves three items: all three come back, never more
    narrow = np.zeros(data.n_items, dtype=bool)
    narrow[[20, 21, 22]] = True
    got = hybrid.retrieve(Query(None, [0]), retriever, 8, narrow)
    assert sorted(got.items.tolist()) == [20, 21, 22]


def test_pipeline_retrieval_equals_exact_when_sources_cover_the_pool():
    data = make_blocks(n_users=60, n_items=40)
    cfg = FitConfig(models={"ease_recent": {"type": "als"}, "textcf": {}, "transition": {},
                            "semantic": {}, "popularity": {}})
    rec = Recommender.fit(data, cfg, progress=False)
    qs = [Query(u, data.history(u)) for u in range(0, 60, 6)] + [Query(None)]
    exact = rec.pipeline("balanced").recommend_many(qs, 5)
    assert rec.retriever() is None  # 40 items: below the default threshold
    rec.use_retrieval(RetrievalConfig(mode="ann", per_source=40))
    assert rec.retriever() is not None
    ann = rec.pipeline("balanced").recommend_many(qs, 5)
    for a, b in zip(exact, ann, strict=True):
        assert a.items.tolist() == b.items.tolist()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)


def test_retrieval_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "fit.toml"
    bad.write_text('[retrieval]\nmode = "fast"\n')
    with pytest.raises(ConfigError, match=r"retrieval\.mode.*'fast'"):
        load_fit_config(str(bad))
    bad.write_text("[retrieval]\nper_source = 0\n")
    with pytest.raises(ConfigError, match=r"retrieval\.per_source"):
        load_fit_config(str(bad))
    good = tmp_path / "ok.toml"
    good.write_text('[retrieval]\nmode = "ann"\nper_source = 50\n')
    assert load_fit_config(str(good)).retrieval == {"mode": "ann", "per_source": 50}
