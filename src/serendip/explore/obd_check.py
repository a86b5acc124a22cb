"""``serendip ope obd``: the standard Open Bandit check, from the command line.

Part 1 (Saito, Aihara, Matsutani & Narita 2021, arXiv:2008.07146): the Bernoulli Thompson
sampling ("bts") policy's click rate is estimated from the uniform-random log of the same
campaign and compared with its on-policy click rate (the mean click of its own log). The
target's slot distribution is that of Bernoulli TS under ZOZOTOWN's production prior (the
prior file shipped with obp, read as data), by Monte Carlo. Bootstrap replicates of the
random log, each with its own cross-fitted logistic reward model, give the mean relative error
|estimate - truth| / truth per estimator and percentile intervals, printed next to the
relative errors obp published for the same protocol.

Part 2: serendip's own policies (learned on the earliest half of the random log) evaluated on
the later half with SNIPS and DR, against the random and Bernoulli TS on-policy click rates,
saying whether the intervals separate them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from serendip.data.obd import OBD_CAMPAIGNS, find_open_bandit, load_open_bandit
from serendip.errors import ConfigError, DataError
from serendip.explore.log import BanditLog
from serendip.explore.ope import (
    Estimate,
    cluster_resamples,
    cross_fit_reward_model,
    estimate_all,
    fit_logistic_reward_model,
    on_policy_value,
    percentile_estimate,
)

__all__ = ["add_obd_arguments", "cmd_ope_obd", "bts_action_dist", "bts_prior",
           "relative_errors", "PUBLISHED"]

#: Relative estimation errors obp published for this check on the shipped sample: Bernoulli TS
#: evaluated from the random log, campaign ``all``, logistic-regression reward model, mean over
#: 30 bootstrap runs (obp 0.4 example experiment, st-tech/zr-obp ``examples/obd/README.md``;
#: the Open Bandit Dataset and Pipeline paper, Saito et al. 2020, tabulates the full data).
#: obp publishes no sample figures for ``men`` and ``women``.
PUBLISHED: dict[str, dict[str, float]] = {"all": {"ips": 0.311, "dr": 0.292}}
ESTIMATORS = ("ips", "snips", "dm", "dr", "dr_switch")
_SAMPLE_NOTE = ("the installed Open Bandit sample holds 10,000 rounds per campaign and policy "
                "(a few dozen clicks each), far less than the full data set")


def bts_prior(campaign: str) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) of ZOZOTOWN's production Beta prior for ``campaign``, read from the
    ``prior_bts.yaml`` file shipped in the obp package (as data; obp is not imported)."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Bernoulli TS prior ships with obp: pip install --no-deps obp==0.4.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "policy" / "conf" / "prior_bts.yaml"
    if not path.is_file():
        raise DataError(f"Bernoulli TS prior file missing: {str(path)!r}")
    values: dict[str, dict[str, list[float]]] = {}
    section = key = None
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line.startswith(" ") and text.endswith(":"):
            section = text[:-1]
            values[section] = {}
        elif text.endswith(":") and section is not None:
            key = text[:-1]
            values[section][key] = []
        elif text.startswith("-") and section is not None and key is not None:
            values[section][key].append(float(text[1:]))
    if campaign not in values or set(values[campaign]) < {"alpha", "beta"}:
        raise DataError(f"{str(path)!r} has no alpha and beta for campaign {campaign!r}")
    return np.array(values[campaign]["alpha"]), np.array(values[campaign]["beta"])


def bts_action_dist(alpha: np.ndarray, beta: np.ndarray, n_positions: int = 3,
                    n_sim: int = 100_000, seed: int = 12345) -> np.ndarray:
    """Bernoulli TS's (items x positions) distribution: the share of ``n_sim`` Beta draws
    that rank each item in each position. Context-free, so one matrix serves every round."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((alpha.size, n_positions))
    done = 0
    while done < n_sim:
        b = min(20_000, n_sim - done)
        draws = rng.beta(alpha, beta, size=(b, alpha.size))
        top = np.argsort(-draws, axis=1)[:, :n_positions]
        for k in range(n_positions):
            counts[:, k] += np.bincount(top[:, k], minlength=alpha.size)
        done += b
    return counts / n_sim


def user_features_only(log: BanditLog) -> BanditLog:
    """The log with its context cut to the one-hot user features (the per-item affinities
    dropped): the features obp's published reward model uses, with the item features."""
    width = log.context.shape[1] - log.n_actions
    return BanditLog(action=log.action, reward=log.reward, pscore=log.pscore,
                     n_actions=log.n_actions, position=log.position,
                     n_positions=log.n_positions, context=log.context[:, :width],
                     action_context=log.action_context, timestamp=log.timestamp,
                     cluster=log.cluster)


def _estimates(log: BanditLog, dist: np.ndarray, folds: int, l2: float, tau: float,
               seed: int) -> dict[str, float]:
    cube = np.broadcast_to(dist[None], (len(log), *dist.shape))
    q = cross_fit_reward_model(user_features_only(log), folds, l2, seed, per_action=False)
    return {k: v.value for k, v in estimate_all(log, cube, q, tau=tau).items()}


def relative_errors(log: BanditLog, dist: np.ndarray, truth: float, n_boot: int = 30,
                    folds: int = 3, l2: float = 1.0, tau: float = 100.0, seed: int = 12345
                    ) -> dict[str, dict[str, Any]]:
    """Per estimator: the full-log estimate, the bootstrap percentile interval, the mean
    relative error |estimate - truth| / truth over ``n_boot`` replicates (the model refitted,
    cross-fitted, on each) and each replicate's relative error (``relative_errors``, in
    ``obp_resamples`` order: what a paired comparison with another pipeline reads)."""
    full = _estimates(log, dist, folds, l2, tau, seed)
    reps: dict[str, list[float]] = {k: [] for k in full}
    for b, rows in enumerate(obp_resamples(log, n_boot)):
        for k, v in _estimates(log.take(rows), dist, folds, l2, tau, seed + b).items():
            reps[k].append(v)
    out = {}
    for k in ESTIMATORS:
        r = np.array(reps[k])
        e = percentile_estimate(log, full[k], r)
        rel = np.abs(r - truth) / truth
        out[k] = {"estimate": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                  "relative_error": float(np.mean(np.abs(r - truth)) / truth),
                  "relative_error_sd": float(np.std(rel, ddof=1)),
                  "relative_errors": [float(v) for v in rel]}
    return out


def obp_resamples(log: BanditLog, n_boot: int) -> list[np.ndarray]:
    """Bootstrap replicates drawn the way obp's published experiment draws them (replicate b:
    numpy's legacy ``RandomState(b).choice(n, n)`` over rounds), so that model-free estimators
    (IPS) reproduce obp's figures and the comparison isolates the reward model. The Open
    Bandit sample has no user ids, so rounds are the clusters; a log with clusters is
    resampled by cluster (``cluster_resamples``)."""
    n = len(log)
    if log.n_clusters != n:
        return cluster_resamples(log, n_boot, 0)
    return [np.random.RandomState(b).choice(n, n, replace=True) for b in range(n_boot)]


def _deterministic(order: np.ndarray, n_rounds: int, n_actions: int, n_positions: int
                   ) -> np.ndarray:
    """Per round, the item ``order[i, k]`` in slot k with probability 1."""
    cube = np.zeros((n_rounds, n_actions, n_positions))
    rows = np.arange(n_rounds)
    for k in range(n_positions):
        cube[rows, order[:, k], k] = 1.0
    return cube


def serendip_policies(train: BanditLog, test: BanditLog, l2: float) -> dict[str, np.ndarray]:
    """Targets learned on ``train``, as slot distributions over ``test``'s rounds:

    - ``most clicked``: the items with the most clicks per showing in train (add-one smoothed),
      best first in slots 1-3, the same for everyone (serendip's popularity model, on clicks);
    - ``logistic greedy``: per round, the three items the logistic reward model rates best
      for that user, best in slot 1 (a contextual greedy policy);
    - ``logistic greedy, explore 0.3``: the same, but each slot shows, with probability 0.3,
      a uniformly random other item (as ``EpsilonSlate`` explores).
    """
    n_a, n_k, n = test.n_actions, test.n_positions, len(test)
    shows = np.bincount(train.action, minlength=n_a)
    clicks = np.bincount(train.action, weights=train.reward, minlength=n_a)
    pop = np.argsort(-(clicks + 1) / (shows + 2), kind="stable")[:n_k]
    out = {"most clicked": _deterministic(np.tile(pop, (n, 1)), n, n_a, n_k)}
    q = fit_logistic_reward_model(train, l2).predict(test)
    order = np.argsort(-q[:, :, 0], axis=1, kind="stable")[:, :n_k]
    greedy = _deterministic(order, n, n_a, n_k)
    out["logistic greedy"] = greedy
    out["logistic greedy, explore 0.3"] = 0.7 * greedy + 0.3 * (1 - greedy) / (n_a - 1)
    return out


def _interval(e: Estimate | dict[str, float]) -> tuple[float, float]:
    if isinstance(e, Estimate):
        return e.ci_low, e.ci_high
    return e["ci_low"], e["ci_high"]


def _separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[1] < b[0] or b[1] < a[0]


def add_obd_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serendip ope obd``."""
    parser.add_argument("--campaigns", default=",".join(OBD_CAMPAIGNS),
                        help=f"comma list of campaigns ({', '.join(OBD_CAMPAIGNS)})")
    parser.add_argument("--n-boot", type=int, default=30,
                        help="bootstrap replicates (obp's published figures use 30)")
    parser.add_argument("--folds", type=int, default=3,
                        help="cross-fitting folds of the reward model")
    parser.add_argument("--l2", type=float, default=1.0,
                        help="ridge penalty of the logistic reward model")
    parser.add_argument("--tau", type=float, default=100.0,
                        help="switch-DR threshold: the model alone where the weight exceeds it")
    parser.add_argument("--n-sim", type=int, default=100_000,
                        help="Monte Carlo draws for Bernoulli TS's slot distribution")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the bootstrap and the Monte Carlo draws")
    parser.add_argument("--directory", metavar="DIR",
                        help="Open Bandit Dataset folder (default: the sample in the obp package)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to this file")


#: bootstrap replicates behind obp's published relative errors (its example experiment)
OBP_REPLICATES = 30


def _check(args: argparse.Namespace) -> list[str]:
    campaigns = [c.strip() for c in args.campaigns.split(",") if c.strip()]
    bad = [c for c in campaigns if c not in OBD_CAMPAIGNS]
    if bad or not campaigns:
        raise ConfigError(f"--campaigns: unknown campaign {bad[0] if bad else args.campaigns!r}; "
                          f"valid: {', '.join(OBD_CAMPAIGNS)}")
    if args.n_boot < 2:
        raise ConfigError(f"--n-boot must be at least 2, got {args.n_boot}")
    if args.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {args.folds}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
    if not (np.isfinite(args.l2) and 0 < args.l2 <= 1e6):
        raise ConfigError(f"--l2 must be in (0, 1e6], got {args.l2}")
    if not (np.isfinite(args.tau) and args.tau > 0):
        raise ConfigError(f"--tau must be a positive number, got {args.tau}")
    if args.n_sim < 1:
        raise ConfigError(f"--n-sim must be positive, got {args.n_sim}")
    return campaigns


def _fmt(e: Estimate | dict[str, float], value: float | None = None) -> str:
    v = e.value if isinstance(e, Estimate) else (e["estimate"] if value is None else value)
    lo, hi = _interval(e)
    return f"{v:.5f} [{lo:.5f}, {hi:.5f}]"


def cmd_ope_obd(args: argparse.Namespace) -> int:
    """Print (and with --json write) the Open Bandit check; 0 on success."""
    campaigns = _check(args)
    if args.directory and not Path(args.directory).is_dir():
        raise ConfigError(f"--directory {args.directory!r} is not a folder")
    directory = Path(args.directory) if args.directory else find_open_bandit()
    result: dict[str, object] = {"note": _SAMPLE_NOTE, "n_boot": args.n_boot,
                                 "folds": args.folds, "l2": args.l2, "tau": args.tau,
                                 "campaigns": {}}
    print(f"Open Bandit check. Note: {_SAMPLE_NOTE}; every figure below is correspondingly "
          "noisy.")
    print(f"1. Bernoulli TS estimated from the uniform-random log ({args.n_boot} bootstrap "
          f"replicates, logistic reward model cross-fitted over {args.folds} folds)")
    if args.n_boot < OBP_REPLICATES:
        print(f"  with fewer than {OBP_REPLICATES} replicates the intervals and mean relative "
              f"errors are too rough to set beside obp's published ones (from "
              f"{OBP_REPLICATES}); use --n-boot {OBP_REPLICATES} for that")
    per_campaign: dict[str, object] = {}
    for campaign in campaigns:
        rand = load_open_bandit("random", campaign, directory)
        bts = load_open_bandit("bts", campaign, directory)
        truth = on_policy_value(bts)
        alpha, beta = bts_prior(campaign)
        if alpha.size != rand.n_actions:
            raise DataError(f"the Bernoulli TS prior has {alpha.size} items, campaign "
                            f"{campaign!r} {rand.n_actions}")
        dist = bts_action_dist(alpha, beta, rand.n_positions, args.n_sim, args.seed)
        errs = relative_errors(rand, dist, truth.value, args.n_boot, args.folds, args.l2,
                               args.tau, args.seed)
        print(f"\n  campaign {campaign}: {len(rand):,} random rounds "
              f"({int(rand.reward.sum())} clicks); Bernoulli TS on-policy click rate "
              f"{_fmt(truth)}")
        print(f"  {'estimator':<10} {'estimate [95% bootstrap]':<28} {'rel. error':>10} "
              f"{'± sd':>7} {'obp published':>14}")
        for k, e in errs.items():
            pub = PUBLISHED.get(campaign, {}).get(k)
            print(f"  {k:<10} {_fmt(e):<28} {e['relative_error']:>10.3f} "
                  f"{e['relative_error_sd']:>7.3f} {'-' if pub is None else f'{pub:.3f}':>14}")
        part2 = _policies(rand, bts, args.l2)
        per_campaign[campaign] = {"bts_on_policy": _asdict(truth), "estimators": errs,
                                  "published": PUBLISHED.get(campaign, {}), "policies": part2}
    if "all" not in campaigns or "all" in PUBLISHED:
        print("\n  obp published the sample's relative errors for campaign 'all' only "
              "(obp 0.4 example experiment, 30 bootstrap runs, logistic regression).")
    print("\n2. serendip's policies on the random log: learned on the earliest half, "
          "estimated on the later half (SNIPS and DR, 95% intervals)")
    for campaign in campaigns:
        block = per_campaign[campaign]
        assert isinstance(block, dict)
        p2 = block["policies"]
        print(f"\n  campaign {campaign}: random on-policy {_fmt(p2['random'])}, "
              f"Bernoulli TS on-policy {_fmt(p2['bts'])}")
        print(f"  {p2['logging_verdict']}")
        for name, row in p2["targets"].items():
            print(f"  {name:<30} SNIPS {_fmt(row['snips'])}  DR {_fmt(row['dr'])}")
            print(f"  {'':<30} {row['verdict']}")
    result["campaigns"] = {c: _jsonable(v) for c, v in per_campaign.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _asdict(e: Estimate) -> dict[str, float]:
    return {"estimate": e.value, "stderr": e.stderr, "ci_low": e.ci_low, "ci_high": e.ci_high}


def _policies(rand: BanditLog, bts: BanditLog, l2: float) -> dict[str, object]:
    train, test = rand.split(0.5)
    random_value, bts_value = on_policy_value(test), on_policy_value(bts)
    q = fit_logistic_reward_model(user_features_only(train), l2, per_action=False).predict(
        user_features_only(test))
    rows: dict[str, object] = {}
    for name, cube in serendip_policies(train, test, l2).items():
        est = estimate_all(test, cube, q)
        sn, dr = est["snips"], est["dr"]
        parts = []
        for label, ref in (("random", random_value), ("Bernoulli TS", bts_value)):
            seps = []
            for est_name, e in (("SNIPS", sn), ("DR", dr)):
                if _separated(_interval(e), _interval(ref)):
                    side = "below" if e.ci_high < ref.ci_low else "above"
                    seps.append(f"{est_name} {side}")
            parts.append(f"vs {label}: " + (", ".join(seps) + " (intervals separate)" if seps
                                            else "intervals overlap"))
        agree = all("overlap" not in x and "SNIPS" in x and "DR" in x for x in parts)
        # clicks on rounds where the target puts weight: what any separation rests on
        w = cube[np.arange(len(test)), test.action, test.position] / test.pscore
        support_clicks = int(test.reward[w > 0].sum())
        verdict = "; ".join(parts) + (
            "" if agree else " -> the sample cannot rank this policy against both with both "
            "estimators")
        verdict += f" [{support_clicks} clicks where the target has weight" + (
            ": too few for any separation to be trusted]" if support_clicks < 10 else "]")
        rows[name] = {"snips": _asdict(sn), "dr": _asdict(dr), "verdict": verdict,
                      "support_clicks": support_clicks}
    both = ("the random and Bernoulli TS click-rate intervals "
            + ("separate" if _separated(_interval(random_value), _interval(bts_value))
               else "overlap: the sample cannot tell the two logging policies apart"))
    return {"random": _asdict(random_value), "bts": _asdict(bts_value), "targets": rows,
            "test_rounds": len(test), "logging_verdict": both}


def _jsonable(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, float | np.floating):
        return float(v) if np.isfinite(v) else None
    return v
