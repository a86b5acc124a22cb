"""Off-policy evaluation, checked where the truth is known: coverage on a planted world, and
the served ``balanced`` preset on MovieLens-100K.

    python bench/ope.py --part coverage   [--reps 200]          -> results/ope-coverage.md/.json
    python bench/ope.py --part movielens  [--rounds 10 --epsilon 0.3] -> results/ope-movielens.*
    python bench/ope.py --part obd        [--n-boot 30]         -> results/ope-obd.md/.json
    python bench/ope.py                   (all three)

``obd``: ``serendip ope obd`` (``serendip.explore.obd_check``) on the Open Bandit sample, its
printed report kept as a markdown file; then, where obp's library and scikit-learn import,
obp's own published experiment for campaign ``all`` (its Bernoulli TS with the production prior,
its logistic ``RegressionModel`` over 3 folds with the example's hyperparameters, its
bootstrap replicates) run on the same replicates, and each estimator's relative error compared
with serendip's replicate by replicate (paired: the replicates are the same rows).

``coverage``: a planted simulation (users x items with known click probabilities, a position
bias, users visiting several times) logged by an epsilon-slate policy; IPS, SNIPS and DR (a
cross-fitted logistic reward model) estimate in-support and near-support targets, and the
share of repetitions whose 95% interval holds the true value is reported for user-clustered
and per-slot intervals. It also shows the bias of clipped and switch variants on a planted
log with a deliberately wrong reward model.

``movielens``: the balanced preset, served exactly as the service serves it
(``Pipeline.recommend_many`` with the preset's discovery, candidates and an ``[explore]``
section), logs every slot with its propensity; a user "clicks" a shown item exactly when it is
among their held-out future items. Targets are computed by ``serendip.explore.replay``'s
``served_distribution`` (the serving code path); the script checks that the targets' greedy
lists are the served ones. Intervals are clustered by user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from serendip.explore.log import BanditLog
from serendip.explore.ope import (
    Estimate,
    estimate_from_target,
    fit_logistic,
    fold_ids,
    on_policy_value,
)

K = 5
POOL = 50
OUT = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------
# a planted simulation: interval coverage
# ------------------------------------------------------------------------------------------
def _slot_dists(rank: np.ndarray, eps: float, k: int, pool: int) -> np.ndarray:
    """users x items x slots: slot p shows rank[u, p] w.p. 1 - eps, else one of the next
    ``pool`` ranked items uniformly (marginals as EpsilonSlate's)."""
    n_users, n_items = rank.shape
    dist = np.zeros((n_users, n_items, k))
    rows = np.arange(n_users)
    for p in range(k):
        dist[rows, rank[:, p], p] += 1 - eps
        for j in range(k, k + pool):
            dist[rows, rank[:, j], p] += eps / pool
    return dist


def coverage_study(reps: int = 200, seed: int = 0, n_users: int = 150, visits: int = 4,
                   n_items: int = 80, k: int = 4, pool: int = 16, epsilon: float = 0.3,
                   folds: int = 3) -> dict[str, object]:
    """Coverage of 95% intervals when the truth is known exactly.

    World: click probability sigmoid(a_u + b_i + c_ui) x position bias 1 / sqrt(1 + slot),
    users visit ``visits`` times (their slots are correlated through a_u, so they are the
    clusters). Logger: a ranking by a noisy score with epsilon-slate exploration (epsilon 0.3,
    the next ``pool`` items). Targets: in support (the logger's ranking at epsilon 0.1 and 0,
    i.e. greedy) and near support (95% the greedy list, 5% a list with slots 1 and 2 swapped,
    which puts ranked items in slots the logger never shows them in). Estimators: IPS, SNIPS
    and DR with a cross-fitted logistic reward model on [noisy score, slot one-hot], each
    with the user-clustered interval and, for contrast, the per-slot one.
    """
    rng = np.random.default_rng(seed)
    bias = 1 / np.sqrt(1 + np.arange(k))
    records: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        a = rng.normal(-1.5, 0.8, size=n_users)
        b = rng.normal(0.0, 1.0, size=n_items)
        c = rng.normal(0.0, 0.5, size=(n_users, n_items))
        p_click = 1 / (1 + np.exp(-(a[:, None] + b[None, :] + c)))
        score = b[None, :] + c + rng.normal(0.0, 0.7, size=(n_users, n_items))
        rank = np.argsort(-score, axis=1)
        logger = _slot_dists(rank, epsilon, k, pool)
        greedy = _slot_dists(rank, 0.0, k, pool)
        swapped_rank = rank.copy()
        swapped_rank[:, [0, 1]] = rank[:, [1, 0]]
        targets = {"in support: epsilon 0.1": _slot_dists(rank, 0.1, k, pool),
                   "in support: greedy": greedy,
                   "near support: 5% off": 0.95 * greedy
                   + 0.05 * _slot_dists(swapped_rank, 0.0, k, pool)}
        # the log: every user visits, every slot draws from its marginal
        users = np.repeat(np.arange(n_users), visits * k)
        slots = np.tile(np.arange(k), n_users * visits)
        probs = logger[users, :, slots]
        action = (probs.cumsum(axis=1) > rng.random(users.size)[:, None]).argmax(axis=1)
        reward = (rng.random(users.size) < p_click[users, action] * bias[slots]).astype(float)
        log = BanditLog(action=action, reward=reward, pscore=probs[np.arange(users.size), action],
                        n_actions=n_items, position=slots, n_positions=k, cluster=users)
        flat = BanditLog(action=action, reward=reward, pscore=log.pscore, n_actions=n_items,
                         position=slots, n_positions=k)
        # cross-fitted logistic reward model on [score, slot one-hot], folds by user
        fold = fold_ids(users, folds, seed + rep)
        q_all = np.zeros((users.size, n_items))
        for f in range(folds):
            tr = fold != f
            x = np.column_stack([score[users[tr], action[tr]], np.eye(k)[slots[tr]][:, 1:]])
            coef, icpt = fit_logistic(x, reward[tr], l2=1.0)
            te = np.flatnonzero(~tr)
            z = (score[users[te]] * coef[0] + icpt
                 + (np.eye(k)[slots[te]][:, 1:] @ coef[1:])[:, None])
            q_all[te] = 1 / (1 + np.exp(-z))
        q_logged = q_all[np.arange(users.size), action]
        for name, dist in targets.items():
            truth = float(np.mean(np.einsum("uik,ui->uk", dist, p_click) * bias[None, :]))
            pi = dist[users, :, slots]
            target_prob = pi[np.arange(users.size), action]
            q_target = np.einsum("ri,ri->r", pi, q_all)
            for label, lg in (("clustered", log), ("per-slot", flat)):
                est = estimate_from_target(lg, target_prob, q_target, q_logged)
                for key in ("ips", "snips", "dr"):
                    e = est[key]
                    rec = records.setdefault(f"{name}|{key}|{label}", {"cover": [], "err": [],
                                                                       "width": []})
                    rec["cover"].append(float(e.ci_low <= truth <= e.ci_high))
                    rec["err"].append(e.value - truth)
                    rec["width"].append(e.ci_high - e.ci_low)
    out: dict[str, object] = {}
    for key, rec in records.items():
        out[key] = {"coverage": float(np.mean(rec["cover"])), "bias": float(np.mean(rec["err"])),
                    "rmse": float(np.sqrt(np.mean(np.square(rec["err"])))),
                    "width": float(np.mean(rec["width"]))}
    return {"reps": reps, "users": n_users, "visits": visits, "items": n_items, "slots": k,
            "epsilon": epsilon, "results": out}


def planted_switch(seed: int = 0, reps: int = 300) -> dict[str, dict[str, float]]:
    """Bias and spread of DR, clipped DR, switch-DR and clipped IPS on a planted log: logger
    shows action 1 with probability 0.05 (else action 0), clicks 0.2 / 0.6, target always
    action 1 (weight 20, truth 0.6), reward model 0.45 for action 1 (biased low by 0.15)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {}
    for _ in range(reps):
        n = 2000
        action = (rng.random(n) < 0.05).astype(int)
        reward = (rng.random(n) < np.where(action == 1, 0.6, 0.2)).astype(float)
        log = BanditLog(action=action, reward=reward, pscore=np.where(action == 1, 0.05, 0.95),
                        n_actions=2)
        q_logged = np.where(action == 1, 0.45, 0.2)
        est = estimate_from_target(log, (action == 1).astype(float), np.full(n, 0.45), q_logged,
                                   max_weight=10.0, tau=10.0)
        for key in ("ips", "ips_clipped", "dr", "dr_clipped", "dr_switch", "dm", "snips"):
            rows.setdefault(key, []).append(est[key].value - 0.6)
    return {k: {"bias": float(np.mean(v)), "sd": float(np.std(v))} for k, v in rows.items()}


def coverage_report(args: argparse.Namespace) -> list[str]:
    cov = coverage_study(reps=args.reps, seed=args.seed)
    sw = planted_switch(seed=args.seed)
    (OUT / "ope-coverage.json").write_text(json.dumps({"coverage": cov, "switch": sw}, indent=2))
    res = cov["results"]
    assert isinstance(res, dict)
    lines = ["# Interval coverage on a planted simulation (bench/ope.py --part coverage)", "",
             f"Command: `python bench/ope.py --part coverage --reps {args.reps} "
             f"--seed {args.seed}`", "",
             f"{cov['reps']} repetitions; each: {cov['users']} users x {cov['visits']} visits x "
             f"{cov['slots']} slots over {cov['items']} items, logged by an epsilon-slate "
             f"policy (epsilon {cov['epsilon']}). Coverage = share of repetitions whose 95% "
             "interval holds the exactly computed value.", "",
             "| target | estimator | coverage, user-clustered | coverage, per-slot | bias | "
             "RMSE | mean width (clustered) |", "|---|---|---|---|---|---|---|"]
    targets = sorted({k.split("|")[0] for k in res})
    for t in targets:
        for e in ("ips", "snips", "dr"):
            c, s = res[f"{t}|{e}|clustered"], res[f"{t}|{e}|per-slot"]
            lines.append(f"| {t} | {e.upper()} | {c['coverage']:.3f} | {s['coverage']:.3f} | "
                         f"{c['bias']:+.4f} | {c['rmse']:.4f} | {c['width']:.4f} |")
    lines += ["", "## Clipped and switch variants on a planted log", "",
              "Logger: action 1 with probability 0.05 (else 0); click rates 0.2 and 0.6; the "
              "target always shows action 1 (weight 20; true value 0.6); the reward model says "
              "0.45 for action 1 (0.15 too low). Clipping at M = 10 and switching at tau = 10 "
              "both act on every round the target can use. 300 repetitions of 2,000 rounds.", "",
              "| estimator | bias | sd |", "|---|---|---|"]
    for k, v in sw.items():
        lines.append(f"| {k} | {v['bias']:+.4f} | {v['sd']:.4f} |")
    lines += ["", "IPS and DR are unbiased; clipping the weight 20 to 10 halves the IPS term "
              "(bias -0.30) and halves DR's correction (DR-clipped keeps half the model's error, "
              "-0.075); switch-DR hands every round to the model, so it carries the model's "
              "whole error (-0.15) with no spread from the weights."]
    (OUT / "ope-coverage.md").write_text("\n".join(lines) + "\n")
    return lines


# ------------------------------------------------------------------------------------------
# MovieLens-100K: the served balanced preset
# ------------------------------------------------------------------------------------------
def movielens_report(args: argparse.Namespace) -> list[str]:
    from serendip.data import load_movielens_100k, make_split
    from serendip.eval.runner import truth_of
    from serendip.explore.replay import served_distribution
    from serendip.pipeline import FitConfig, Recommender
    from serendip.text import Encoder, EncoderConfig
    from serendip.types import Query

    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    split = make_split(data, "temporal")
    truth = truth_of(split)
    users = sorted(truth)
    queries = [Query(u, split.train.history(u)) for u in users]
    rec = Recommender.fit(split.train, FitConfig(), progress=False)
    base = rec.preset("balanced")
    logger = rec.pipeline(base.model_copy(update={
        "explore": {"epsilon": args.epsilon, "pool": POOL, "seed": args.seed}}))
    relevant = [set(truth[u].tolist()) for u in users]

    # the log: served lists, exactly as the service computes them --------------------------
    rows: list[tuple[int, int, int, float, float]] = []
    for _ in range(args.rounds):
        for n, lst in enumerate(logger.recommend_many(queries, K, explore=args.epsilon)):
            for slot, (item, prop) in enumerate(zip(lst.items.tolist(),
                                                    lst.fields["propensity"].tolist(),
                                                    strict=True)):
                rows.append((n, item, slot, float(item in relevant[n]), prop))
    arr = np.array(rows, dtype=np.float64)
    who = arr[:, 0].astype(np.int64)
    log = BanditLog(action=arr[:, 1].astype(np.int64), position=arr[:, 2].astype(np.int64),
                    reward=arr[:, 3], pscore=arr[:, 4], n_actions=data.n_items, n_positions=K,
                    cluster=who)
    flat = BanditLog(action=log.action, position=log.position, reward=log.reward,
                     pscore=log.pscore, n_actions=data.n_items, n_positions=K)

    # targets, through the serving code path ----------------------------------------------
    def dists(pipe: object, eps: float) -> list[dict[tuple[int, int], float]]:
        out = []
        for q in queries:
            items, pr = served_distribution(pipe, q, K, eps)
            out.append({(int(items[i]), int(p)): float(pr[i, p])
                        for i, p in zip(*np.nonzero(pr), strict=True)})
        return out

    targets: dict[str, list[dict[tuple[int, int], float]]] = {}
    for eps in (0.0, 0.1, args.epsilon, 1.0):
        targets[f"balanced (served), explore {eps:g}"] = dists(logger, eps)
    for preset in ("accurate", "discovery"):
        targets[f"{preset} (greedy)"] = dists(rec.pipeline(preset), 0.0)
    logged_support = targets[f"balanced (served), explore {args.epsilon:g}"]
    greedy = targets["balanced (served), explore 0"]
    # the served lists' unexplored slots are the greedy target's list, slot for slot
    explored = arr[:, 4] < 1 - args.epsilon - 1e-9
    same = [greedy[n].get((a, p), 0.0) == 1.0 for n, a, p in
            zip(who[~explored].tolist(), log.action[~explored].tolist(),
                log.position[~explored].tolist(), strict=True)]
    agreement = float(np.mean(same))

    # reward model: logistic on [balanced blend score, slot one-hot], cross-fitted by user --
    d = base.internal_discovery(base.discovery)
    blend = logger.hybrid.score_many([Query(q.user, q.history, q.text, discovery=d)
                                      for q in queries])
    mu, sd = float(blend[np.isfinite(blend)].mean()), float(blend[np.isfinite(blend)].std())
    blend = np.where(np.isfinite(blend), (blend - mu) / sd, -10.0)
    fold = fold_ids(who, 3, args.seed)
    coefs = []
    for f in range(3):
        tr = fold != f
        x = np.column_stack([blend[who[tr], log.action[tr]], np.eye(K)[log.position[tr]][:, 1:]])
        coefs.append(fit_logistic(x, log.reward[tr], l2=1.0))

    def q_hat(n: int, items: np.ndarray, slot: int) -> np.ndarray:
        c, b = coefs[fold_of_user[n]]
        z = b + c[0] * blend[n, items] + (c[slot] if slot > 0 else 0.0)
        return 1.0 / (1.0 + np.exp(-z))

    fold_of_user = {int(n): int(f) for n, f in zip(who.tolist(), fold.tolist(), strict=True)}
    q_logged = np.array([q_hat(n, np.array([a]), p)[0] for n, a, p in
                         zip(who.tolist(), log.action.tolist(), log.position.tolist(),
                             strict=True)])

    logged_c, logged_f = on_policy_value(log), on_policy_value(flat)
    lines = ["# Off-policy evaluation of the served balanced preset (bench/ope.py --part "
             "movielens)", "",
             f"Command: `python bench/ope.py --part movielens --rounds {args.rounds} "
             f"--epsilon {args.epsilon:g} --seed {args.seed}`", "",
             f"MovieLens-100K temporal split, {len(users)} test users x {args.rounds} lists x "
             f"{K} slots = {len(log):,} logged slots. Logging policy: the balanced preset as "
             f"served (discovery {base.discovery:g}, {base.candidates} candidates) with "
             f"exploration epsilon = {args.epsilon:g} over the next {POOL} candidates. A click "
             "is a held-out future item.", "",
             f"- Served-list agreement: {agreement:.4f} of the unexplored logged slots hold the "
             "item the replayed greedy target puts there (1 = one code path).",
             f"- Logged click rate per slot: {logged_c.value:.4f}; stderr per-slot "
             f"{logged_f.stderr:.4f}, user-clustered {logged_c.stderr:.4f} "
             f"({logged_c.n_clusters} users).", "",
             "| target policy | truth | support | IPS [95% clustered] | SNIPS | DM | DR | "
             "switch-DR (tau 20) | IPS stderr per-slot / clustered | truth in IPS / DR CI |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    plot_rows = []
    results: dict[str, object] = {"agreement": agreement, "logged": _js(logged_c),
                                  "logged_per_slot_stderr": logged_f.stderr, "targets": {}}
    for name, dist in targets.items():
        true = np.mean([sum(p for (i, _), p in dd.items() if i in relevant[n]) / K
                        for n, dd in enumerate(dist)])
        support = np.mean([sum(p for key, p in dd.items() if logged_support[n].get(key, 0) > 0)
                           / K for n, dd in enumerate(dist)])
        target_prob = np.array([dist[n].get((a, p), 0.0) for n, a, p in
                                zip(who.tolist(), log.action.tolist(), log.position.tolist(),
                                    strict=True)])
        cache: dict[tuple[int, int], float] = {}
        q_target = np.empty(len(log))
        for i, (n, p) in enumerate(zip(who.tolist(), log.position.tolist(), strict=True)):
            if (n, p) not in cache:
                items = np.array([a for (a, s) in dist[n] if s == p])
                probs = np.array([dist[n][(a, p)] for a in items.tolist()])
                cache[(n, p)] = float(probs @ q_hat(n, items, p))
            q_target[i] = cache[(n, p)]
        est = estimate_from_target(log, target_prob, q_target, q_logged, tau=20.0)
        est_f = estimate_from_target(flat, target_prob, q_target, q_logged)
        ips, drr = est["ips"], est["dr"]
        cover = (f"{'yes' if ips.ci_low <= true <= ips.ci_high else 'no'} / "
                 f"{'yes' if drr.ci_low <= true <= drr.ci_high else 'no'}")
        lines.append(
            f"| {name} | {true:.4f} | {support:.3f} | {ips.value:.4f} [{ips.ci_low:.4f}, "
            f"{ips.ci_high:.4f}] | {est['snips'].value:.4f} | {est['dm'].value:.4f} | "
            f"{drr.value:.4f} [{drr.ci_low:.4f}, {drr.ci_high:.4f}] | "
            f"{est['dr_switch'].value:.4f} | {est_f['ips'].stderr:.4f} / {ips.stderr:.4f} | "
            f"{cover} |")
        print(lines[-1], file=sys.stderr)
        plot_rows.append((name, true, est))
        results["targets"][name] = {"truth": true, "support": support,  # type: ignore[index]
                                    **{k: _js(v) for k, v in est.items()},
                                    "ips_per_slot_stderr": est_f["ips"].stderr}
    lines += ["", "Values are expected clicks per shown slot. Intervals are 95%, clustered by "
              "user and kept inside [0, 1] (SNIPS: Wilson over the effective rounds). Support "
              "is the share of the target's slot probability on (item, slot) pairs the logger "
              "can show. DM and DR use a logistic model of the click on the balanced blend's "
              "standardised score and the slot, cross-fitted over 3 folds of users.", "",
              "![estimates against the truth](ope-movielens.png)"]
    (OUT / "ope-movielens.md").write_text("\n".join(lines) + "\n")
    (OUT / "ope-movielens.json").write_text(json.dumps(results, indent=2))
    plot(plot_rows, OUT / "ope-movielens.png")
    return lines


def _js(e: Estimate) -> dict[str, float | int | None]:
    return {"value": e.value, "stderr": e.stderr, "ci_low": e.ci_low, "ci_high": e.ci_high,
            "n": e.n, "n_clusters": e.n_clusters}


def plot(rows: list[tuple[str, float, dict]], path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for off, key, colour in ((-0.2, "ips", "#1f77b4"), (0.0, "snips", "#2ca02c"),
                             (0.2, "dr", "#d62728")):
        vals = [r[2][key] for r in rows]
        ax.errorbar([v.value for v in vals], y + off,
                    xerr=[[max(v.value - v.ci_low, 0) for v in vals],
                          [max(v.ci_high - v.value, 0) for v in vals]],
                    fmt="o", color=colour, label=key.upper(), capsize=3)
    ax.scatter([r[1] for r in rows], y, marker="|", s=400, color="black", label="truth", zorder=3)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("clicks per shown slot (95% user-clustered intervals)")
    ax.set_title("Off-policy estimates of the served balanced preset vs the truth")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--part", choices=("coverage", "movielens", "obd", "all"), default="all")
    ap.add_argument("--n-boot", type=int, default=30, help="bootstrap replicates (obd)")
    ap.add_argument("--reps", type=int, default=200, help="planted repetitions (coverage)")
    ap.add_argument("--rounds", type=int, default=10, help="lists logged per test user")
    ap.add_argument("--epsilon", type=float, default=0.3, help="the logging policy's rate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part in ("coverage", "all"):
        print("\n".join(coverage_report(args)))
    if args.part in ("movielens", "all"):
        print("\n".join(movielens_report(args)))
    if args.part in ("obd", "all"):
        print("\n".join(obd_report(args)))
    return 0


def obd_report(args: argparse.Namespace) -> list[str]:
    """Run the ``serendip ope obd`` check and keep its report (stdout) and JSON."""
    import io

    from serendip.explore.obd_check import add_obd_arguments, cmd_ope_obd

    ap = argparse.ArgumentParser()
    add_obd_arguments(ap)
    argv = ["--n-boot", str(args.n_boot), "--json", str(OUT / "ope-obd.json")]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_ope_obd(ap.parse_args(argv))
    lines = ["# The Open Bandit check (serendip ope obd)", "",
             f"Command: `serendip ope obd --n-boot {args.n_boot}` (run by "
             f"`python bench/ope.py --part obd --n-boot {args.n_boot}`)", "", "```",
             *buf.getvalue().rstrip().splitlines(), "```"]
    result = json.loads((OUT / "ope-obd.json").read_text())
    if "all" in result["campaigns"]:
        lines += ["", *obp_paired(result["campaigns"]["all"]["estimators"], args.n_boot)]
    (OUT / "ope-obd.md").write_text("\n".join(lines) + "\n")
    return lines


@contextlib.contextmanager
def _positional_axis() -> Iterator[None]:
    """obp 0.4.1 passes ``axis`` to ``DataFrame.drop`` and ``pd.concat`` by position, which
    pandas 2 refuses; for the span of reading its data set, both take it again."""
    import pandas as pd

    drop, concat = pd.DataFrame.drop, pd.concat

    def drop_(self: Any, labels: Any = None, axis: Any = 0, *a: Any, **kw: Any) -> Any:
        return drop(self, labels, axis=axis, **kw)

    def concat_(objs: Any, axis: Any = 0, *a: Any, **kw: Any) -> Any:
        return concat(objs, axis=axis, **kw)

    pd.DataFrame.drop, pd.concat = drop_, concat_  # type: ignore[assignment]
    try:
        yield
    finally:
        pd.DataFrame.drop, pd.concat = drop, concat  # type: ignore[method-assign]


def obp_relative_errors(n_boot: int) -> dict[str, np.ndarray]:
    """obp's own example experiment on the installed sample, campaign ``all``: the relative
    error of IPW and DR for Bernoulli TS per bootstrap replicate (obp 0.4 ``examples/obd``:
    100,000 simulations for the action distribution, LogisticRegression(C=100, max_iter=10000,
    random_state=12345), 3 folds, replicate b drawn with random_state b)."""
    import warnings

    from obp.dataset import OpenBanditDataset
    from obp.ope import (
        DoublyRobust,
        InverseProbabilityWeighting,
        OffPolicyEvaluation,
        RegressionModel,
    )
    from obp.policy import BernoulliTS
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(), _positional_axis():
        warnings.simplefilter("ignore")
        obd = OpenBanditDataset(behavior_policy="random", campaign="all")
        policy = BernoulliTS(n_actions=obd.n_actions, len_list=obd.len_list,
                             is_zozotown_prior=True, campaign="all", random_state=12345)
        single = policy.compute_batch_action_dist(n_sim=100_000)
        truth = OpenBanditDataset.calc_on_policy_policy_value_estimate(
            behavior_policy="bts", campaign="all")
        out: dict[str, list[float]] = {"ips": [], "dr": []}
        for b in range(n_boot):
            fb = obd.sample_bootstrap_bandit_feedback(random_state=b)
            model = RegressionModel(
                n_actions=obd.n_actions, len_list=obd.len_list, action_context=obd.action_context,
                base_model=LogisticRegression(C=100, max_iter=10000, random_state=12345))
            rewards = model.fit_predict(
                context=fb["context"], action=fb["action"], reward=fb["reward"],
                position=fb["position"], pscore=fb["pscore"], n_folds=3, random_state=12345)
            ope = OffPolicyEvaluation(bandit_feedback=fb, ope_estimators=[
                InverseProbabilityWeighting(), DoublyRobust()])
            errs = ope.evaluate_performance_of_estimators(
                ground_truth_policy_value=truth,
                action_dist=np.tile(single, (fb["n_rounds"], 1, 1)),
                estimated_rewards_by_reg_model=rewards, metric="relative-ee")
            out["ips"].append(float(errs["ipw"]))
            out["dr"].append(float(errs["dr"]))
    return {k: np.array(v) for k, v in out.items()}


def obp_paired(estimators: dict[str, Any], n_boot: int) -> list[str]:
    """serendip's relative errors beside obp's own pipeline's, replicate by replicate."""
    from scipy import stats

    from serendip.explore.obd_check import PUBLISHED

    head = ["## Beside obp's own pipeline, replicate by replicate (campaign all)", ""]
    try:
        theirs = obp_relative_errors(n_boot)
    except ImportError as e:
        return [*head, f"obp's pipeline did not run here ({e}): no paired comparison."]
    lines = [*head,
             f"The same {n_boot} bootstrap replicates (the same rows), each estimated by serendip "
             "(its own Bernoulli TS simulation and cross-fitted logistic reward model) and by "
             "obp 0.4.1's published example experiment; difference = serendip's relative error "
             "minus obp's, mean ± 95% t over replicates.", "",
             "| estimator | serendip | obp, run here | obp published | difference | "
             "serendip lower in |", "|---|---:|---:|---:|---:|---:|"]
    for k in ("ips", "dr"):
        ours = np.array(estimators[k]["relative_errors"])
        diff = ours - theirs[k]
        half = float(stats.t.ppf(0.975, diff.size - 1) * diff.std(ddof=1) / np.sqrt(diff.size))
        lines.append(f"| {k} | {ours.mean():.3f} | {theirs[k].mean():.3f} | "
                     f"{PUBLISHED['all'][k]:.3f} | {diff.mean():+.3f} ± {half:.3f} | "
                     f"{int((diff < 0).sum())} of {diff.size} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
