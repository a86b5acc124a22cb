"""The Open Bandit Dataset loader on the files shipped in obp's wheel, and on a tiny copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serendip.data import find_open_bandit, load_open_bandit
from serendip.data import obd as obd_module
from serendip.errors import ConfigError, DataError
from serendip.explore import BanditLog, ips, on_policy_value, snips


@pytest.fixture(scope="module")
def random_all() -> BanditLog:
    return load_open_bandit("random", "all")


@pytest.fixture(scope="module")
def bts_all() -> BanditLog:
    return load_open_bandit("bts", "all")


@pytest.mark.parametrize("policy", ["random", "bts"])
def test_shipped_log_shape(policy, random_all, bts_all):
    log = random_all if policy == "random" else bts_all
    assert len(log) == 10_000
    assert (log.n_actions, log.n_positions) == (80, 3)
    assert set(np.unique(log.position)) == {0, 1, 2}
    assert np.all((log.pscore > 0) & (log.pscore <= 1))
    assert set(np.unique(log.reward)) == {0.0, 1.0}
    assert 0.001 < log.reward.mean() < 0.02
    # one-hot user features (4 blocks, one 1 each) then one affinity per item
    one_hot = log.context[:, : log.context.shape[1] - 80]
    assert np.all(one_hot.sum(axis=1) == 4)
    assert log.action_context.shape[0] == 80
    assert np.all(log.action_context[:, 1:].sum(axis=1) == 3)  # item features 1-3, one-hot
    assert np.all(np.diff(log.timestamp) >= 0)
    assert 1.57e9 < log.timestamp[0] < 1.58e9  # late November 2019


def test_random_policy_is_uniform(random_all):
    np.testing.assert_allclose(random_all.pscore, 1 / 80, rtol=1e-9)
    uniform = np.full((len(random_all), 80, 3), 1 / 80)
    assert ips(random_all, uniform).value == pytest.approx(on_policy_value(random_all).value)
    # a deterministic target equal to the logged items: SNIPS gives back the click rate
    logged = np.zeros((len(random_all), 80, 3))
    logged[np.arange(len(random_all)), random_all.action, :] = 1.0
    assert snips(random_all, logged).value == pytest.approx(random_all.reward.mean())


def test_on_policy_click_rates(random_all, bts_all):
    rand, bts = on_policy_value(random_all), on_policy_value(bts_all)
    assert (int(random_all.reward.sum()), int(bts_all.reward.sum())) == (38, 42)
    assert rand.value == pytest.approx(0.0038) and bts.value == pytest.approx(0.0042)
    assert rand.ci_low < rand.value < rand.ci_high and rand.n == 10_000


@pytest.mark.parametrize(("campaign", "n_actions"), [("men", 34), ("women", 46)])
def test_campaigns(campaign, n_actions):
    log = load_open_bandit("bts", campaign)
    assert (len(log), log.n_actions, log.context.shape[1] > n_actions) == (10_000, n_actions, True)


def test_explicit_directory_root_or_campaign_folder():
    root = find_open_bandit()
    a = load_open_bandit("random", "men", root)
    b = load_open_bandit("random", "men", str(root / "random" / "men"))
    assert np.array_equal(a.action, b.action) and np.array_equal(a.context, b.context)


def test_bad_policy_and_campaign():
    with pytest.raises(ConfigError, match="unknown OBD policy 'greedy'; valid: random, bts"):
        load_open_bandit("greedy")
    with pytest.raises(ConfigError, match="unknown OBD campaign 'kids'; valid: all, men, women"):
        load_open_bandit("random", "kids")


def test_directory_without_files(tmp_path):
    message = r"no Open Bandit Dataset files in .*pip install --no-deps obp==0.4.1"
    with pytest.raises(DataError, match=message):
        load_open_bandit("random", "all", tmp_path)


def test_missing_package(monkeypatch):
    monkeypatch.setattr(obd_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"not found.*pip install --no-deps obp==0.4.1.*directory"):
        load_open_bandit()


def write_tiny(d: Path) -> None:
    """Three rounds, two items, in the shipped layout (a campaign folder)."""
    d.mkdir(parents=True)
    (d / "all.csv").write_text(
        ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
        "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1\n"
        "0,2019-11-24 00:00:01+00:00,1,3,0,0.5,b,x,p,q,0.1,0.2\n"
        "1,2019-11-24 00:00:02.5+00:00,0,1,1,0.25,a,x,p,q,0.3,0.4\n"
        "2,2019-11-24 00:00:04+00:00,1,2,0,1.0,b,x,p,r,0.5,0.6\n"
    )
    (d / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
        "0,1,0.7,m,s,t\n"
        "1,0,-0.2,n,s,t\n"
    )


def test_tiny_copy_is_encoded_exactly(tmp_path):
    write_tiny(tmp_path / "random" / "all")
    log = load_open_bandit("random", "all", tmp_path)
    assert log.action.tolist() == [1, 0, 1] and log.position.tolist() == [2, 0, 1]
    assert log.reward.tolist() == [0.0, 1.0, 0.0] and log.pscore.tolist() == [0.5, 0.25, 1.0]
    # user features: f0 in (a, b), f1 (x), f2 (p), f3 (q, r); then the two affinities
    np.testing.assert_array_equal(
        log.context,
        [[0, 1, 1, 1, 1, 0, 0.1, 0.2], [1, 0, 1, 1, 1, 0, 0.3, 0.4], [0, 1, 1, 1, 0, 1, 0.5, 0.6]],
    )
    # items sorted by id: feature_0, then one-hot f1 (m, n), f2 (s), f3 (t)
    np.testing.assert_array_equal(log.action_context, [[-0.2, 0, 1, 1, 1], [0.7, 1, 0, 1, 1]])
    np.testing.assert_allclose(np.diff(log.timestamp), [1.5, 1.5])
    assert log.timestamp[0] == pytest.approx(1574553601.0)


def test_tiny_copy_with_a_bad_item_or_propensity(tmp_path):
    write_tiny(tmp_path / "bad_item")
    items = tmp_path / "bad_item" / "item_context.csv"
    items.write_text(items.read_text().replace("0,1,0.7", "0,5,0.7"))
    with pytest.raises(DataError, match=r"item_id must be 0..1, each once"):
        load_open_bandit("random", "all", tmp_path / "bad_item")
    write_tiny(tmp_path / "again")
    rounds = tmp_path / "again" / "all.csv"
    rounds.write_text(rounds.read_text().replace(",1.0,b,", ",0.0,b,"))
    with pytest.raises(DataError, match=r"BanditLog.pscore\[2\] = 0.0 is outside \(0, 1\]"):
        load_open_bandit("random", "all", tmp_path / "again")
