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
    for q in (Query(0, data.history(0)), Query(45, data.history(45)), Query(None, np.array([3, 4]))):
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
    got = hybrid.retrieve(Query(None, np.array([0])), retriever, 8, narrow)
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


# ------------------------------------------------------------------ library index backends
def planted(n: int = 4000, d: int = 24, n_top: int = 30, seed: int = 3):
    """Unit vectors around 16 topics, plus ``n_top`` items planted next to the query."""
    x, rng = clustered(n=n, d=d, k=16, seed=seed)
    q = rng.normal(size=d).astype(np.float32)
    q /= np.linalg.norm(q)
    top = rng.choice(n, n_top, replace=False)
    near = q + 0.05 * rng.normal(size=(n_top, d)).astype(np.float32)
    x[top] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return x, q, top, rng


@pytest.mark.parametrize("codes", ["sq8", "flat"])
def test_faiss_index_finds_planted_top_and_recalls_exact_search(codes):
    pytest.importorskip("faiss")
    from serendip.models.retrieval import FaissIndex

    x, q, top, rng = planted()
    index = FaissIndex(x, n_lists=40, codes=codes)
    got = index.search(q, len(top), n_probe=4)
    assert set(got.tolist()) == set(top.tolist())  # the planted items, and only them
    assert np.all(np.diff(x[got] @ q) <= 1e-6)  # best first
    recalls = []
    for _ in range(10):
        qq = x[rng.integers(0, len(x))] + 0.1 * rng.normal(size=x.shape[1]).astype(np.float32)
        want = set(brute_top(x, qq, 100).tolist())
        recalls.append(len(want & set(index.search(qq, 100, n_probe=8).tolist())) / 100)
    assert np.mean(recalls) >= 0.9
    # probing every list is an exact search (re-ranked exactly for the quantized codes)
    qq = rng.normal(size=x.shape[1]).astype(np.float32)
    every = index.search(qq, 50, n_probe=index.n_lists)
    assert set(every.tolist()) == set(brute_top(x, qq, 50).tolist())


def test_usearch_index_finds_planted_top():
    pytest.importorskip("usearch")
    from serendip.models.retrieval import USearchIndex

    x, q, top, _ = planted(n=1500)
    # one insertion thread: a graph built by several threads at once depends on their timing
    index = USearchIndex(x, ef_search=200, threads=1)
    found = set(index.search(q, len(top)).tolist())
    # an approximate graph: nearly all of the planted items (random ids would find about 1)
    assert len(found & set(top.tolist())) >= 0.9 * len(top)


@pytest.mark.parametrize("kind", ["ivf", "faiss"])
def test_near_origin_factors_are_ranked_by_inner_product_not_cosine(kind):
    """ALS leaves unused items near (or at) the origin; a long vector a little off the query
    direction must beat a tiny one pointing straight at it.  (An HNSW graph, usearch, does not
    reliably order the crowd at the origin, which is one reason such spaces are scanned.)"""
    if kind != "ivf":
        pytest.importorskip(kind)
    from serendip.models.retrieval import make_index

    rng = np.random.default_rng(5)
    d = 8
    x = rng.normal(size=(600, d)) * 1e-4  # near the origin
    x[:100] = 0.0  # and exactly at it
    q = np.zeros(d)
    q[0] = 1.0
    x[200] = q * 1e-3  # aligned with the query, tiny: first by cosine, not by inner product
    x[300] = np.r_[0.8, 0.6, np.zeros(d - 2)] * 5.0  # off the query direction, long: first
    x[400] = np.r_[0.6, -0.8, np.zeros(d - 2)] * 3.0  # second
    x = x.astype(np.float32)
    index = make_index(x, RetrievalConfig(index=kind, n_lists=6, ef_search=600))
    got = index.search(q, 5, 6)
    assert got[:3].tolist() == [300, 400, 200]
    assert set(got.tolist()) == set(brute_top(x, q.astype(np.float32), 5).tolist())
    # the factor space of such vectors is scanned exactly, whatever index is configured
    space = FactorSpace(x, RetrievalConfig(index=kind, exact_flops=0))
    assert space.index is None
    assert space.search(q, 3).tolist() == [300, 400, 200]


def test_missing_library_falls_back_to_builtin_ivf(monkeypatch, caplog):
    import sys

    import serendip.models.retrieval as retrieval

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes ``import faiss`` fail
    monkeypatch.setattr(retrieval, "_warned", set())
    assert not retrieval.available("faiss")
    x, q, top, _ = planted(n=1200)
    cfg = RetrievalConfig(index="faiss", exact_flops=0, n_lists=10)
    with caplog.at_level("WARNING", logger="serendip.models.retrieval"):
        space = FactorSpace(x, cfg)
        FactorSpace(x, cfg)
    assert isinstance(space.index, IVFIndex)
    notes = [r.getMessage() for r in caplog.records if "faiss" in r.getMessage()]
    assert len(notes) == 1 and "built-in IVF" in notes[0]  # said once, not per space
    assert set(space.search(q, len(top)).tolist()) == set(top.tolist())


def test_concurrent_searches_equal_sequential_ones():
    pytest.importorskip("faiss")
    from concurrent.futures import ThreadPoolExecutor

    x, _, _, rng = planted(n=3000)
    space = FactorSpace(x, RetrievalConfig(index="faiss", exact_flops=0, n_lists=30))
    queries = rng.normal(size=(64, x.shape[1])).astype(np.float32)
    alone = [space.search(q, 40).tolist() for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: space.search(q, 40).tolist(), queries))
    assert together == alone


def _fit_with(data, retrieval):
    cfg = FitConfig(models={"ease_recent": {"type": "als"}, "textcf": {}, "transition": {},
                            "semantic": {}, "popularity": {}}, retrieval=retrieval)
    return Recommender.fit(data, cfg, progress=False)


def test_backends_give_the_exact_recommendations_and_survive_save_load(tmp_path):
    """With a pool that covers the exact top, every backend (the index only chooses
    candidates; the blend scores them exactly) returns the full-scoring lists, also after
    the model is saved and loaded (the index read back from the model directory)."""
    pytest.importorskip("faiss")
    from serendip.models.retrieval import FaissIndex

    data = make_blocks(n_users=60, n_items=40)
    base = {"mode": "ann", "per_source": 40, "exact_flops": 0, "n_lists": 4, "probe": 1.0}
    qs = [Query(u, data.history(u)) for u in range(0, 60, 6)] + [Query(None, np.array([1, 2]))]
    rec = _fit_with(data, {**base, "index": "faiss"})
    ann = rec.pipeline("balanced").recommend_many(qs, 5)
    retriever = rec.retriever()
    assert retriever is not None
    assert any(isinstance(s.index, FaissIndex) for s in retriever.spaces.values())
    rec.use_retrieval(RetrievalConfig(mode="exact"))
    exact = rec.pipeline("balanced").recommend_many(qs, 5)
    rec.use_retrieval(RetrievalConfig(**{**base, "index": "ivf"}))
    builtin = rec.pipeline("balanced").recommend_many(qs, 5)
    rec.use_retrieval(RetrievalConfig(**{**base, "index": "faiss"}))
    rec.save(tmp_path / "model")
    loaded = Recommender.load(tmp_path / "model")
    assert loaded.retrieval.index == "faiss"
    again = loaded.pipeline("balanced").recommend_many(qs, 5)
    for a, b, c, e in zip(ann, builtin, again, exact, strict=True):
        assert a.items.tolist() == b.items.tolist() == c.items.tolist() == e.items.tolist()
        np.testing.assert_allclose(a.scores, e.scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(c.scores, e.scores, rtol=1e-4, atol=1e-4)


def test_index_option_errors_name_the_field(tmp_path):
    bad = tmp_path / "fit.toml"
    bad.write_text('[retrieval]\nindex = "annoy"\n')
    with pytest.raises(ConfigError, match=r"retrieval\.index.*'annoy'"):
        load_fit_config(str(bad))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_is_the_row_dots_top_whatever_the_blas_threads(seed):
    """The length-ordered scan returns the n best by ``row_dots`` (ties to the longer item),
    with one BLAS thread and with two, on lengths spread over orders of magnitude, exact
    duplicates (ties) and a width where BLAS's last bits depend on the threads."""
    from threadpoolctl import threadpool_limits

    from serendip.models._util import row_dots

    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(3000, 384)) * rng.lognormal(sigma=1.5, size=(3000, 1)))
    x[100:140] = x[7]  # forty copies of one item: ties at whatever rank it reaches
    x = x.astype(np.float32)
    space = FactorSpace(x, RetrievalConfig(exact_flops=10**12))
    space.BLOCK = 256
    for _ in range(3):
        q = rng.normal(size=384).astype(np.float32)
        with threadpool_limits(1):
            one = space.search(q, 60)
        with threadpool_limits(2):
            two = space.search(q, 60)
        assert np.array_equal(one, two)
        exact = row_dots(x, q)
        pos = space._order  # length order -> item
        want = pos[np.lexsort((np.arange(pos.size), -exact[pos]))[:60]]
        assert np.array_equal(one, want)


def test_scan_of_a_zero_query_returns_the_first_items_without_scanning():
    x = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    space = FactorSpace(x, RetrievalConfig(exact_flops=10**12))
    got = space.search(np.zeros(8), 7)
    assert np.array_equal(got, space._order[:7])  # every score is 0: ties to the longer items


def _searches(retriever, queries, n=12):
    """Every query's results in the text space and in its never-seen items."""
    out = [("text", retriever.spaces["text"].search(q, n).tolist()) for q in queries]
    out += [("cold", retriever.cold_spaces["text"].search(q, n).tolist()) for q in queries]
    return out


def test_faiss_indexes_are_saved_with_the_model_and_read_back_only_when_they_fit(
        tmp_path, caplog):
    """``save`` writes the FAISS indexes (the text space and its never-seen items); ``load``
    reads them instead of training again, and they search exactly as the built ones.  Another
    FAISS setting, other vectors or a damaged manifest rebuild them, with the reason logged."""
    pytest.importorskip("faiss")
    import json
    import logging

    import faiss

    from serendip.models.retrieval import INDEX_DIR, FaissIndex

    data = make_blocks(n_users=80, n_items=120)
    inter = data.interactions
    data = data.with_interactions(inter[inter["item"] < 100])  # 100..119: never seen
    base = {"mode": "ann", "per_source": 40, "exact_flops": 0, "n_lists": 6, "probe": 0.34}
    rec = _fit_with(data, {**base, "index": "faiss"})
    built = rec.retriever()
    assert built is not None and built.cold_spaces
    rng = np.random.default_rng(3)
    dim = data.item_vectors.shape[1]
    queries = rng.normal(size=(20, dim)).astype(np.float32)
    model = tmp_path / "model"
    rec.save(model)
    manifest = json.loads((model / INDEX_DIR / "manifest.json").read_text())
    assert manifest["faiss"] == faiss.__version__
    assert set(manifest["spaces"]) >= {"space:text", "cold:text"}

    # read back: no k-means is trained and no moment computed; the bytes, the moments and
    # every search equal the built ones
    import serendip.models.retrieval as retrieval

    trained = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(faiss.IndexIVFScalarQuantizer, "train",
                   lambda self, x: trained.append(len(x)))
    monkey.setattr(retrieval, "_moments", lambda *a: trained.append("moments"))
    try:
        with caplog.at_level(logging.INFO, logger="serendip.models.retrieval"):
            loaded = Recommender.load(model).retriever()
    finally:
        monkey.undo()
    assert loaded is not None and trained == []
    assert "read the stored index of space:text" in caplog.text
    assert set(loaded.spaces) == set(built.spaces)
    for key, space in loaded.spaces.items():
        for name in ("mean", "cov", "norms"):
            np.testing.assert_array_equal(getattr(space, name), getattr(built.spaces[key], name))
        if isinstance(space.index, FaissIndex):
            other = built.spaces[key].index
            assert isinstance(other, FaissIndex)
            np.testing.assert_array_equal(space.index.serialized(), other.serialized())
    assert _searches(loaded, queries) == _searches(built, queries)

    # another setting: rebuilt (and the rebuilt one, from the same seed, searches the same)
    caplog.clear()
    again = Recommender.load(model)
    with caplog.at_level(logging.INFO, logger="serendip.models.retrieval"):
        again.use_retrieval(RetrievalConfig(**{**base, "index": "faiss", "iterations": 11}))
        assert again.retriever() is not None
    assert "built with other retrieval settings" in caplog.text

    # other vectors than the index was built from: rebuilt, never used
    entry = manifest["spaces"]["space:text"]
    manifest["spaces"]["space:text"] = {**entry, "sha256": "0" * 64}
    (model / INDEX_DIR / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="serendip.models.retrieval"):
        rebuilt = Recommender.load(model).retriever()
    assert "space:text is not used (built over other vectors)" in caplog.text
    assert "the stored moments of space:text are not used (built over other vectors)" in (
        caplog.text)
    assert rebuilt is not None and _searches(rebuilt, queries) == _searches(built, queries)

    # index files swapped, or damaged in place: each is rebuilt, never used
    manifest["spaces"]["space:text"] = entry
    files = [manifest["spaces"][k]["file"] for k in ("space:text", "cold:text")]
    for damage in ("swap", "bytes"):
        (model / INDEX_DIR / "manifest.json").write_text(json.dumps(manifest))
        a, b = (model / INDEX_DIR / f for f in files)
        saved = a.read_bytes(), b.read_bytes()
        if damage == "swap":
            a.write_bytes(saved[1])
            b.write_bytes(saved[0])
        else:
            raw = bytearray(saved[0])
            raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
            a.write_bytes(bytes(raw))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serendip.models.retrieval"):
            got = Recommender.load(model).retriever()
        assert "space:text is not used (its file is not the one written)" in caplog.text
        assert got is not None and _searches(got, queries) == _searches(built, queries)
        a.write_bytes(saved[0])
        b.write_bytes(saved[1])

    # a model switched to exact scoring still saves the indexes of its own settings
    switched = Recommender.load(model)
    switched.use_retrieval(RetrievalConfig(mode="exact"))
    switched.save(tmp_path / "again")
    assert (tmp_path / "again" / INDEX_DIR / "manifest.json").is_file()
    with caplog.at_level(logging.INFO, logger="serendip.models.retrieval"):
        caplog.clear()
        assert Recommender.load(tmp_path / "again").retriever() is not None
    assert "read the stored index of space:text" in caplog.text

    # a manifest that cannot be read: a warning, and the model still serves
    (model / INDEX_DIR / "manifest.json").write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serendip.models.retrieval"):
        broken = Recommender.load(model)
    assert "cannot be read" in caplog.text
    assert broken.pipeline("balanced").recommend(Query(0, data.history(0)), 5).items.size == 5


def test_small_catalogs_save_no_index(tmp_path):
    """Below ``min_items`` every item is scored: nothing is built or written at save."""
    from serendip.models.retrieval import INDEX_DIR

    data = make_blocks(n_users=30, n_items=20)
    rec = _fit_with(data, {})
    rec.save(tmp_path / "m")
    assert not (tmp_path / "m" / INDEX_DIR).exists()
