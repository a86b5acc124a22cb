"""Off-policy evaluation: a target policy's expected reward, estimated from a logged policy.

The target is given as ``action_dist`` (rounds x actions x positions): its probability of
each action in each slot of each round. Every round is evaluated at its logged slot, so a
value is the expected reward per logged impression slot, comparable with the log's mean
reward (``on_policy_value``). Each estimator is a mean of one term per round; its standard
error and normal-approximation 95% interval come from the spread of those terms.
"""

from __future__ import annotations

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
    "estimate_all",
    "estimate_from_target",
    "on_policy_value",
    "RewardModel",
    "RewardModelConfig",
    "fit_reward_model",
]

_Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
_SUM_TOL = 1e-6  # how far a distribution's sum over actions may stray from 1


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and 95% normal interval over ``n`` rounds.

    A single round has no spread to measure: its stderr is ``inf`` and the interval unbounded.
    """

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def from_terms(cls, terms: np.ndarray, value: float | None = None) -> Estimate:
        """``value`` (default: the terms' mean) with stderr = sd(terms) / sqrt(n)."""
        n = int(terms.size)
        v = float(terms.mean()) if value is None else float(value)
        se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
        return cls(v, se, v - _Z95 * se, v + _Z95 * se, n)

    def __str__(self) -> str:
        return (
            f"{self.value:.6g} ± {self.stderr:.2g} "
            f"(95% CI {self.ci_low:.6g} to {self.ci_high:.6g}, n={self.n})"
        )


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
    return Estimate.from_terms(importance_weights(log, action_dist, max_weight) * log.reward)


def _snips(w: np.ndarray, r: np.ndarray) -> Estimate:
    total = float(w.sum())
    if total <= 0.0:
        raise DataError(
            "snips is undefined: the target gives probability 0 to every logged action "
            "(the importance weights sum to 0)"
        )
    value = float(w @ r) / total
    # delta method: the ratio's influence terms are w_i (r_i - V) / mean(w)
    return Estimate.from_terms(w * (r - value) / w.mean(), value)


def snips(log: BanditLog, action_dist: object) -> Estimate:
    """Self-normalised IPS (Swaminathan & Joachims 2015): sum w_i r_i / sum w_i.

    Slightly biased, much less variable than IPS, and always within the range of the
    rewards. Its stderr is the delta-method one: sd of w_i (r_i - V) / mean(w), over sqrt(n).
    """
    return _snips(importance_weights(log, action_dist), log.reward)


def dm(log: BanditLog, action_dist: object, q_hat: object) -> Estimate:
    """Direct method: mean over rounds of sum_a pi_e(a | x_i, k_i) q_hat(x_i, a, k_i).

    As good as the reward model ``q_hat`` (rounds x actions x positions); its stderr treats
    the model as fixed, so it omits the model's own error.
    """
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    return Estimate.from_terms(_dm_terms(log, dist, _check_cube(log, q_hat, "q_hat"), rows))


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
    return Estimate.from_terms(_dm_terms(log, dist, q, rows) + w * residual)


def on_policy_value(log: BanditLog) -> Estimate:
    """The logging policy's own value: the mean logged reward (e.g. the click rate)."""
    _rows(log)
    return Estimate.from_terms(log.reward)


def estimate_all(
    log: BanditLog,
    action_dist: object,
    q_hat: object | None = None,
    max_weight: float | None = None,
) -> dict[str, Estimate]:
    """IPS and SNIPS; DM and DR when ``q_hat`` is given; clipped IPS/DR with ``max_weight``."""
    _check_max_weight(max_weight)
    rows = _rows(log)
    dist = _check_dist(log, action_dist)
    target_prob = dist[rows, log.action, log.position]
    if q_hat is None:
        return estimate_from_target(log, target_prob, max_weight=max_weight)
    q = _check_cube(log, q_hat, "q_hat")
    return estimate_from_target(log, target_prob, _dm_terms(log, dist, q, rows),
                                q[rows, log.action, log.position], max_weight)


def estimate_from_target(
    log: BanditLog,
    target_prob: object,
    q_target: object | None = None,
    q_logged: object | None = None,
    max_weight: float | None = None,
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
    out = {"ips": Estimate.from_terms(w * r), "snips": _snips(w, r)}
    wc = None if max_weight is None else np.minimum(w, max_weight)
    if wc is not None:
        out["ips_clipped"] = Estimate.from_terms(wc * r)
    if (q_target is None) != (q_logged is None):
        raise DataError("q_target and q_logged go together (DM and DR need both)")
    if q_target is not None:
        base = _check_rounds(log, q_target, "q_target")
        residual = r - _check_rounds(log, q_logged, "q_logged")
        out["dm"] = Estimate.from_terms(base[rows])
        out["dr"] = Estimate.from_terms(base + w * residual)
        if wc is not None:
            out["dr_clipped"] = Estimate.from_terms(base + wc * residual)
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


def fit_reward_model(log: BanditLog, l2: float = 1.0) -> RewardModel:
    """Ridge regression (Hoerl & Kennard 1970) of reward on [context, item one-hot, slot one-hot].

    Closed form on centred features, so the intercept is not shrunk:
    coef = (Xc' Xc + l2 I)^-1 Xc' (r - mean r).
    """
    try:
        config = RewardModelConfig(l2=l2)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ConfigError(f"reward_model.l2: {msg} (got {l2!r})") from None
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
