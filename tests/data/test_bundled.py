"""The bundled real catalogs: their sizes, time flags, text, and the package-data globs."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import numpy as np
import pytest

from serendip.data import (
    BUNDLED,
    DATASETS,
    bundled_path,
    load_bundled,
    load_dataset,
    make_split,
)
from serendip.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def goodbooks():
    return load_bundled("goodbooks")


@pytest.fixture(scope="module")
def lastfm():
    return load_bundled("lastfm")


def test_goodbooks_is_time_ordered_books(goodbooks):
    d = goodbooks
    # the figures stated in ATTRIBUTION.md
    assert (d.n_users, d.n_items, len(d.interactions)) == (15_973, 1_737, 167_303)
    assert d.has_time and d.time_quality.ordered
    assert d.time_quality.tie_share == 0.0  # a position in a sorted log: no ties
    assert {"title", "authors", "year", "tags"} <= set(d.items.columns)
    assert d.category_column == "tags"
    assert "rating" not in d.interactions.columns
    assert d.item_popularity.min() >= 5 and d.user_activity.min() >= 5


def test_lastfm_has_no_time_and_keeps_play_counts(lastfm):
    d = lastfm
    assert (d.n_users, d.n_items, len(d.interactions)) == (1_859, 2_823, 71_355)
    assert not d.has_time and not d.time_quality.ordered
    assert d.interactions["rating"].min() >= 1  # play counts
    assert d.interactions["rating"].max() > 1_000
    assert d.category_column == "tags" and len(d.category_names) > 100
    with pytest.raises(ConfigError, match="'random'"):
        make_split(d, "time")
    s = make_split(d, "random")
    assert s.name == "random-0.2" and len(s.test) > 0


def test_goodbooks_time_cut_has_new_items(goodbooks):
    s = make_split(goodbooks, "time", cut=0.8)
    assert s.new_items is not None and s.new_items.size > 0
    trained = np.unique(s.train.interactions["item"])
    assert not np.isin(s.new_items, trained).any()
    assert np.isin(s.new_items, s.test["item"]).all()


def test_ids_are_strings_kept_as_written(goodbooks):
    assert goodbooks.item_ids[0] == "4"
    assert goodbooks.item_title(0) == "To Kill a Mockingbird"


def test_load_dataset_names():
    assert DATASETS == ("movielens", "goodbooks", "lastfm")
    assert BUNDLED == ("goodbooks", "lastfm")
    with pytest.raises(ConfigError, match="unknown data set 'books'; valid: movielens, goodbooks, lastfm"):
        load_dataset("books")
    with pytest.raises(ConfigError, match="'movielens'.*valid: goodbooks, lastfm"):
        bundled_path("movielens")


def test_load_dataset_dispatches(goodbooks):
    d = load_dataset("goodbooks")
    assert (d.n_users, d.n_items) == (goodbooks.n_users, goodbooks.n_items)


def test_package_data_ships_every_bundled_file():
    """The globs in pyproject.toml match the data files and the attribution."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["serendip"]
    pkg = ROOT / "src" / "serendip"
    for name in BUNDLED:
        d = bundled_path(name)
        for f in ("events.csv.gz", "items.csv.gz"):
            rel = (d / f).relative_to(pkg).as_posix()
            assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
    attribution = bundled_path("goodbooks").parent / "ATTRIBUTION.md"
    assert any(fnmatch.fnmatch(attribution.relative_to(pkg).as_posix(), g) for g in globs)
    text = attribution.read_text()
    for fact in ("CC BY-SA 4.0", "goodbooks-10k", "HetRec 2011", "play count", "at least 5"):
        assert fact in text
