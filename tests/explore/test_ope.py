"""Off-policy estimators: hand-computed answers, identities, unbiasedness, bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serendip.errors import ConfigError, DataError
from serendip.explore import (
    BanditLog,
    Estimate,
    dm,
    dr,
    estimate_all,
    estimate_from_target,
    fit_reward_model,
    importance_weights,
    ips,
    on_policy_value,
    snips,
)
from serendip.explore.ope import (
    bootstrap,
    cross_fit_reward_model,
    fit_logistic,
    fit_logistic_reward_model,
    fold_ids,
    switch_dr,
)

Z95 = 1.959963984540054

# A 4-round, 2-action, 1-slot log worked by hand.
#   round  logged a  reward  pscore  target pi(0), pi(1)   w = pi(a) / pscore
#     0        0        1     0.5        0.8, 0.2             1.6
#     1        1        0     0.25       0.5, 0.5             2.0
#     2        0        0     0.5        0.5, 0.5             1.0
#     3        1        1     0.75       1.0, 0.0             0.0
TINY = BanditLog(action=[0, 1, 0, 1], reward=[1, 0, 0, 1], pscore=[0.5, 0.25, 0.5, 0.75],
                 n_actions=2)
TARGET = np.array([[0.8, 0.2], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])[:, :, None]
Q_HAT = np.array([[0.6, 0.2], [0.5, 0.5], [0.1, 0.3], [0.0, 1.0]])[:, :, None]


def one_hot(actions: np.ndarray, n_actions: int, n_positions: int = 1) -> np.ndarray:
    """The deterministic policy that picks ``actions`` in every slot."""
    out = np.zeros((actions.size, n_actions, n_positions))
    out[np.arange(actions.size), actions, :] = 1.0
    return out


# hand-computed answers ---------------------------------------------------------------------
def test_importance_weights_by_hand():
    np.testing.assert_allclose(importance_weights(TINY, TARGET), [1.6, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(importance_weights(TINY, TARGET, 1.5), [1.5, 1.5, 1.0, 0.0])


def test_ips_by_hand():
    est = ips(TINY, TARGET)
    # terms 1.6, 0, 0, 0: mean 0.4, sd (ddof 1) 0.8, stderr 0.8 / 2
    assert est.value == pytest.approx(0.4)
    assert est.stderr == pytest.approx(0.4)
    # the normal interval 0.4 -+ 1.96 x 0.4 is cut to [0, 1], the range a click rate can take
    assert (est.ci_low, est.ci_high) == pytest.approx((0.0, 1.0))
    assert est.n == 4 and est.n_clusters == 4


def test_clipped_ips_by_hand():
    assert ips(TINY, TARGET, max_weight=1.5).value == pytest.approx(1.5 / 4)
    assert ips(TINY, TARGET, max_weight=100.0).value == pytest.approx(0.4)


def test_snips_by_hand():
    est = snips(TINY, TARGET)
    value = 1.6 / 4.6
    assert est.value == pytest.approx(value)
    w, r = np.array([1.6, 2.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0, 1.0])
    influence = w * (r - value) / w.mean()
    assert est.stderr == pytest.approx(influence.std(ddof=1) / 2)


def test_dm_by_hand():
    # per round: .8*.6 + .2*.2 = .52;  .5*.5 + .5*.5 = .5;  .5*.1 + .5*.3 = .2;  1*0 = 0
    assert dm(TINY, TARGET, Q_HAT).value == pytest.approx((0.52 + 0.5 + 0.2 + 0.0) / 4)


def test_dr_by_hand():
    # DM term + w * (r - q_hat[logged]): .52 + 1.6*.4; .5 + 2*(-.5); .2 + 1*(-.1); 0 + 0
    assert dr(TINY, TARGET, Q_HAT).value == pytest.approx((1.16 - 0.5 + 0.1 + 0.0) / 4)
    # clipped at 1.5: .52 + 1.5*.4; .5 + 1.5*(-.5); .2 - .1; 0
    assert dr(TINY, TARGET, Q_HAT, max_weight=1.5).value == pytest.approx(
        (1.12 - 0.25 + 0.1) / 4
    )


def test_estimate_all_matches_the_single_estimators():
    got = estimate_all(TINY, TARGET, Q_HAT, max_weight=1.5)
    assert set(got) == {"ips", "snips", "ips_clipped", "dm", "dr", "dr_clipped"}
    assert got["ips"] == ips(TINY, TARGET)
    assert got["snips"] == snips(TINY, TARGET)
    assert got["ips_clipped"] == ips(TINY, TARGET, max_weight=1.5)
    assert got["dm"] == dm(TINY, TARGET, Q_HAT)
    assert got["dr"] == dr(TINY, TARGET, Q_HAT)
    assert got["dr_clipped"] == dr(TINY, TARGET, Q_HAT, max_weight=1.5)
    assert set(estimate_all(TINY, TARGET)) == {"ips", "snips"}


def test_sufficient_statistics_give_the_same_estimates_by_hand():
    # target_prob = pi(a_i): 0.8, 0.5, 0.5, 0.0; q_target = sum_a pi q: 0.52, 0.5, 0.2, 0.0;
    # q_logged = q(a_i): 0.6, 0.5, 0.1, 1.0
    got = estimate_from_target(TINY, [0.8, 0.5, 0.5, 0.0], [0.52, 0.5, 0.2, 0.0],
                               [0.6, 0.5, 0.1, 1.0], max_weight=1.5)
    assert got == estimate_all(TINY, TARGET, Q_HAT, max_weight=1.5)
    # IPS by hand: w r = 1.6, 0, 0, 0 -> 0.4; DR terms: 0.52 + 1.6 * 0.4, 0.5 - 2 * 0.5,
    # 0.2 - 0.1, 0 -> mean (1.16 - 0.5 + 0.1 + 0) / 4 = 0.19
    assert got["ips"].value == pytest.approx(0.4)
    assert got["dr"].value == pytest.approx(0.19)
    with pytest.raises(DataError, match="target_prob\\[1\\] = 1.5"):
        estimate_from_target(TINY, [0.8, 1.5, 0.5, 0.0])
    with pytest.raises(DataError, match="go together"):
        estimate_from_target(TINY, [0.8, 0.5, 0.5, 0.0], q_target=[0.0] * 4)
    with pytest.raises(DataError, match="shape \\(4,\\)"):
        estimate_from_target(TINY, [0.8, 0.5])


def test_on_policy_value_is_the_mean_reward():
    est = on_policy_value(TINY)
    assert est.value == 0.5
    assert est.stderr == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)
    assert isinstance(est, Estimate) and "n=4" in str(est)


def test_single_round_has_the_whole_range_as_interval():
    log = BanditLog(action=[0], reward=[1.0], pscore=[0.5], n_actions=2)
    est = ips(log, np.array([[[0.5], [0.5]]]))
    assert est.value == 1.0
    assert est.stderr == np.inf and (est.ci_low, est.ci_high) == (0.0, 1.0)


# identities ---------------------------------------------------------------------------------
def logging_policy_log(seed: int = 0, n: int = 500, n_actions: int = 4, n_positions: int = 2):
    """A log from a known stochastic policy, and that policy as an action_dist."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, n_actions, n_positions))
    pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    position = rng.integers(n_positions, size=n)
    p = pi[np.arange(n), :, position]
    action = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    reward = rng.random(n)
    log = BanditLog(action=action, reward=reward, pscore=p[np.arange(n), action],
                    n_actions=n_actions, position=position, n_positions=n_positions)
    return log, pi


def test_ips_of_the_logging_policy_is_the_on_policy_mean():
    log, pi = logging_policy_log()
    assert np.all(importance_weights(log, pi) == 1.0)
    assert ips(log, pi).value == on_policy_value(log).value
    assert snips(log, pi).value == pytest.approx(on_policy_value(log).value)


def test_snips_of_the_logged_actions_under_uniform_logging_is_the_mean_reward():
    rng = np.random.default_rng(1)
    n, k = 200, 5
    action = rng.integers(k, size=n)
    log = BanditLog(action=action, reward=rng.random(n), pscore=np.full(n, 1 / k), n_actions=k)
    assert snips(log, one_hot(action, k)).value == pytest.approx(log.reward.mean())


def test_dr_equals_dm_when_the_model_is_exact():
    log, pi = logging_policy_log(seed=2)
    rng = np.random.default_rng(3)
    truth = rng.random((len(log), log.n_actions, log.n_positions))
    exact = BanditLog(action=log.action, reward=truth[np.arange(len(log)), log.action,
                      log.position], pscore=log.pscore, n_actions=log.n_actions,
                      position=log.position, n_positions=log.n_positions)
    target = np.roll(pi, 1, axis=1)
    assert dr(exact, target, truth).value == pytest.approx(dm(exact, target, truth).value)
    assert dr(exact, target, truth).stderr == pytest.approx(dm(exact, target, truth).stderr)


def test_dr_equals_ips_when_the_model_is_zero():
    log, pi = logging_policy_log(seed=4)
    target = np.roll(pi, 1, axis=1)
    zero = np.zeros_like(pi)
    assert dr(log, target, zero) == pytest.approx(ips(log, target))
    assert dr(log, target, zero, max_weight=2.0) == pytest.approx(ips(log, target, 2.0))
    assert dm(log, target, zero).value == 0.0


# unbiasedness -------------------------------------------------------------------------------
def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic_bandit(seed: int, n: int = 20_000, n_actions: int = 5, n_positions: int = 2):
    """A softmax logging policy, a sharper target, Bernoulli clicks from a known model.

    Logging mixes in a uniform half, so no weight exceeds 2 * n_actions (heavy-tailed weights
    make a 3-standard-error check a lottery rather than a test).

    Returns the log, the target's action_dist, the true click probabilities and the target's
    true value given these contexts and slots (the quantity IPS and DR are unbiased for).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    theta = rng.normal(size=(3, n_actions))
    slot_effect = np.array([0.0, -0.7])[:n_positions]
    mu = 1 / (1 + np.exp(-(x @ theta)[:, :, None] - slot_effect[None, None, :] + 1.0))
    logging = 0.5 / n_actions + 0.5 * softmax(x @ rng.normal(size=(3, n_actions)))
    target = softmax(2.0 * (x @ theta))  # prefers the items with high click odds
    position = rng.integers(n_positions, size=n)
    action = (logging.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    rows = np.arange(n)
    reward = (rng.random(n) < mu[rows, action, position]).astype(float)
    log = BanditLog(action=action, reward=reward, pscore=logging[rows, action], n_actions=n_actions,
                    position=position, n_positions=n_positions, context=x)
    dist = np.repeat(target[:, :, None], n_positions, axis=2)
    truth = float((target * mu[rows, :, position]).sum(axis=1).mean())
    return log, dist, mu, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ips_and_dr_are_unbiased_on_a_synthetic_bandit(seed):
    log, dist, mu, truth = synthetic_bandit(seed)
    assert abs(on_policy_value(log).value - truth) > 0.02  # the target really differs
    found = {
        "ips": ips(log, dist),
        "snips": snips(log, dist),
        "dr (exact model)": dr(log, dist, mu),
        "dr (fitted model)": dr(log, dist, fit_reward_model(log).predict(log)),
        "dr (constant model)": dr(log, dist, np.full_like(mu, 0.3)),
    }
    for name, est in found.items():
        assert abs(est.value - truth) < 3 * est.stderr, (name, est, truth)
    # a right model removes most of the variance
    assert found["dr (exact model)"].stderr < 0.8 * found["ips"].stderr


def test_clipping_trades_variance_for_downward_bias():
    log, dist, _, truth = synthetic_bandit(0)
    plain, clipped = ips(log, dist), ips(log, dist, max_weight=2.0)
    assert clipped.stderr < plain.stderr
    assert clipped.value < truth


# properties ---------------------------------------------------------------------------------
@st.composite
def logs_and_targets(draw: st.DrawFn) -> tuple[BanditLog, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 12))
    a = draw(st.integers(1, 4))
    k = draw(st.integers(1, 2))
    unit = st.floats(0.0, 1.0)
    action = draw(hnp.arrays(np.int64, n, elements=st.integers(0, a - 1)))
    position = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    reward = draw(hnp.arrays(np.float64, n, elements=unit))
    pscore = draw(hnp.arrays(np.float64, n, elements=st.floats(1e-4, 1.0)))
    raw = draw(hnp.arrays(np.float64, (n, a, k), elements=unit)) + 1e-3
    q_hat = draw(hnp.arrays(np.float64, (n, a, k), elements=unit))
    log = BanditLog(action=action, reward=reward, pscore=pscore, n_actions=a,
                    position=position, n_positions=k)
    return log, raw / raw.sum(axis=1, keepdims=True), q_hat


def finite(est: Estimate) -> bool:
    values = [est.value, est.stderr, est.ci_low, est.ci_high]
    return not any(np.isnan(values)) and np.isfinite(est.value)


@given(logs_and_targets(), st.floats(0.5, 50.0))
def test_estimates_are_bounded_and_nan_free(case, max_weight):
    log, dist, q_hat = case
    clipped = ips(log, dist, max_weight=max_weight)
    assert finite(clipped) and -1e-12 <= clipped.value <= max_weight + 1e-12
    s = snips(log, dist)
    assert finite(s) and -1e-12 <= s.value <= 1 + 1e-12
    d = dm(log, dist, q_hat)
    assert finite(d) and -1e-12 <= d.value <= 1 + 1e-12
    r = dr(log, dist, q_hat, max_weight=max_weight)
    assert finite(r) and -max_weight - 1e-9 <= r.value <= 1 + max_weight + 1e-9
    assert finite(ips(log, dist))


@given(logs_and_targets())
def test_reward_model_predictions_are_probabilities(case):
    log, _, _ = case
    q = fit_reward_model(log, l2=0.5).predict(log)
    assert q.shape == (len(log), log.n_actions, log.n_positions)
    assert np.all((q >= 0) & (q <= 1))


# reward model -------------------------------------------------------------------------------
def test_reward_model_recovers_an_additive_truth():
    rng = np.random.default_rng(5)
    n, a, k = 4000, 3, 2
    x = rng.normal(size=(n, 2))
    action, position = rng.integers(a, size=n), rng.integers(k, size=n)
    item_effect, slot_effect = np.array([0.0, 0.1, -0.1]), np.array([0.0, -0.2])
    truth = 0.4 + 0.05 * x[:, 0] + item_effect[action] + slot_effect[position]
    log = BanditLog(action=action, reward=truth, pscore=np.full(n, 1 / a), n_actions=a,
                    position=position, n_positions=k, context=x)
    model = fit_reward_model(log, l2=1e-3)
    q = model.predict(log)
    np.testing.assert_allclose(q[np.arange(n), action, position], np.clip(truth, 0, 1),
                               atol=1e-4)
    np.testing.assert_allclose(model.context_coef, [0.05, 0.0], atol=1e-4)
    assert q[0, 1, 0] - q[0, 0, 0] == pytest.approx(0.1, abs=1e-4)


def test_reward_model_refuses_a_log_of_another_shape():
    log, _, _, _ = synthetic_bandit(0, n=200)
    model = fit_reward_model(log)
    other = BanditLog(action=[0], reward=[1.0], pscore=[1.0], n_actions=2)
    with pytest.raises(DataError, match=r"the reward model was fitted on \(3, 5, 2\)"):
        model.predict(other)


@pytest.mark.parametrize("l2", [0.0, -1.0, 1e9])
def test_reward_model_l2_is_bounded(l2):
    with pytest.raises(ConfigError, match=f"reward_model.l2: .*got {l2!r}"):
        fit_reward_model(TINY, l2=l2)


# input validation ---------------------------------------------------------------------------
def test_action_dist_shape_is_checked():
    with pytest.raises(DataError, match=r"action_dist must have shape \(4, 2, 1\).*got \(4, 2\)"):
        ips(TINY, TARGET[:, :, 0])


def test_action_dist_must_sum_to_one():
    bad = TARGET.copy()
    bad[2, 1, 0] = 0.6
    with pytest.raises(DataError, match=r"action_dist\[2, :, 0\] sums to 1.1 over actions"):
        snips(TINY, bad)
    nearly = TARGET.copy()
    nearly[2, 1, 0] += 5e-7
    assert np.isfinite(ips(TINY, nearly).value)


def test_action_dist_must_be_nonnegative_and_finite():
    bad = TARGET.copy()
    bad[1] = [[1.5], [-0.5]]
    with pytest.raises(DataError, match=r"action_dist\[1, 1, 0\] = -0.5 is negative"):
        ips(TINY, bad)
    bad[1] = [[np.nan], [0.5]]
    with pytest.raises(DataError, match=r"action_dist\[1, 0, 0\] = nan is not finite"):
        ips(TINY, bad)


def test_q_hat_is_checked():
    with pytest.raises(DataError, match=r"q_hat must have shape \(4, 2, 1\)"):
        dm(TINY, TARGET, Q_HAT[:3])
    bad = Q_HAT.copy()
    bad[3, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"q_hat\[3, 0, 0\] = inf is not finite"):
        dr(TINY, TARGET, bad)


@pytest.mark.parametrize("max_weight", [0.0, -2.0, float("nan"), float("inf")])
def test_max_weight_must_be_positive(max_weight):
    message = f"max_weight must be a positive number or None, got {max_weight!r}"
    with pytest.raises(ConfigError, match=message):
        ips(TINY, TARGET, max_weight=max_weight)


def test_snips_refuses_zero_total_weight():
    with pytest.raises(DataError, match="snips is undefined"):
        snips(TINY, one_hot(1 - TINY.action, 2))


def test_empty_log_is_refused():
    empty = BanditLog(action=np.zeros(0, dtype=int), reward=[], pscore=[], n_actions=2)
    with pytest.raises(DataError, match="the log has no rounds"):
        on_policy_value(empty)
    with pytest.raises(DataError, match="the log has no rounds"):
        ips(empty, np.zeros((0, 2, 1)))


# clusters, bounded intervals, bootstrap --------------------------------------------------------
def test_clustered_stderr_by_hand():
    """Terms 1.6, 0, 0, 0 (IPS of TINY), deviations 1.2, -0.4, -0.4, -0.4, in clusters {0} and
    {1, 2, 3}: cluster sums 1.2 and -1.2, so stderr = sqrt(2 / 1 x (1.2^2 + 1.2^2)) / 4 = 0.6."""
    log = BanditLog(action=TINY.action, reward=TINY.reward, pscore=TINY.pscore, n_actions=2,
                    cluster=[7, 3, 3, 3])
    est = ips(log, TARGET)
    assert est.value == pytest.approx(0.4) and est.n_clusters == 2
    assert est.stderr == pytest.approx(0.6)
    # every round its own cluster: the plain sd / sqrt(n)
    assert ips(TINY, TARGET).stderr == pytest.approx(0.4)


def test_clustered_intervals_widen_with_correlated_users():
    """Users whose slots share one click propensity: the per-slot stderr understates the
    spread, the clustered one does not (checked against the spread over repeated logs)."""
    rng = np.random.default_rng(0)
    values, per_slot, clustered = [], [], []
    for _ in range(200):
        user_rate = rng.beta(0.5, 4.5, size=100)  # strongly different users
        cluster = np.repeat(np.arange(100), 20)
        reward = (rng.random(2000) < user_rate[cluster]).astype(float)
        log = BanditLog(action=np.zeros(2000, dtype=int), reward=reward, pscore=np.ones(2000),
                        n_actions=1, cluster=cluster)
        plain = BanditLog(action=log.action, reward=reward, pscore=log.pscore, n_actions=1)
        target = np.ones((2000, 1, 1))
        values.append(ips(log, target).value)
        clustered.append(ips(log, target).stderr)
        per_slot.append(ips(plain, target).stderr)
    true_sd = np.std(values)
    assert np.mean(clustered) == pytest.approx(true_sd, rel=0.2)
    assert np.mean(per_slot) < 0.5 * true_sd


def test_snips_interval_stays_in_range_and_has_width_without_clicks():
    log = BanditLog(action=[0, 1, 0, 1], reward=[0, 0, 0, 1], pscore=[0.5] * 4, n_actions=2)
    est = snips(log, one_hot(np.zeros(4, dtype=int), 2))  # the target's rounds: no click
    assert est.value == 0.0
    assert est.ci_low == 0.0 and 0.3 < est.ci_high < 1.0  # Wilson over 2 effective rounds
    assert 0.0 <= on_policy_value(log).ci_low <= on_policy_value(log).ci_high <= 1.0


def test_bootstrap_resamples_whole_clusters():
    # two clusters: one all clicks, one none; a replicate draws each cluster 0, 1 or 2 times
    log = BanditLog(action=np.zeros(6, dtype=int), reward=[1, 1, 1, 0, 0, 0], pscore=[1.0] * 6,
                    n_actions=1, cluster=[0, 0, 0, 1, 1, 1])
    seen = []
    est = bootstrap(log, lambda lg: seen.append(lg.reward.mean()) or float(lg.reward.mean()),
                    n_boot=200, seed=1)
    assert est.value == 0.5 and est.n_clusters == 2
    assert set(np.round(seen[1:], 9)) <= {0.0, 0.5, 1.0}  # never a mix of partial clusters
    assert (est.ci_low, est.ci_high) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap(log, lambda lg: 0.0, n_boot=1)


# switch and clipped variants: bias on a planted example -------------------------------------
def planted(seed: int, n: int = 4000):  # type: ignore[no-untyped-def]
    """Logger: action 0 w.p. 0.95, action 1 w.p. 0.05; true click rates 0.2 and 0.6; the target
    always shows action 1 (weights 20), so its value is 0.6. The model says 0.3 for both."""
    rng = np.random.default_rng(seed)
    action = (rng.random(n) < 0.05).astype(int)
    reward = (rng.random(n) < np.where(action == 1, 0.6, 0.2)).astype(float)
    log = BanditLog(action=action, reward=reward, pscore=np.where(action == 1, 0.05, 0.95),
                    n_actions=2)
    return log, one_hot(np.ones(n, dtype=int), 2), np.full((n, 2, 1), 0.3)


def test_switch_and_clipping_trade_variance_for_the_documented_bias():
    runs = [planted(seed) for seed in range(60)]
    dr_v = [dr(lg, t, q).value for lg, t, q in runs]
    sw_v = [switch_dr(lg, t, q, tau=10.0).value for lg, t, q in runs]
    clip_v = [ips(lg, t, max_weight=10.0).value for lg, t, q in runs]
    # DR is unbiased (true value 0.6)
    assert np.mean(dr_v) == pytest.approx(0.6, abs=4 * np.std(dr_v) / np.sqrt(60))
    # switch at tau 10: every weight (20) exceeds it, so it is DM: the model's 0.3, no spread
    np.testing.assert_allclose(sw_v, 0.3)
    # clipping at 10 halves every weight: 0.3 in expectation, biased low by half
    assert np.mean(clip_v) == pytest.approx(0.3, abs=4 * np.std(clip_v) / np.sqrt(60))
    # a tau above every weight gives DR back exactly
    lg, t, q = runs[0]
    assert switch_dr(lg, t, q, tau=25.0).value == pytest.approx(dr(lg, t, q).value)
    both = estimate_all(lg, t, q, max_weight=10.0, tau=10.0)
    assert both["dr_switch"].value == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="tau"):
        switch_dr(lg, t, q, tau=0.0)


# the logistic reward model, cross-fitted --------------------------------------------------------
def test_fit_logistic_matches_the_closed_form_of_a_saturated_model():
    """One-hot groups, no penalty to speak of: each group's fitted rate is its mean."""
    x = np.repeat(np.eye(3), [50, 100, 150], axis=0)[:, 1:]  # group 0 is the baseline
    y = np.concatenate([np.r_[np.ones(10), np.zeros(40)], np.r_[np.ones(50), np.zeros(50)],
                        np.r_[np.ones(120), np.zeros(30)]])
    coef, b = fit_logistic(x, y, l2=1e-9)
    p = 1 / (1 + np.exp(-(x @ coef + b)))
    np.testing.assert_allclose([p[0], p[50], p[200]], [0.2, 0.5, 0.8], atol=1e-5)


def additive_log(seed: int = 0, n: int = 3000):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    ctx = rng.normal(size=(n, 2))
    action = rng.integers(4, size=n)
    position = rng.integers(2, size=n)
    z = -1.0 + ctx @ np.array([1.0, -0.5]) + np.array([0.0, 0.5, 1.0, -1.0])[action] \
        - 0.7 * position
    reward = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return BanditLog(action=action, reward=reward, pscore=np.full(n, 0.125), n_actions=4,
                     position=position, n_positions=2, context=ctx,
                     cluster=np.arange(n) // 3), z


def test_logistic_reward_model_recovers_a_logistic_truth():
    log, z = additive_log()
    model = fit_logistic_reward_model(log, l2=1e-3)
    q = model.predict(log)
    assert q.shape == (len(log), 4, 2) and ((q > 0) & (q < 1)).all()
    fitted = q[np.arange(len(log)), log.action, log.position]
    truth = 1 / (1 + np.exp(-z))
    assert np.abs(fitted - truth).mean() < 0.03
    # the ridge baseline predicts outside the probability range before clipping; this never does
    assert np.corrcoef(fitted, truth)[0, 1] > 0.98


def test_cross_fitting_never_predicts_a_round_with_a_model_that_saw_it():
    """A reward that is pure noise per cluster: an in-sample model with one coefficient per
    cluster-like feature memorises it; the cross-fitted one cannot."""
    n = 240
    rng = np.random.default_rng(3)
    cluster = np.arange(n) // 2
    ctx = np.eye(n // 2)[cluster]  # one indicator per cluster
    reward = np.repeat(rng.random(n // 2) < 0.5, 2).astype(float)
    log = BanditLog(action=np.zeros(n, dtype=int), reward=reward, pscore=np.ones(n),
                    n_actions=1, context=ctx, cluster=cluster)
    inside = fit_logistic_reward_model(log, l2=0.01).predict(log)[:, 0, 0]
    crossed = cross_fit_reward_model(log, folds=3, l2=0.01)[:, 0, 0]
    err_in = np.abs(inside - reward).mean()
    err_cross = np.abs(crossed - reward).mean()
    assert err_in < 0.1 and err_cross > 0.45  # out of fold, the noise is unpredictable
    f = fold_ids(cluster, 3, seed=0)
    assert all(np.unique(f[cluster == c]).size == 1 for c in range(0, 120, 7))
    with pytest.raises(ConfigError, match="folds"):
        fold_ids(cluster, 1)


def test_dr_with_a_cross_fitted_logistic_model_is_unbiased_and_covers():
    """Planted: a uniform logger over 4 actions, a deterministic target; 95% DR intervals
    cover the true value in at least 90% of repetitions."""
    covered, errors = 0, []
    reps = 40
    for seed in range(reps):
        log, _ = additive_log(seed, n=1500)
        target = one_hot(np.full(len(log), 2), 4, 2)
        q = cross_fit_reward_model(log, folds=3, l2=1.0, seed=seed)
        est = dr(log, target, q)
        ctx = log.context
        truth = np.mean(1 / (1 + np.exp(-(-1.0 + ctx @ np.array([1.0, -0.5]) + 1.0
                                          - 0.7 * log.position))))
        covered += est.ci_low <= truth <= est.ci_high
        errors.append(est.value - truth)
    assert covered / reps >= 0.9
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(reps)


def test_cluster_ids_are_validated_and_kept_by_take():
    log = BanditLog(action=[0, 1, 0], reward=[1, 0, 0], pscore=[0.5] * 3, n_actions=2,
                    cluster=[4, 4, 9])
    assert log.n_clusters == 2 and log.take(np.array([2, 0])).cluster.tolist() == [9, 4]
    assert BanditLog(action=[0, 1], reward=[0, 1], pscore=[1.0, 1.0],
                     n_actions=2).cluster.tolist() == [0, 1]  # default: each round its own
    with pytest.raises(DataError, match=r"BanditLog.cluster\[1\] = 1.5 is not an integer"):
        BanditLog(action=[0, 1], reward=[0, 1], pscore=[1.0, 1.0], n_actions=2,
                  cluster=[1.0, 1.5])
    with pytest.raises(DataError, match=r"BanditLog.cluster must have shape \(2,\)"):
        BanditLog(action=[0, 1], reward=[0, 1], pscore=[1.0, 1.0], n_actions=2, cluster=[1])
