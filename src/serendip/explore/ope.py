"""Off-policy evaluation: a target policy's expected reward, estimated from a logged policy.

The target is given as ``action_dist`` (rounds x actions x positions): its probability of
each action in each slot of each round. Every round is evaluated at its logged slot, so a
value is the expected reward per logged impression slot, comparable with the log's mean
reward (``on_policy_value``). Each estimator is a mean of one term per round; its standard
error comes from the spread of those terms, summed first within each of the log's clusters
(``BanditLog.cluster``, e.g. a user's slots and lists, which are not independent), and its 95%
interval is the normal one intersected with the range the value can take ([0, 1] for clicks).
``bootstrap`` resamples whole clusters instead, for any statistic of a log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serendip.errors import ConfigError, DataError
from serendip.explore.log import BanditLog

__all__ = [
    "Estimate",
    "importance_weights",
    "ips",
    "snips",
    "dm",
    "dr",
    "switch_dr",
    "bootstrap",
    "cluster_resamples",
    "percentile_estimate",
    "estimate_all",
    "estimate_from_target",
    "on_policy_value",
    "RewardModel",
    "RewardModelConfig",
    "fit_reward_model",
    "LogisticRewardModel",
    "fit_logistic_reward_model",
    "cross_fit_reward_model",
    "fit_logistic",
    "fold_ids",
]

_Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
_SUM_TOL = 1e-6  # how far a distribution's sum over actions may stray from 1


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and 95% interval over ``n`` rounds.

    ``n_clusters`` is how many independent units (users) the rounds came from; the stderr is
    the cluster-robust one (rounds of one cluster are not assumed independent). A single
    cluster has no spread to measure: its stderr is ``inf`` and the interval the whole range.
    """

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    n_clusters: int | None = None

    @classmethod
    def from_terms(
        cls,
        terms: np.ndarray,
        value: float | None = None,
        clusters: np.ndarray | None = None,
        bounds: tuple[float, float] = (-np.inf, np.inf),
    ) -> Estimate:
        """``value`` (default: the terms' mean) with the cluster-robust stderr of the mean.

        stderr^2 = G / (G - 1) * sum_g (sum_{i in g} (t_i - mean t))^2 / n^2 over the G
        clusters; with every round its own cluster it is sd(terms)^2 / n. The normal interval
        value +- 1.96 stderr is cut to ``bounds``: the true value cannot lie outside them, so
        cutting never loses coverage.
        """
        terms = np.asarray(terms, dtype=np.float64)
        n = int(terms.size)
        v = float(terms.mean()) if value is None else float(value)
        if clusters is None:
            g = n
            se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
        else:
            _, inv = np.unique(np.asarray(clusters), return_inverse=True)
            g = int(inv.max()) + 1 if n else 0
            if g > 1:
                sums = np.bincount(inv, weights=terms - terms.mean(), minlength=g)
                se = float(np.sqrt(g / (g - 1) * float(sums @ sums)) / n)
            else:
                se = float("inf")
        lo, hi = bounds
        ci_low = float(np.clip(v - _Z95 * se, lo, hi)) if np.isfinite(se) else lo
        ci_high = float(np.clip(v + _Z95 * se, lo, hi)) if np.isfinite(se) else hi
        return cls(v, se, ci_low, ci_high, n, g)

    def __str__(self) -> str:
        return (
            f"{self.value:.6g} ± {self.stderr:.2g} "
            f"(95% CI {self.ci_low:.6g} to {self.ci_high:.6g}, n={self.n})"
        )


def _wilson(est: Estimate, n_eff: float) -> Estimate:
    """``est`` with a Wilson score interval (Wilson 1927) for a mean of rewards in [0, 1] over
    ``n_eff`` effective rounds: inside [0, 1] by construction and not empty when no reward
    was seen (a normal interval collapses to a point there)."""
    v = float(np.clip(est.value, 0.0, 1.0))
    if not (np.isfinite(n_eff) and n_eff > 0):
        return Estimate(est.value, est.stderr, 0.0, 1.0, est.n, est.n_clusters)
    z2 = _Z95**2
    centre = (v + z2 / (2 * n_eff)) / (1 + z2 / n_eff)
    half = _Z95 / (1 + z2 / n_eff) * np.sqrt(v * (1 - v) / n_eff + z2 / (4 * n_eff**2))
    return Estimate(est.value, est.stderr, float(max(0.0, centre - half)),
                    float(min(1.0, centre + half)), est.n, est.n_clusters)


def _effective_n(log: BanditLog, w: np.ndarray, est: Estimate) -> float:
    """Effective rounds behind a weighted mean of rewards in [0, 1]: the smaller of
    V (1 - V) / stderr^2 (the count a plain proportion with the same cluster-robust variance
    would have) and Kish's (sum w)^2 / sum w^2 (what the weights leave of the sample). The
    second matters when the heavily weighted rounds hold no reward: the variance then looks
    small only because no reward was seen where the target puts its mass."""
    ww = float(w @ w)
    kish = float(w.sum() ** 2 / ww) if ww > 0 else 0.0
    v = est.value
    if est.stderr > 0 and np.isfinite(est.stderr) and 0 < v < 1:
        return min(kish, float(v * (1 - v) / est.stderr**2))
    return kish


def _binary_range(log: BanditLog) -> bool:
    r = log.reward
    return bool(((r >= 0) & (r <= 1)).all())


def _bounds(log: BanditLog) -> tuple[float, float]:
    """The range a policy value can take: [0, 1] for clicks, widened to the logged rewards."""
    return min(0.0, float(log.reward.min())), max(1.0, float(log.reward.max()))


def _est(log: BanditLog, terms: np.ndarray, value: float | None = None) -> Estimate:
    return Estimate.from_terms(terms, value, log.cluster, _bounds(log))


# validation ----------------------------------------------------------------------------
def _rows(log: BanditLog) -> np.ndarray:
    if len(log) == 0:
        raise DataError("the log has no rounds; an estimate needs at least one")
    return np.arange(len(log))


def _check_cube(log: BanditLog, values: object, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    shape = (len(log), log.n_actions, log.n_positions)
    if a.shape != shape:
        raise DataError(
            f"{name} must have shape {shape} (rounds x actions x positions), got {a.shape}"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        i, j, k = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(f"{name}[{i}, {j}, {k}] = {a[i, j, k]} is not finite")
    return a


def _check_dist(log: BanditLog, action_dist: object) -> np.ndarray:
    """The target's probabilities: nonnegative, summing to 1 over actions in every slot."""
    a = _check_cube(log, action_dist, "action_dist")
    if (a < 0).any():
        i, j, k = (int(x) for x in np.argwhere(a < 0)[0])
        raise DataError(f"action_dist[{i}, {j}, {k}] = {a[i, j, k]} is negative")
    sums = a.sum(axis=1)
    off = np.abs(sums - 1.0) > _SUM_TOL
    if off.any():
        i, k = (int(x) for x in np.argwhere(off)[0])
        raise DataError(
            f"action_dist[{i}, :, {k}] sums to {sums[i, k]:.9g} over actions; every round's "
            f"distribution in every position must sum to 1 (tolerance {_SUM_TOL:g})"
        )
    return a


def _check_max_weight(max_weight: float | None) -> None:
    if max_weight is not None and not (np.isfinite(max_weight) and max_weight > 0):
        raise ConfigError(f"max_weight must be a positive number or None, got {max_weight!r}")


def _weights(
    log: BanditLog, dist: np.ndarray, rows: np.ndarray, max_weight: float | None
) -> np.ndarray:
    w = dist[rows, log.action, log.position] / log.pscore
    return w if max_weight is None else np.minimum(w, max_weight)


def _dm_terms(log: BanditLog, dist: np.ndarray, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per round: the target's expected modelled reward in the logged slot."""
    return np.einsum("ia,ia->i", dist[rows, :, log.position], q[rows, :, log.position])


# estimators ------------------------------------------------------------------------------
def importance_weights(
    log: BanditLog, action_dist: object, max_weight: float | None = None
) -> np.ndarray:
    """w_i = pi_e(a_i | x_i, k_i) / pscore_i, optionally clipped at ``max_weight``."""
    _check_max_weight(max_weight)
    return _weights(log, _check_dist(log, action_dist), _rows(log), max_weight)


def ips(log: BanditLog, action_dist: object, max_weight: float | None = None) -> Estimate:
    """Inverse propensity scoring (Horvitz & Thompson 1952): mean of w_i r_i.

    Unbiased when the logging policy gives every action the target may take a positive
    probability. ``max_weight`` clips the weights (truncated importance sampling, Ionides 2008),
    trading a downward bias for less variance.
    """
    return _est(log, importance_weights(log, action_dist, max_weight) * log.reward)


def _snips(log: BanditLog, w: np.ndarray, r: np.ndarray) -> Estimate:
    total = float(w.sum())
    if total <= 0.0:
        raise DataError(
            "snips is undefined: the target gives probability 0 to every logged action "
            "(the importance weights sum to 0)"
        )
    value = float(w @ r) / total
    # delta method: the ratio's influence terms are w_i (r_i - V) / mean(w)
    est = _est(log, w * (r - value) / w.mean(), value)
    return _wilson(est, _effective_n(log, w, est)) if _binary_range(log) else est


def snips(log: BanditLog, action_dist: object) -> Estimate:
    """Self-normalised IPS (Swaminathan & Joachims 2015): sum w_i r_i / sum w_i.

    Slightly biased, much less variable than IPS, and always within the range of the
    rewards. Its stderr is the delta-method one: sd of w_i (r_i - V) / mean(w), over sqrt(n)
    (cluster-robust). With rewards in [0, 1] its interval is a Wilson score interval over the
    effective number of rounds (``_effective_n``), so it stays in [0, 1] and keeps a width
    when the target's rounds hold no reward.
    """
    return _snips(log, importance_weights(log, action_dist), log.reward)


def dm(log: BanditLog, action_dist: object, q_hat: object) -> Estimate:
    """Direct method: mean over rounds of sum_a pi_e(a | x_i, k_i) q_hat(x_i, a, k_i).

    As good as the reward model ``q_hat`` (rounds x actions x positions); its stderr treats
    the model as fixed, so it omits the model's own error.
    """
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    return _est(log, _dm_terms(log, dist, _check_cube(log, q_hat, "q_hat"), rows))


def dr(
    log: BanditLog, action_dist: object, q_hat: object, max_weight: float | None = None
) -> Estimate:
    """Doubly robust (Dudik, Langford & Li 2011): DM plus IPS of the model's residual.

    Term i: sum_a pi_e(a) q_hat(x_i, a, k_i) + w_i (r_i - q_hat(x_i, a_i, k_i)). Unbiased if
    either the propensities or the model are right; ``max_weight`` clips w_i as in ``ips``.
    """
    _check_max_weight(max_weight)
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    q = _check_cube(log, q_hat, "q_hat")
    w = _weights(log, dist, rows, max_weight)
    residual = log.reward - q[rows, log.action, log.position]
    return _est(log, _dm_terms(log, dist, q, rows) + w * residual)


def _check_tau(tau: float) -> None:
    if not (np.isfinite(tau) and tau > 0):
        raise ConfigError(f"tau must be a positive number, got {tau!r}")


def switch_dr(log: BanditLog, action_dist: object, q_hat: object, tau: float) -> Estimate:
    """Switch-DR (after Wang, Agarwal & Dudik 2017): DR where the weight is at most ``tau``,
    the model alone (DM) where it is larger.

    Term i: sum_a pi_e(a) q_hat(x_i, a, k_i) + w_i 1[w_i <= tau] (r_i - q_hat(x_i, a_i, k_i)).
    Large weights no longer inflate the variance; in exchange the estimate inherits the
    model's bias on the rounds the switch hands to it. tau = inf is DR.
    """
    _check_tau(tau)
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    q = _check_cube(log, q_hat, "q_hat")
    w = _weights(log, dist, rows, None)
    residual = log.reward - q[rows, log.action, log.position]
    return _est(log, _dm_terms(log, dist, q, rows) + np.where(w <= tau, w, 0.0) * residual)


def bootstrap(
    log: BanditLog,
    statistic: Callable[[BanditLog], float],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """``statistic(log)`` with a percentile interval from resampling whole clusters.

    Each replicate draws the log's clusters (users) with replacement and keeps every round of
    a drawn cluster, so the dependence inside a cluster is kept; a replicate's rounds keep
    their cluster ids (copies of one cluster stay together, e.g. in one cross-fitting fold).
    The statistic may refit whatever it needs (a reward model) on each replicate. stderr is
    the replicates' standard deviation; the interval is cut to the reward range as in
    ``Estimate.from_terms``.
    """
    if not (isinstance(n_boot, int) and n_boot >= 2):
        raise ConfigError(f"n_boot must be an integer of at least 2, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    _rows(log)
    value = float(statistic(log))
    reps = np.array([statistic(log.take(rows)) for rows in cluster_resamples(log, n_boot, seed)],
                    dtype=np.float64)
    return percentile_estimate(log, value, reps, level)


def cluster_resamples(log: BanditLog, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` bootstrap replicates of the log as row indices: the clusters are drawn with
    replacement and each drawn cluster brings all its rounds."""
    ids, inv = np.unique(log.cluster, return_inverse=True)
    members = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        drawn = rng.integers(0, ids.size, ids.size)
        out.append(np.concatenate([members[c] for c in drawn]))
    return out


def percentile_estimate(log: BanditLog, value: float, reps: np.ndarray,
                        level: float = 0.95) -> Estimate:
    """``value`` with the percentile interval of bootstrap replicates ``reps`` (cut to the
    reward range) and their standard deviation as stderr."""
    lo, hi = _bounds(log)
    q_lo, q_hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(value), float(reps.std(ddof=1)), float(np.clip(q_lo, lo, hi)),
                    float(np.clip(q_hi, lo, hi)), len(log), log.n_clusters)


def on_policy_value(log: BanditLog) -> Estimate:
    """The logging policy's own value: the mean logged reward (e.g. the click rate), with a
    Wilson interval over the effective rounds when rewards lie in [0, 1]."""
    _rows(log)
    est = _est(log, log.reward)
    if not _binary_range(log):
        return est
    return _wilson(est, _effective_n(log, np.ones(len(log)), est))


def estimate_all(
    log: BanditLog,
    action_dist: object,
    q_hat: object | None = None,
    max_weight: float | None = None,
    tau: float | None = None,
) -> dict[str, Estimate]:
    """IPS and SNIPS; DM and DR when ``q_hat`` is given; clipped IPS/DR with ``max_weight``;
    switch-DR (``dr_switch``) with ``q_hat`` and ``tau``."""
    _check_max_weight(max_weight)
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    target_prob = dist[rows, log.action, log.position]
    if q_hat is None:
        return estimate_from_target(log, target_prob, max_weight=max_weight, tau=tau)
    q = _check_cube(log, q_hat, "q_hat")
    return estimate_from_target(log, target_prob, _dm_terms(log, dist, q, rows),
                                q[rows, log.action, log.position], max_weight, tau)


def estimate_from_target(
    log: BanditLog,
    target_prob: object,
    q_target: object | None = None,
    q_logged: object | None = None,
    max_weight: float | None = None,
    tau: float | None = None,
) -> dict[str, Estimate]:
    """``estimate_all`` from per-round sufficient statistics, for catalogs too large for a
    rounds x actions x positions cube.

    ``target_prob[i]`` is the target's probability of the logged action in the logged slot,
    ``q_target[i]`` the target's expected modelled reward in that slot
    (sum_a pi_e(a | x_i, k_i) q_hat(x_i, a, k_i)) and ``q_logged[i]`` the model's reward for
    the logged action; DM and DR need both.
    """
    _check_max_weight(max_weight)
    rows = _rows(log)
    p = _check_rounds(log, target_prob, "target_prob")
    if (p < 0).any() or (p > 1).any():
        i = int(np.flatnonzero((p < 0) | (p > 1))[0])
        raise DataError(f"target_prob[{i}] = {p[i]} is not a probability")
    r = log.reward
    w = p / log.pscore
    out = {"ips": _est(log, w * r), "snips": _snips(log, w, r)}
    wc = None if max_weight is None else np.minimum(w, max_weight)
    if wc is not None:
        out["ips_clipped"] = _est(log, wc * r)
    if (q_target is None) != (q_logged is None):
        raise DataError("q_target and q_logged go together (DM and DR need both)")
    if q_target is not None:
        base = _check_rounds(log, q_target, "q_target")
        residual = r - _check_rounds(log, q_logged, "q_logged")
        out["dm"] = _est(log, base[rows])
        out["dr"] = _est(log, base + w * residual)
        if wc is not None:
            out["dr_clipped"] = _est(log, base + wc * residual)
        if tau is not None:
            out["dr_switch"] = _est(log, base + np.where(w <= tau, w, 0.0) * residual)
    return out


def _check_rounds(log: BanditLog, values: object, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (len(log),):
        raise DataError(f"{name} must have one value per round, shape ({len(log)},), got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name}[{i}] = {a[i]} is not finite")
    return a


# reward model ----------------------------------------------------------------------------
class RewardModelConfig(BaseModel):
    """Settings of ``fit_reward_model``: unknown keys are refused, values bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    l2: float = Field(
        1.0, gt=0, le=1e6, description="ridge penalty on every coefficient but the intercept"
    )


@dataclass(frozen=True, eq=False)
class RewardModel:
    """q_hat(x, a, k) = x . context_coef + action_coef[a] + position_coef[k] + intercept.

    Additive in context, item and slot: small enough to fit in closed form on a few thousand
    rounds, and a baseline for DM and DR rather than a recommender.
    """

    context_coef: np.ndarray
    action_coef: np.ndarray
    position_coef: np.ndarray
    intercept: float
    config: RewardModelConfig

    def predict(self, log: BanditLog) -> np.ndarray:
        """q_hat for every round, action and position (rounds x actions x positions), in [0, 1]."""
        expected = (self.context_coef.size, self.action_coef.size, self.position_coef.size)
        got = (log.context.shape[1], log.n_actions, log.n_positions)
        if got != expected:
            raise DataError(
                f"the log has (context features, actions, positions) = {got}; the reward model "
                f"was fitted on {expected}"
            )
        base = log.context @ self.context_coef + self.intercept
        q = base[:, None, None] + self.action_coef[None, :, None]
        return np.clip(q + self.position_coef[None, None, :], 0.0, 1.0)


def _reward_config(l2: float) -> RewardModelConfig:
    """The reward model's settings, or a ConfigError naming the bad penalty."""
    try:
        return RewardModelConfig(l2=l2)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ConfigError(f"reward_model.l2: {msg} (got {l2!r})") from None


def fit_reward_model(log: BanditLog, l2: float = 1.0) -> RewardModel:
    """Ridge regression (Hoerl & Kennard 1970) of reward on [context, item one-hot, slot one-hot].

    Closed form on centred features, so the intercept is not shrunk:
    coef = (Xc' Xc + l2 I)^-1 Xc' (r - mean r).
    """
    config = _reward_config(l2)
    rows = _rows(log)
    n, d = log.context.shape
    x = np.zeros((n, d + log.n_actions + log.n_positions))
    x[:, :d] = log.context
    x[rows, d + log.action] = 1.0
    x[rows, d + log.n_actions + log.position] = 1.0
    x_mean = x.mean(axis=0)
    xc = x - x_mean
    r_mean = float(log.reward.mean())
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += config.l2
    coef = np.linalg.solve(gram, xc.T @ (log.reward - r_mean))
    return RewardModel(
        context_coef=coef[:d],
        action_coef=coef[d : d + log.n_actions],
        position_coef=coef[d + log.n_actions :],
        intercept=r_mean - float(x_mean @ coef),
        config=config,
    )


# a logistic reward model, cross-fitted -----------------------------------------------------
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0,
                 max_iter: int = 100) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression: (coef, intercept) minimising
    sum_i [log(1 + exp(z_i)) - y_i z_i] + l2 / 2 |coef|^2, z = x coef + intercept.

    The intercept is not penalised. Rewards may be fractional in [0, 1] (the loss is then the
    cross-entropy). Newton's method with step halving: the problem is strictly convex, and a
    few hundred features make each d x d solve cheap, so it converges in a few dozen steps.
    """
    from scipy.special import expit

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"fit_logistic needs n x d features and n targets, got {x.shape}, {y.shape}")
    if ((y < 0) | (y > 1)).any():
        raise DataError("a logistic reward model needs rewards in [0, 1]")
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    pen = np.full(d + 1, float(l2))
    pen[d] = 0.0

    def objective(theta: np.ndarray) -> float:
        z = xa @ theta
        return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * (pen * theta) @ theta)

    mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta = np.zeros(d + 1)
    theta[d] = np.log(mean / (1 - mean))
    f = objective(theta)
    for _ in range(max_iter):
        p = expit(xa @ theta)
        grad = xa.T @ (p - y) + pen * theta
        hess = (xa * (p * (1 - p))[:, None]).T @ xa
        hess[np.diag_indices_from(hess)] += pen + 1e-10
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            new = theta - t * step
            f_new = objective(new)
            if f_new <= f or t < 1e-8:
                break
            t /= 2
        theta, f_old, f = new, f, f_new
        if abs(f_old - f) <= 1e-10 * max(1.0, abs(f)) or float(np.abs(grad).max()) < 1e-9:
            break
    return theta[:d], float(theta[d])


@dataclass(frozen=True, eq=False)
class LogisticRewardModel:
    """q_hat(x, a, k) = sigmoid(x . context_coef + action_coef[a] + position_coef[k]
    + action_context[a] . item_coef + intercept): a probability by construction.

    Context and item features are standardised with the training rounds' mean and scale, so
    one penalty fits them all.
    """

    context_coef: np.ndarray
    action_coef: np.ndarray
    position_coef: np.ndarray
    item_coef: np.ndarray
    intercept: float
    context_mean: np.ndarray
    context_scale: np.ndarray
    item_mean: np.ndarray
    item_scale: np.ndarray
    config: RewardModelConfig

    def logits(self, log: BanditLog) -> np.ndarray:
        expected = (self.context_coef.size, self.action_coef.size, self.position_coef.size,
                    self.item_coef.size)
        got = (log.context.shape[1], log.n_actions, log.n_positions, log.action_context.shape[1])
        if got != expected:
            raise DataError(
                f"the log has (context features, actions, positions, item features) = {got}; "
                f"the reward model was fitted on {expected}"
            )
        base = ((log.context - self.context_mean) / self.context_scale) @ self.context_coef
        item = ((log.action_context - self.item_mean) / self.item_scale) @ self.item_coef
        z = (base + self.intercept)[:, None, None] + (self.action_coef + item)[None, :, None]
        return z + self.position_coef[None, None, :]

    def predict(self, log: BanditLog) -> np.ndarray:
        """q_hat for every round, action and position (rounds x actions x positions), in (0, 1)."""
        from scipy.special import expit

        return np.asarray(expit(self.logits(log)))


def _scale(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a.mean(axis=0) if a.shape[0] else np.zeros(a.shape[1])
    sd = a.std(axis=0) if a.shape[0] else np.ones(a.shape[1])
    return mean, np.where(sd > 1e-12, sd, 1.0)


def fit_logistic_reward_model(log: BanditLog, l2: float = 1.0,
                              per_action: bool = True) -> LogisticRewardModel:
    """Logistic regression of the reward on [context, item one-hot, slot one-hot, item
    features] (``fit_logistic``); rewards must lie in [0, 1].

    ``per_action`` False leaves out the item one-hot: items are then told apart only by
    their features (``action_context``), fewer parameters for a log with few rewards.
    """
    config = _reward_config(l2)
    rows = _rows(log)
    n, d = log.context.shape
    ac = log.action_context
    c_mean, c_scale = _scale(log.context)
    i_mean, i_scale = _scale(ac[log.action])
    na, nk, m = (log.n_actions if per_action else 0), log.n_positions, ac.shape[1]
    x = np.zeros((n, d + na + nk + m))
    x[:, :d] = (log.context - c_mean) / c_scale
    if per_action:
        x[rows, d + log.action] = 1.0
    x[rows, d + na + log.position] = 1.0
    x[:, d + na + nk :] = (ac[log.action] - i_mean) / i_scale
    coef, b = fit_logistic(x, log.reward, config.l2)
    return LogisticRewardModel(
        context_coef=coef[:d],
        action_coef=coef[d : d + na] if per_action else np.zeros(log.n_actions),
        position_coef=coef[d + na : d + na + nk], item_coef=coef[d + na + nk :], intercept=b,
        context_mean=c_mean, context_scale=c_scale, item_mean=i_mean, item_scale=i_scale,
        config=config,
    )


def fold_ids(clusters: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per round: whole clusters go to one fold, folds of about equal size."""
    if not (isinstance(folds, int) and folds >= 2):
        raise ConfigError(f"folds must be an integer of at least 2, got {folds!r}")
    ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
    if ids.size < folds:
        raise DataError(f"{folds} folds need at least {folds} clusters, the log has {ids.size}")
    perm = np.random.default_rng(seed).permutation(ids.size)
    fold_of = np.empty(ids.size, dtype=np.int64)
    fold_of[perm] = np.arange(ids.size) % folds
    return fold_of[inv]


def cross_fit_reward_model(log: BanditLog, folds: int = 3, l2: float = 1.0,
                           seed: int = 0, per_action: bool = True) -> np.ndarray:
    """q_hat (rounds x actions x positions) where round i's row comes from a logistic model
    fitted without i's fold (cross-fitting, as in double machine learning).

    A model that has seen round i's reward is optimistic exactly there, which biases DM and
    takes away DR's protection; cross-fitting removes that at the cost of ``folds`` fits.
    Folds are made of whole clusters (users), so a user's other rounds do not leak either.
    """
    fold = fold_ids(log.cluster, folds, seed)
    out = np.empty((len(log), log.n_actions, log.n_positions))
    for f in range(folds):
        test = np.flatnonzero(fold == f)
        model = fit_logistic_reward_model(log.take(np.flatnonzero(fold != f)), l2, per_action)
        out[test] = model.predict(log.take(test))
    return out
