"""``serendip ope obd``: the Bernoulli TS target, obp-style replicates, the report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy import integrate, stats

from serendip.data import load_open_bandit
from serendip.errors import ConfigError
from serendip.explore.log import BanditLog
from serendip.explore.obd_check import (
    PUBLISHED,
    add_obd_arguments,
    bts_action_dist,
    bts_prior,
    cmd_ope_obd,
    obp_resamples,
    user_features_only,
)


def test_bts_action_dist_matches_the_exact_two_item_answer():
    """Two items: P(item 0 ranks first) = P(X0 > X1) for independent Beta draws."""
    alpha, beta = np.array([3.0, 2.0]), np.array([5.0, 6.0])
    exact, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, 3, 5) * stats.beta.cdf(x, 2, 6), 0, 1)
    dist = bts_action_dist(alpha, beta, n_positions=2, n_sim=200_000, seed=0)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    assert dist[0, 0] == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 200_000))
    assert dist[1, 1] == pytest.approx(dist[0, 0])


def test_the_production_prior_is_read_for_each_campaign():
    for campaign, n in (("all", 80), ("men", 34), ("women", 46)):
        a, b = bts_prior(campaign)
        assert a.shape == b.shape == (n,) and (a > 0).all() and (b > 0).all()


def test_replicates_follow_obps_draws_and_user_features_drop_the_affinities():
    log = BanditLog(action=np.zeros(5, dtype=int), reward=np.zeros(5), pscore=np.ones(5),
                    n_actions=1)
    reps = obp_resamples(log, 3)
    assert reps[1].tolist() == np.random.RandomState(1).choice(5, 5, replace=True).tolist()
    full = load_open_bandit("random", "men")
    cut = user_features_only(full)
    assert cut.context.shape[1] == full.context.shape[1] - full.n_actions
    assert np.array_equal(cut.context, full.context[:, : cut.context.shape[1]])


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_obd_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.slow  # three fits on each of 3 x 10,000 rounds: about half a minute
def test_the_check_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "obd.json"
    rc = cmd_ope_obd(parse("--campaigns", "men", "--n-boot", "2", "--n-sim", "2000",
                           "--json", str(out)))
    assert rc == 0
    text = capsys.readouterr().out
    assert "10,000 rounds per campaign and policy" in text
    assert "campaign men" in text and "obp published" in text
    assert "vs random:" in text and "vs Bernoulli TS:" in text  # the plain verdicts
    assert "logging policies" in text or "intervals separate" in text
    result = json.loads(out.read_text())
    men = result["campaigns"]["men"]
    truth = load_open_bandit("bts", "men").reward.mean()
    assert men["bts_on_policy"]["estimate"] == pytest.approx(truth)
    for k in ("ips", "snips", "dm", "dr", "dr_switch"):
        e = men["estimators"][k]
        assert 0 <= e["ci_low"] <= e["ci_high"] <= 1 and e["relative_error"] >= 0
        # one relative error per replicate, in replicate order, averaging to the reported one
        assert len(e["relative_errors"]) == 2
        assert np.mean(e["relative_errors"]) == pytest.approx(e["relative_error"])
    assert set(men["policies"]["targets"]) == {"most clicked", "logistic greedy",
                                               "logistic greedy, explore 0.3"}
    assert PUBLISHED["all"]["dr"] == 0.292  # the target the docs quote


@pytest.mark.parametrize(("argv", "match"), [
    (("--campaigns", "kids"), "unknown campaign 'kids'"),
    (("--n-boot", "1"), "--n-boot must be at least 2"),
    (("--l2", "0"), "--l2 must be in"),
    (("--tau", "-1"), "--tau must be a positive number"),
    (("--seed", "-1"), "--seed must be a non-negative integer, got -1"),
    (("--directory", "/nonexistent-obd"), "--directory '/nonexistent-obd' is not a folder"),
])
def test_bad_options_are_one_line_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        cmd_ope_obd(parse(*argv))
