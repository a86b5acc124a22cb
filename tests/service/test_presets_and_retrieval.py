"""Serving beyond the shipped set-up: custom presets, models without EASE, and the
candidate-retrieval path that large catalogs take (forced on here, on a small catalog)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serendip.cli import build_parser
from serendip.data import Dataset
from serendip.errors import ConfigError
from serendip.models.retrieval import RetrievalConfig
from serendip.pipeline import (
    LARGE_CATALOG_NEXT,
    FitConfig,
    Recommender,
    adapt_shipped_preset,
    load_preset,
)
from serendip.service import Engine, EngineConfig, create_app
from serendip.service.app import _preset_file
from serendip.store import open_store
from serendip.store.base import EventRecord, ItemRecord
from tests.service.conftest import HashEncoder, Seed, make_keys

NO_EASE = FitConfig(models={"popularity": {}, "als": {"factors": 4}, "semantic": {},
                            "textcf": {}, "transition": {}})


def engine_for(tmp_path: Path, seed: Seed, rec: Recommender, encoder: HashEncoder,
               **config: object) -> Engine:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    cfg = EngineConfig(data_dir=tmp_path, seed_interactions=str(seed.interactions),
                       seed_items=str(seed.items), **config)  # type: ignore[arg-type]
    e = Engine(store, cfg, recommender=rec, encoder=encoder)
    e.start()
    return e


@pytest.fixture(scope="module")
def no_ease(seed_files: Seed, encoder: HashEncoder) -> Recommender:
    data = Dataset.from_files(seed_files.interactions, seed_files.items)
    return Recommender.fit(data, NO_EASE, progress=False, encoder=encoder)  # type: ignore[arg-type]


def test_shipped_presets_move_missing_members_to_their_substitute(no_ease):
    shipped = load_preset("balanced")
    adapted = adapt_shipped_preset(shipped, no_ease.scorers)
    assert "ease_recent" in shipped.blend and "ease_recent" not in adapted.blend
    assert adapted.blend["als"] == shipped.blend["ease_recent"]
    assert {k: v for k, v in adapted.blend.items() if k != "als"} == {
        k: v for k, v in shipped.blend.items() if k != "ease_recent"}
    assert "ease_recent -> als" in adapted.description
    assert adapted.rerank == shipped.rerank
    # a model that has every member keeps the preset as it is
    assert adapt_shipped_preset(shipped, {**no_ease.scorers, "ease_recent": None}) is shipped  # type: ignore[dict-item]
    lst = no_ease.pipeline("balanced").recommend_many([no_ease.pipeline("balanced").query("u1")], 5)
    assert len(lst[0]) == 5


def test_user_preset_naming_a_missing_model_is_reported_not_fatal(
        tmp_path, seed_files, no_ease, encoder):
    strict = load_preset("balanced").model_copy(update={"name": "strict"})  # blends ease_recent
    mine = load_preset("accurate").model_copy(update={"name": "mine", "blend": {"als": 1.0}})
    e = engine_for(tmp_path, seed_files, no_ease, encoder, presets=(strict, mine))
    try:
        names = [p["name"] for p in e.presets()]
        assert names == ["accurate", "balanced", "discovery", "adaptive", "mine"]
        assert len(e.recommend("u1", 4, "mine")["items"]) == 4
        assert len(e.recommend("u1", 4)["items"]) == 4  # default: balanced, adapted
        with pytest.raises(ConfigError, match=r"'strict' is not available.*ease_recent"):
            e.recommend("u1", 4, "strict")
        with pytest.raises(ConfigError, match=r"unknown preset 'nope'.*mine"):
            e.recommend("u1", 4, "nope")
    finally:
        e.close()


def test_serve_preset_files_are_checked_and_parsed(tmp_path):
    f = tmp_path / "weekend.toml"
    f.write_text('description = "weekend"\ncandidates = 50\n[blend]\nals = 1.0\n')
    p = _preset_file(str(f), load_preset)
    assert p.name == "weekend" and p.blend == {"als": 1.0}
    with pytest.raises(ConfigError, match="not found.*missing.toml"):
        _preset_file(str(tmp_path / "missing.toml"), load_preset)
    with pytest.raises(ConfigError, match=r"\.toml file, got 'weekend'"):
        _preset_file("weekend", load_preset)
    spaced = tmp_path / "my weekend.toml"
    spaced.write_text("[blend]\nals = 1.0\n")
    with pytest.raises(ConfigError, match="'my weekend'.*cannot be requested"):
        _preset_file(str(spaced), load_preset)
    args = build_parser().parse_args(["serve", "--preset", str(f), "--preset", "b.toml"])
    assert args.preset == [str(f), "b.toml"]


def test_default_fit_config_has_no_dense_models_on_large_catalogs():
    assert "ease_recent" in FitConfig.default_for(1682).models
    big = FitConfig.default_for(100_000).models
    assert not {"ease", "ease_recent", "knn"} & set(big) and "als" in big
    assert big["transition"] == {"max_next": LARGE_CATALOG_NEXT}
    assert "max_next" not in FitConfig.default_for(1682).models["transition"]


@pytest.fixture
def retrieving(tmp_path, seed_files, fitted, encoder):
    """An engine whose model retrieves candidates (as on a large catalog) with small sources."""
    rec = Recommender(fitted.data, fitted.scorers, fitted.config)
    rec.use_retrieval(RetrievalConfig(mode="ann", per_source=3, exact_flops=0, n_lists=3))
    e = engine_for(tmp_path, seed_files, rec, encoder, fit_config=fitted.config)
    yield e
    e.close()


def test_retrieval_path_serves_the_same_lists_as_full_scoring(
        retrieving, tmp_path, seed_files, fitted, encoder):
    assert retrieving.state.retriever is not None
    full = engine_for(tmp_path / "full", seed_files, fitted, encoder, fit_config=fitted.config)
    try:
        assert full.state.retriever is None
        for user in ("u1", "u25", "nobody"):
            for preset in ("accurate", "balanced", "discovery"):
                a = retrieving.recommend(user, 6, preset)["items"]
                b = full.recommend(user, 6, preset)["items"]
                assert [x["item_id"] for x in a] == [x["item_id"] for x in b], (user, preset)
                np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b],
                                           atol=1e-4)
        # a filter narrower than the sources: every matching item is still considered
        a = retrieving.recommend("u1", 20, "balanced", filters=["genres:Drama"])["items"]
        b = full.recommend("u1", 20, "balanced", filters=["genres:Drama"])["items"]
        assert [x["item_id"] for x in a] == [x["item_id"] for x in b]
    finally:
        full.close()


def test_search_on_the_retrieval_path(retrieving):
    keys = make_keys(retrieving.store)
    with TestClient(create_app(retrieving)) as c:
        r = c.post("/v1/search", headers=keys.h("read"),
                   json={"query": "a funny space cartoon", "user_id": "u30", "k": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["items"]) == 5 and len(out["session_items"]) == 3
    titles = [x["title"] for x in out["items"]]
    assert sum("funny space cartoon" in t for t in titles) >= 3  # the request wins over taste
    assert all(x["reasons"][0].endswith("matches \u201cfunny space cartoon\u201d")
               for x in out["items"])
    hist = {h["item_id"] for h in retrieving.history_rows("u30", 500)}
    assert not hist & {x["item_id"] for x in out["items"]}


def wait_for(condition, timeout: float = 60.0) -> bool:
    """Poll until ``condition()`` holds (a bound on waiting, not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_new_catalog_items_reach_lists_through_an_automatic_refresh(
        tmp_path, seed_files, fitted, encoder):
    e = engine_for(tmp_path, seed_files, fitted, encoder, fit_config=fitted.config,
                   refresh_interval=0.05)
    try:
        assert e.refresh_reason() is None
        version = e.version
        e.upsert_items([ItemRecord("new1", {"title": "funny space cartoon new", "genres": "Comedy"})])
        e.append_events([EventRecord("u1", "new1", "like", None, None)])
        assert e.state.index("new1") is None  # not in the model yet
        assert wait_for(lambda: e.version > version and not e.retraining)
        assert e.state.index("new1") is not None
        jobs = [j for j in e.lifecycle._jobs.values() if j.kind == "refresh"]
        assert jobs and jobs[-1].status == "succeeded" and "1 new item" in (jobs[-1].reason or "")
        assert e.refresh_reason() is None  # nothing left to do
        sim = e.similar("new1", 3)["items"]
        assert len(sim) == 3
        # closed, then started again: the refresher runs again
        e.close()
        loops = e.lifecycle._threads
        assert wait_for(lambda: not loops["serendip-refresh"].is_alive())
        e.start()
        assert loops["serendip-refresh"].is_alive()
    finally:
        e.close()


def test_refresh_interval_must_be_a_non_negative_number(capsys):
    from serendip.cli import main

    assert main(["serve", "--refresh-interval", "-1"]) != 0
    assert "--refresh-interval must be >= 0 seconds, got -1" in capsys.readouterr().err


def test_refresh_past_the_large_catalog_size_drops_the_dense_models(engine, monkeypatch):
    import serendip.pipeline
    import serendip.service.lifecycle

    assert "ease" in engine.fit_config().models  # the model's own config, 24 items
    monkeypatch.setattr(serendip.pipeline, "LARGE_CATALOG", 20)
    monkeypatch.setattr(serendip.service.lifecycle, "LARGE_CATALOG", 20)
    engine.config.fit_config = None
    models = engine.fit_config().models
    assert not {"ease", "ease_recent", "knn"} & set(models) and "als" in models
