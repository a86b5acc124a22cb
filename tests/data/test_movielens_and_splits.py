from __future__ import annotations

import numpy as np
import pytest

from serendip.data import (
    cold_item_split,
    leave_last_out,
    load_movielens_100k,
    make_split,
    temporal_split,
)
from serendip.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def ml():
    return load_movielens_100k()


def test_movielens_counts(ml):
    assert (ml.n_users, ml.n_items, len(ml.interactions)) == (943, 1682, 100_000)
    assert ml.items.loc[0, "title"] == "Toy Story"
    assert ml.items.loc[0, "genres"] == "Animation|Children's|Comedy"
    assert len(ml.category_names) >= 18


def test_grouplens_layout(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n1\t20\t3\t50\n2\t10\t5\t70\n")
    flags = "|".join(["0"] * 19)
    comedy = ["0"] * 19
    comedy[5] = "1"
    (tmp_path / "u.item").write_text(
        f"10|Heat (1995)|01-Jan-1995||http://x|{flags}\n"
        f"20|Clerks (1994)|01-Jan-1994||http://y|{'|'.join(comedy)}\n"
    )
    d = load_movielens_100k(tmp_path)
    assert list(d.item_ids) == ["10", "20"]
    assert d.items["title"].tolist() == ["Heat", "Clerks"]
    assert d.items["year"].tolist() == ["1995", "1994"]
    assert d.items["genres"].tolist() == ["", "Comedy"]
    assert list(d.history(0)) == [1, 0]  # by timestamp


def test_missing_movielens_dir(tmp_path):
    with pytest.raises(DataError, match="no MovieLens-100K files"):
        load_movielens_100k(tmp_path)


def test_temporal_split_takes_latest_share(ml):
    s = temporal_split(ml, 0.2)
    assert len(s.train.interactions) + len(s.test) == 100_000
    inter = ml.interactions
    for u in (0, 5, 100):
        n = int((inter.user == u).sum())
        test_u = s.test[s.test.user == u]
        assert len(test_u) == int(np.floor(n * 0.2))
        # every test timestamp >= every train timestamp for that user
        tr = s.train.interactions[s.train.interactions.user == u]["timestamp"].max()
        te = inter.merge(test_u, on=["user", "item"])["timestamp"].min()
        assert te >= tr


def test_loo_one_per_user(ml):
    s = leave_last_out(ml)
    assert len(s.test) == 943
    assert s.test.user.is_unique


def test_cold_items_never_in_train(ml):
    s = cold_item_split(ml, 0.2, seed=1)
    assert s.cold_items is not None
    assert not s.train.interactions.item.isin(s.cold_items).any()
    assert set(s.test.item) <= set(s.cold_items)
    assert s.train.n_items == ml.n_items  # catalog kept: cold items keep their text


def test_bad_split_args(ml):
    with pytest.raises(ConfigError, match="1.5"):
        temporal_split(ml, 1.5)
    with pytest.raises(ConfigError, match="'shuffled'"):
        make_split(ml, "shuffled")


def test_movielens_time_cut(ml):
    # real clock times, but most ratings were entered in bursts within the same second:
    # 75,772 of the 100,000 events tie with another event of their user
    q = ml.time_quality
    assert q.has_time and q.tie_share == pytest.approx(0.75772) and q.ordered
    s = make_split(ml, "time", cut=0.8)
    assert len(s.train.interactions) <= 80_000
    cut = ml.interactions["timestamp"].sort_values().iloc[80_000]
    assert (s.train.interactions["timestamp"] < cut).all()
    assert s.new_items is not None and not np.isin(s.new_items, s.train.interactions.item).any()
