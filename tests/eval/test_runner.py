"""The experiment runner on the time protocol: new items are ranked, and measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset, make_split
from serendip.errors import ConfigError
from serendip.eval.runner import run_experiment
from serendip.pipeline import FitConfig

NEW = ["i8", "i9", "i18", "i19"]


def two_taste_timeline(with_time: bool = True) -> Dataset:
    """Before t=100 users use four old items of their block (A: 0-7, B: 10-17); after it each
    returns for the two items of their block that nobody had seen (8, 9 / 18, 19).

    Item vectors point to the block, so a text model ranks the new items among the user's
    six unseen block items while popularity never shows them: a known answer for k = 6.
    """
    rows = []
    t = 0
    for u in range(20):
        base = 0 if u < 10 else 10
        for j in range(4):
            rows.append((f"u{u}", f"i{base + (u + j) % 8}", float(t)))
            t += 1
    for u in range(20):
        base = 0 if u < 10 else 10
        for new in (8, 9):
            rows.append((f"u{u}", f"i{base + new}", 100.0 + t))
            t += 1
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if not with_time:
        inter = inter.drop(columns="timestamp")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)],
                          "title": [f"{'alpha' if i < 10 else 'beta'} {i}" for i in range(20)]})
    rng = np.random.default_rng(0)
    vec = np.zeros((20, 8), dtype=np.float32)
    vec[:10, 0] = 1.0
    vec[10:, 1] = 1.0
    vec += rng.normal(scale=0.01, size=vec.shape).astype(np.float32)
    return Dataset.from_frames(inter, items).with_item_vectors(vec)


def test_time_protocol_ranks_and_measures_new_items():
    data = two_taste_timeline()
    res = run_experiment(
        data, "time", ("semantic",), (), k=6,
        fit_config=FitConfig(models={}), split_kwargs={"cut": 100}, progress=False,
    )
    assert list(res["split"]) == ["time-100"] and list(res["protocol"]) == ["time"]
    text = res.iloc[0]
    assert text["new_item_test_share"] == 1.0  # every held-out pair is a new item
    # the text model ranks over the full catalog and puts both new items among its six
    assert text["recall_new"] == pytest.approx(1.0)
    assert text["new_item_share"] == pytest.approx(2 / 6)
    # popularity alone (no text model to lean on) never shows an item nobody has used
    pop = run_experiment(
        data, "time", ("popularity",), (), k=6,
        fit_config=FitConfig(models={}), split_kwargs={"cut": 100}, progress=False,
    ).iloc[0]
    assert pop["new_item_share"] == 0.0 and pop["recall_new"] == 0.0
    # and it gives everyone nearly the same list
    assert pop["max_list_share"] > text["max_list_share"]


def test_split_kwargs_are_passed_and_checked():
    data = two_taste_timeline()
    with pytest.raises(ConfigError, match="'time' does not take 'test_ratio'"):
        run_experiment(data, "time", ("popularity",), (), fit_config=FitConfig(models={}),
                       split_kwargs={"test_ratio": 0.2}, progress=False)
    split = make_split(data, "time", cut=100)
    with pytest.raises(ConfigError, match=r"split_kwargs \['cut'\].*'time-100'"):
        run_experiment(data, "time", ("popularity",), (), fit_config=FitConfig(models={}),
                       split=split, split_kwargs={"cut": 100}, progress=False)


def test_random_protocol_for_data_without_time():
    data = two_taste_timeline(with_time=False)
    with pytest.raises(ConfigError, match="'random'"):
        run_experiment(data, "time", ("popularity",), (), fit_config=FitConfig(models={}),
                       progress=False)
    res = run_experiment(data, "random", ("popularity",), (), k=3,
                         fit_config=FitConfig(models={}),
                         split_kwargs={"test_ratio": 0.34, "seed": 1}, progress=False)
    assert list(res["split"]) == ["random-0.34"]
    assert "new_item_share" not in res.columns  # not a time split: no new items
