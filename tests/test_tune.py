"""Self-tuning on synthetic data whose right answer is planted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.pipeline import FitConfig, Preset, Recommender, load_preset, preset_toml
from serendip.tune import TuneConfig, _knob_map, tune

N_CHAINS, CHAIN, STEPS = 6, 10, 7

MODELS = FitConfig(models={
    "popularity": {}, "ease": {}, "transition": {}, "textcf": {},
})


def make_chains(n_users: int = 240, seed: int = 0, timed: bool = True) -> Dataset:
    """Items form chains; every user walks one chain forward from a random start.

    The next item is always the successor of the last one: only a model that reads order
    (transition) knows which neighbour comes next, co-occurrence models see both sides.
    Steps happen in rounds shared by all users, so a global time cut leaves every user with
    a past and a future.  Item vectors are random: text carries no signal.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = int(rng.integers(N_CHAINS))
        start = int(rng.integers(CHAIN - STEPS + 1))
        for s in range(STEPS):
            rows.append((f"u{u}", f"i{c * CHAIN + start + s}", float(s * 10_000 + u)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if not timed:
        inter = inter.sample(frac=1.0, random_state=seed).drop(columns="timestamp")
    n_items = N_CHAINS * CHAIN
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"item {i}" for i in range(n_items)]})
    v = rng.normal(size=(n_items, 8)).astype(np.float32)
    return Dataset.from_frames(inter, items).with_item_vectors(v / np.linalg.norm(v, axis=1)[:, None])


def chain_files(directory, n_users: int) -> tuple[Dataset, list[str]]:
    """The chain data written as events/items CSV files; returns it and the CLI arguments."""
    data = make_chains(n_users=n_users)
    inter = data.interactions
    pd.DataFrame({"user_id": data.user_ids[inter.user], "item_id": data.item_ids[inter.item],
                  "timestamp": inter.timestamp}).to_csv(directory / "events.csv", index=False)
    data.items.to_csv(directory / "items.csv", index=False)
    return data, ["--interactions", str(directory / "events.csv"),
                  "--items", str(directory / "items.csv")]


@pytest.fixture(scope="module")
def timed_result():
    return tune(make_chains(), TuneConfig(budget_seconds=300, rerank_trials=2),
                fit_config=MODELS, progress=False)


def test_planted_order_signal_is_found(timed_result):
    r = timed_result
    assert r.protocol == "time"
    blend = r.presets["accurate"].blend
    # the order-reading model carries the blend: it alone knows which neighbour comes next
    assert max(blend, key=blend.__getitem__) == "transition"
    nd = {n: m["ndcg"] for n, m in r.models.items()}
    assert nd["transition"] > max(nd["ease"], nd["popularity"], nd["textcf"])
    # coordinate ascent starts from the best single model and only accepts improvements (the
    # blend scores through the pipeline, whose cold fill may move a tie: a small tolerance)
    assert r.validation["accurate"]["ndcg"] >= nd["transition"] - 0.005


def test_operating_points_respect_their_floors(timed_result):
    r = timed_result
    acc = r.validation["accurate"]["ndcg"]
    for name, floor in (("balanced", 0.97), ("discovery", 0.90)):
        if name in r.presets:
            m = r.validation[name]
            assert m["ndcg"] >= floor * acc - 1e-12
            assert m["max_list_share_tail"] <= 0.10
            p = r.presets[name]
            assert p.knob is not None and p.knob[0] == (0.0, 0.0) and p.knob[-1][0] == 1.0
            assert 0.0 <= p.discovery <= 1.0


def test_written_presets_round_trip(timed_result, tmp_path):
    paths = timed_result.write(tmp_path)
    assert (tmp_path / "fit.toml") in paths and (tmp_path / "tuning.json") in paths
    for name, preset in timed_result.presets.items():
        path = tmp_path / "presets" / f"{name}.toml"
        text = path.read_text()
        assert text.startswith(f"# {name}: tuned by serendip tune")
        assert load_preset(str(path)).model_dump() == preset.model_dump()
    info = json.loads((tmp_path / "tuning.json").read_text())
    assert info["protocol"] == "time" and "transition" in info["models"]


def test_unordered_data_leaves_order_models_out():
    data = make_chains(timed=False)
    assert not data.time_quality.ordered
    r = tune(data, TuneConfig(budget_seconds=120, rerank_trials=1), progress=False)
    assert r.protocol == "random"
    assert "transition" not in r.fit_config.models and "ease_recent" not in r.fit_config.models
    assert not set(r.presets["accurate"].blend) & {"transition", "ease_recent"}
    assert any("timestamps" in n for n in r.notes)


def test_budget_stops_the_search():
    # a budget already spent: each model is trained once, with its first setting
    r = tune(make_chains(n_users=80), TuneConfig(budget_seconds=1e-9, rerank_trials=3),
             fit_config=MODELS, progress=False)
    assert {n: m["tried"] for n, m in r.models.items()} == {
        "popularity": 1, "ease": 1, "transition": 1, "textcf": 1}
    assert r.models["ease"]["params"] == {"l2": 20.0}


def test_knob_map_hand_computed():
    curve = [(0.0, {"ndcg": 0.20}), (0.2, {"ndcg": 0.20}), (0.4, {"ndcg": 0.19}),
             (0.6, {"ndcg": 0.18}), (0.8, {"ndcg": 0.15})]
    # costs 0, 0.01, 0.02, 0.05 of a span of 0.2 * 0.20 = 0.04 -> knob 0.25, 0.5, 1.25; knob 1
    # lies between the last two: 0.6 + (1 - 0.5) / (1.25 - 0.5) * 0.2
    assert _knob_map(curve, 0.2) == [(0.0, 0.0), (0.25, 0.4), (0.5, 0.6), (1.0, 0.7333)]
    # a sweep that never loses the span: its last point is knob 1
    flat = [(0.0, {"ndcg": 0.2}), (0.5, {"ndcg": 0.199}), (1.0, {"ndcg": 0.198})]
    assert _knob_map(flat, 0.2) == [(0.0, 0.0), (0.025, 0.5), (1.0, 1.0)]


def test_calibrated_knob_maps_request_values():
    p = Preset(name="p", blend={"ease": 1.0}, knob=[(0.0, 0.0), (0.5, 0.6), (1.0, 0.8)])
    assert p.internal_discovery(0.25) == pytest.approx(0.3)
    assert p.internal_discovery(0.75) == pytest.approx(0.7)
    assert Preset(name="q", blend={"ease": 1.0}).internal_discovery(0.3) == 0.3
    with pytest.raises(ValueError, match="knob must be"):
        Preset(name="bad", blend={"ease": 1.0}, knob=[(0.0, 0.0), (0.5, 0.6), (0.4, 0.8)])
    text = preset_toml(p)
    assert "knob" in text


def test_tuned_presets_live_in_the_model_directory(timed_result, tmp_path):
    data = make_chains()
    rec = Recommender.fit(data, timed_result.fit_config, progress=False)
    rec.presets = dict(timed_result.presets)
    rec.tuning = timed_result.summary()
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert set(back.presets) == set(timed_result.presets)
    assert back.pipeline("accurate").preset.blend == timed_result.presets["accurate"].blend
    assert back.tuning is not None and back.tuning["protocol"] == "time"
    # a name without a tuned preset still means the shipped one
    assert back.preset("adaptive").name == "adaptive"


def test_cli_tune_and_fit_tune(tmp_path, capsys):
    from serendip.cli import main

    _, files = chain_files(tmp_path, n_users=120)
    assert main(["-q", "tune", *files, "--out", str(tmp_path / "tuned"), "--budget", "8"]) == 0
    out = capsys.readouterr().out
    assert "tuned on a time validation split" in out and "preset accurate" in out
    assert (tmp_path / "tuned" / "presets" / "accurate.toml").exists()
    assert main(["-q", "fit", *files, "--out", str(tmp_path / "m"), "--tune",
                 "--budget", "8"]) == 0
    assert "presets tuned: accurate" in capsys.readouterr().out
    assert Recommender.load(tmp_path / "m").presets["accurate"].blend
    assert main(["recommend", "--model", str(tmp_path / "m"), "--user", "u1", "-k", "3",
                 "--preset", "accurate"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
    # bad input: one line naming the value, exit 2
    assert main(["tune", *files, "--out", str(tmp_path / "x"), "--budget", "-5"]) == 2
    assert "budget_seconds" in capsys.readouterr().err


def test_deep_models_in_the_fit_config_are_offered_to_the_blend():
    data = make_chains(n_users=60)
    small = {"epochs": 1, "dim": 8, "heads": 1, "batch_size": 32}
    cfg = FitConfig(models={"popularity": {}, "transition": {},
                            "sequential": small, "two_tower": {"epochs": 1, "dim": 8}})
    r = tune(data, TuneConfig(budget_seconds=60, rerank_trials=1), fit_config=cfg,
             progress=False)
    # trained once each (no grid), scored on validation, offered to the blend
    assert r.models["sequential"]["tried"] == 1 and r.models["two_tower"]["tried"] == 1
    assert {"sequential", "two_tower"} <= set(r.fit_config.models)
    assert r.fit_config.models["sequential"] == small


def test_default_models_follow_the_data():
    unordered = make_chains(n_users=40, timed=False)
    cfg = FitConfig().for_data(unordered)  # e.g. a fit config file without [models]
    assert "transition" not in cfg.models and "ease_recent" not in cfg.models
    assert "transition" in FitConfig().for_data(make_chains(n_users=40)).models
    explicit = FitConfig(models={"transition": {}})
    assert explicit.for_data(unordered) is explicit  # models given: taken as written
