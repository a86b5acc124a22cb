"""The knob sweep behind the report: the shared-scoring sweep gives the per-value pipeline's
lists exactly, and the runner records K and one row per knob value."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset, make_split
from serendip.errors import ConfigError
from serendip.eval.runner import evaluate_pipeline, run_experiment, sweep_knob, truth_of
from serendip.pipeline import FitConfig, Pipeline, Preset, Recommender

MIX = Preset(
    name="mix", blend={"popularity": 1.0, "semantic": 1.0}, candidates=25, discovery=0.5,
    rerank=[{"name": "multi_objective", "strength": 0.9,
             "weights": {"novelty": 1.0, "diversity": 1.0, "exposure": 0.5}}],
)


def small_data() -> Dataset:
    """40 users over 60 items with a popular head; vectors in four clusters."""
    rng = np.random.default_rng(3)
    pop = 1.0 / np.arange(1, 61) ** 0.8
    rows = []
    t = 0.0
    for u in range(40):
        for i in rng.choice(60, size=10, replace=False, p=pop / pop.sum()):
            rows.append((f"u{u}", f"i{i}", t))
            t += 1.0
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(60)],
                          "title": [f"item {i}" for i in range(60)]})
    data = Dataset.from_frames(inter, items)
    vec = rng.normal(size=(data.n_items, 8)).astype(np.float32)
    vec[:, 0] += 3.0 * (np.arange(data.n_items) % 4)
    return data.with_item_vectors(vec / np.linalg.norm(vec, axis=1, keepdims=True))


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    keys = set(a) - {"recommend_seconds"}
    return keys == set(b) - {"recommend_seconds"} and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)


@pytest.mark.parametrize("protocol", ["loo", "cold-items"])
def test_sweep_matches_a_fresh_pipeline_per_value(protocol):
    data = small_data()
    split = make_split(data, protocol)
    rec = Recommender.fit(split.train, FitConfig(models={"popularity": {}, "semantic": {}}),
                          progress=False)
    truth = truth_of(split)
    values = [0.0, 0.3, 0.7, 1.0]
    fast = sweep_knob(rec, MIX, split, values, k=5, truth=truth)
    slow = [evaluate_pipeline(Pipeline(rec, MIX), split, 5, v, truth) for v in values]
    assert len(fast) == len(values)
    for a, b in zip(fast, slow, strict=True):
        assert _same(a, b), {k: (a[k], b[k]) for k in a if k in b and a[k] != b[k]}
    # the knob does move the lists, so the comparison above is not of four equal rows
    assert not _same(fast[0], fast[-1])
    with pytest.raises(ConfigError, match=r"knob values must be between 0 and 1, got \[1.5\]"):
        sweep_knob(rec, MIX, split, [0.5, 1.5], k=5, truth=truth)


def test_runner_rows_carry_k_and_every_knob_value():
    data = small_data()
    values = (0.0, 0.25, 0.5, 0.75, 1.0)
    res = run_experiment(data, "loo", ("popularity",), (MIX,), k=5, sweep=values,
                         fit_config=FitConfig(models={"semantic": {}}), progress=False)
    assert list(res["kind"]) == ["model", "preset"] + ["sweep"] * len(values)
    assert (res["k"] == 5).all()
    sweep = res[res["kind"] == "sweep"]
    assert list(sweep["discovery"]) == list(values)
    # the preset's own row is the sweep at its setting (0.5)
    preset = res[res["kind"] == "preset"].iloc[0]
    at = sweep[sweep["discovery"] == 0.5].iloc[0]
    assert preset["ndcg"] == at["ndcg"] and preset["novelty"] == at["novelty"]
