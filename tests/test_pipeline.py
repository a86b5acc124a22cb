from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import ConfigError, ModelFormatError
from serendip.pipeline import PRESETS, FitConfig, Preset, Recommender, load_fit_config, load_preset
from serendip.types import Query
from tests.conftest import make_blocks

SMALL = FitConfig(models={
    "popularity": {}, "ease": {"l2": 10.0},
    "ease_recent": {"type": "ease", "l2": 10.0, "half_life": 5.0},
    "knn": {"neighbors": 5}, "semantic": {}, "textcf": {}, "transition": {}, "als": {"factors": 4},
})


@pytest.fixture(scope="module")
def rec() -> Recommender:
    return Recommender.fit(make_blocks(), SMALL, progress=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_recommend(rec, preset):
    pipe = rec.pipeline(preset)
    q = pipe.query("u0")
    lst = pipe.recommend(q, k=5)
    assert len(lst) == 5
    assert not set(lst.items) & set(q.history)  # never what the user has
    assert len(set(lst.items)) == 5
    assert all(r and r[0].startswith("because you liked") for r in lst.reason_lists())


def test_accurate_preset_known_answer(rec):
    pipe = rec.pipeline("accurate")
    for uid, block in (("u0", range(0, 10)), ("u30", range(10, 20))):
        lst = pipe.recommend(pipe.query(uid), k=2)
        assert set(lst.items) <= set(block)


def test_discovery_knob_changes_list_and_zero_is_blend_order(rec):
    pipe = rec.pipeline("balanced")
    q = pipe.query("u3")
    zero = pipe.recommend(q, k=6, discovery=0.0)
    blend = rec.pipeline(Preset(name="b", blend=pipe.preset.blend, tail_boost=pipe.preset.tail_boost))
    assert zero.items.tolist() == blend.recommend(q, k=6).items.tolist()
    one = pipe.recommend(q, k=6, discovery=1.0)
    assert one.items.tolist() != zero.items.tolist()


def test_cold_start_user_gets_a_list(rec):
    pipe = rec.pipeline("balanced")
    q = pipe.query("nobody")
    assert q.user is None and len(q.history) == 0
    assert len(pipe.recommend(q, k=4)) == 4


def test_candidates_restrict_pool(rec):
    pipe = rec.pipeline("accurate")
    lst = pipe.recommend(pipe.query("u0"), k=3, candidates=np.array([15, 16, 17, 18]))
    assert set(lst.items) <= {15, 16, 17, 18}


def test_save_load_same_lists(rec, tmp_path):
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    for preset in ("accurate", "balanced", "discovery"):  # deterministic ones
        a, b = rec.pipeline(preset), back.pipeline(preset)
        qs = [a.query(f"u{u}") for u in range(0, 40, 9)]
        for x, y in zip(a.recommend_many(qs, 5), b.recommend_many(qs, 5), strict=True):
            assert x.items.tolist() == y.items.tolist()
            np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5)


def test_loaded_model_holds_one_copy_of_unit_item_vectors(tmp_path):
    """Semantic's state equals the catalog's (unit) vectors: after a load both names point at
    one array; a state that differs (TextCF's, with its bias column) keeps its own."""
    data = make_blocks()
    v = data.item_vectors.astype(np.float32)
    data = data.with_item_vectors(v / np.linalg.norm(v, axis=1, keepdims=True))
    fitted = Recommender.fit(data, FitConfig(models={"semantic": {}, "textcf": {}}),
                             progress=False)
    held = fitted.scorers["semantic"]._state["vectors"]
    assert np.shares_memory(held, fitted.data.item_vectors)
    with pytest.raises(ValueError, match="read-only"):  # the model cannot change the catalog
        held[0, 0] = 0.5
    fitted.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.scorers["semantic"]._state["vectors"] is back.data.item_vectors
    assert back.scorers["textcf"]._state["features"] is not back.data.item_vectors
    q = back.pipeline("accurate").query("u3")
    np.testing.assert_allclose(back.scorers["semantic"].score_many([q]),
                               fitted.scorers["semantic"].score_many([q]), rtol=1e-6)


def test_save_replaces_model_and_refuses_foreign_dir(rec, tmp_path):
    rec.save(tmp_path / "m")
    rec.save(tmp_path / "m")  # overwrite a model: fine
    assert not (tmp_path / "m.tmp-old").exists() and not (tmp_path / "m.tmp-writing").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(ModelFormatError, match="refusing to overwrite"):
        rec.save(tmp_path / "other")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_save_flushes_every_file_and_survives_a_crash_between_the_renames(
        rec, tmp_path, monkeypatch):
    import os
    from pathlib import Path

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rec.save(tmp_path / "m")
    files = [str(p) for p in (tmp_path / "m").rglob("*") if p.is_file()]
    written = {x.replace("m.tmp-writing", "m") for x in synced}
    assert set(files) <= written  # every file reached the disk before the swap
    assert str(tmp_path) in written  # and the renames themselves
    first = Recommender.load(tmp_path / "m").pipeline("accurate").recommend(Query(None, [1]), k=5)

    # a crash after the old model was moved aside and before the new one took its place
    real_rename = Path.rename

    def crash_on_second(self: Path, target: Path) -> Path:
        if self.name == "m.tmp-writing":
            raise KeyboardInterrupt("power cut")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        rec.save(tmp_path / "m")
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (tmp_path / "m").exists() and (tmp_path / "m.tmp-old" / "serendip.json").exists()
    back = Recommender.load(tmp_path / "m")  # the old model is put back
    assert back.pipeline("accurate").recommend(Query(None, [1]), k=5).items.tolist() == \
        first.items.tolist()
    assert not (tmp_path / "m.tmp-old").exists()


def test_load_errors(tmp_path):
    with pytest.raises(ModelFormatError, match="not a serendip model"):
        Recommender.load(tmp_path)


def test_bad_arguments(rec, tmp_path):
    pipe = rec.pipeline("balanced")
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        pipe.recommend(Query(None), k=0)
    with pytest.raises(ConfigError, match="1.5"):
        pipe.recommend(Query(None), k=3, discovery=1.5)
    with pytest.raises(ConfigError, match="'fancy'"):
        load_preset("fancy")
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"preset file '{missing}' does not exist"):
        load_preset(missing)
    meta = tmp_path / "serendip.json"
    meta.write_text("{}")
    with pytest.raises(ModelFormatError, match="is a file; give the model directory"):
        Recommender.load(meta)
    bad = tmp_path / "p.toml"
    bad.write_text('[blend]\nease = 1.0\n[[rerank]]\nname = "shuffle"\n')
    with pytest.raises(ConfigError, match="'shuffle'"):
        load_preset(str(bad))
    bad.write_text('[blend]\nnot_trained = 1.0\n')
    with pytest.raises(ConfigError, match="not_trained"):
        rec.pipeline(load_preset(str(bad)))
    bad.write_text('[blend]\nease = 1.0\ncandidates = "many"\n')
    with pytest.raises(ConfigError):
        load_preset(str(bad))
    bad.write_text('candidates = -3\n[blend]\nease = 1.0\n')
    with pytest.raises(ConfigError, match="candidates"):
        load_preset(str(bad))
    cfg = tmp_path / "fit.toml"
    cfg.write_text('[models.ease]\nl2 = -1\n')
    with pytest.raises(ConfigError, match=r"models\.ease\.l2.*-1"):
        load_fit_config(str(cfg))
    cfg.write_text('[models.foo]\n')
    with pytest.raises(ConfigError, match="'foo'"):
        load_fit_config(str(cfg))
    with pytest.raises(ConfigError, match="not found"):
        load_fit_config(str(tmp_path / "none.toml"))


def test_custom_preset_file(rec, tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('discovery = 1.0\n[blend]\nease = 1.0\n[[rerank]]\nname = "mmr"\nstrength = 1.0\n')
    preset = load_preset(str(p))
    assert preset.name == "mine"
    lst = rec.pipeline(preset).recommend(rec.pipeline(preset).query("u0"), k=4)
    assert len(lst) == 4


# ---------------------------------------------------------------- negative feedback (ratings)
def _rated(low: float = 1.0) -> tuple:
    """Block data where u0 rated one item low; that item's vector is the nearest of all to
    every other block-A item, so an explanation would pick it if it were a like."""
    import pandas as pd

    from serendip.data import Dataset

    base = make_blocks()
    inter = base.interactions
    ratings = np.random.default_rng(0).choice([4.0, 5.0], size=len(inter))
    u0 = inter["user"].to_numpy() == 0
    bad_item = int(inter.loc[u0, "item"].iloc[0])
    ratings[np.flatnonzero(u0)[0]] = low
    frame = pd.DataFrame({"user_id": base.user_ids[inter.user], "item_id": base.item_ids[inter.item],
                          "timestamp": inter.timestamp, "rating": ratings})
    data = Dataset.from_frames(frame, base.items)
    vec = base.item_vectors.copy()
    vec[bad_item] = vec[:10].mean(axis=0)
    vec[bad_item] /= np.linalg.norm(vec[bad_item])
    return data.with_item_vectors(vec), bad_item


def test_low_ratings_are_not_likes(tmp_path):
    data, bad = _rated()
    rec = Recommender.fit(data, SMALL, progress=False)
    assert rec.negative_items(0).tolist() == [bad]
    assert bad not in rec.data.history(0).tolist()  # not in the profile nor in training
    assert rec.data.matrix[0, bad] == 0
    title = data.item_title(bad)
    for preset in ("accurate", "balanced"):
        pipe = rec.pipeline(preset)
        lst = pipe.recommend(pipe.query("u0"), k=8)
        assert bad not in lst.items.tolist()  # never recommended back
        assert not any(title in r[0] for r in lst.reason_lists())
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.negative_items(0).tolist() == [bad]
    pipe = back.pipeline("accurate")
    assert bad not in pipe.recommend(pipe.query("u0"), k=8).items.tolist()


def test_without_the_rule_a_low_rating_is_a_like():
    data, bad = _rated()
    rec = Recommender.fit(data, SMALL.model_copy(update={"negative_below": None}), progress=False)
    assert rec.negative_items(0).size == 0 and bad in rec.data.history(0).tolist()


def test_negative_rules():
    from serendip.pipeline import negative_mask, star_scale_midpoint

    assert star_scale_midpoint(np.array([1.0, 2, 3, 4, 5])) == 3.0
    assert star_scale_midpoint(np.array([0.5, 1.0, 4.5, 5.0])) == 2.75
    assert star_scale_midpoint(np.array([3.0, 17, 250])) is None  # play counts: no bad end
    assert star_scale_midpoint(np.array([1.0, 1.0])) is None  # one level is no scale
    data, bad = _rated(low=2.0)
    assert negative_mask(data, FitConfig()).sum() == 1
    # below the user's own mean: every 4 among 5s, and u0's 2
    m = negative_mask(data, FitConfig(negative_below=None, negative_below_user_mean=True))
    r, mean = data.interactions["rating"], data.interactions.groupby("user")["rating"].transform("mean")
    assert m.sum() == int((r < mean).sum()) and m[np.flatnonzero(r == 2.0)].all()
    assert negative_mask(data, FitConfig(negative_below=1.5)).sum() == 0
