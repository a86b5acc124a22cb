"""Off-policy evaluation from serendip's own exploration logs, against the known truth.

    python bench/ope.py [--rounds 10] [--epsilon 0.3] [--out bench/results/ope.md]

A semi-synthetic experiment on MovieLens-100K (temporal split): a user "clicks" an item shown
to them exactly when it is among their held-out future items.  The logging policy is the
balanced preset with ``EpsilonSlate`` exploration (each of K = 5 slots shows, with probability
epsilon, an item from the 50 candidates after the list) and every slot is logged with its
exact propensity, as the service does.  Each test user is served ``--rounds`` times.

From that log alone, IPS, SNIPS, DM and DR estimate the per-slot click rate of other policies:
the greedy balanced list, balanced with other exploration rates, and the accurate and discovery
presets; the truth is computed exactly from the held-out items.  Targets that only rearrange
what the logger can show (same ranking, other epsilon) are in its support and should be
estimated without bias; the other presets can put items in slots the logger never uses there,
so their *support* (the share of the target's slot probability the logger covers) is reported,
and IPS undercounts by about the missing share.  Results: a markdown table and a plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from serendip.data import load_movielens_100k, make_split
from serendip.eval.runner import truth_of
from serendip.explore import BanditLog, EpsilonSlate, estimate_from_target, on_policy_value
from serendip.pipeline import FitConfig, Pipeline, Recommender
from serendip.text import Encoder, EncoderConfig
from serendip.types import ItemList, Query

K = 5
POOL = 50
OUT = Path(__file__).resolve().parent / "results"


def ranked_and_candidates(pipe: Pipeline, queries: list[Query]) -> list[tuple[ItemList, ItemList]]:
    """Each user's deterministic list (rerankers applied) and the blend's candidates."""
    n_cand = max(pipe.preset.candidates, K) + POOL
    scores = pipe.hybrid.score_many(queries)
    out = []
    for row, q in zip(scores, queries, strict=True):
        row = row.copy()
        row[q.history] = -np.inf
        cands = ItemList(np.arange(row.size), row).top(n_cand)
        lst = cands
        for rr in pipe.rerankers:
            lst = rr(q, lst, K)
        out.append((lst.take(np.arange(min(K, len(lst)))), cands))
    return out


def slot_dist(ranked: ItemList, cands: ItemList, epsilon: float) -> dict[tuple[int, int], float]:
    """(item, slot) -> probability for EpsilonSlate at ``epsilon`` over these lists."""
    e = EpsilonSlate({"epsilon": epsilon, "pool": POOL})
    items, probs = e.action_dist(ranked, cands)
    return {(int(items[i]), p): float(probs[i, p])
            for i, p in zip(*np.nonzero(probs), strict=True)}


def fit_calibration(score: np.ndarray, reward: np.ndarray, iters: int = 50) -> np.ndarray:
    """Logistic regression of reward on [1, score] by Newton's method (a 2-parameter model)."""
    x = np.column_stack([np.ones_like(score), score])
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (reward - p)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        beta = beta + np.linalg.solve(hess, grad)
    return beta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="lists logged per test user")
    ap.add_argument("--epsilon", type=float, default=0.3, help="the logging policy's rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "ope.md"))
    args = ap.parse_args(argv)

    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    split = make_split(data, "temporal")
    truth = truth_of(split)
    users = sorted(truth)
    queries = [Query(u, split.train.history(u)) for u in users]
    rec = Recommender.fit(split.train, FitConfig(), progress=False)
    balanced = rec.pipeline("balanced")
    lists = ranked_and_candidates(balanced, queries)
    relevant = [set(truth[u].tolist()) for u in users]

    # the log ------------------------------------------------------------------------------
    logger = EpsilonSlate({"epsilon": args.epsilon, "pool": POOL, "seed": args.seed})
    logger.train(split.train)
    rows: list[tuple[int, int, int, float, float]] = []  # user row, item, slot, reward, pscore
    for _ in range(args.rounds):
        for n, (q, (ranked, cands)) in enumerate(zip(queries, lists, strict=True)):
            shown = logger(q, ranked, cands)
            for slot, (item, prop) in enumerate(
                    zip(shown.items.tolist(), shown.fields["propensity"].tolist(), strict=True)):
                rows.append((n, item, slot, float(item in relevant[n]), prop))
    arr = np.array(rows, dtype=np.float64)
    who = arr[:, 0].astype(np.int64)
    log = BanditLog(action=arr[:, 1].astype(np.int64), position=arr[:, 2].astype(np.int64),
                    reward=arr[:, 3], pscore=arr[:, 4], n_actions=data.n_items, n_positions=K)
    logged_support = [slot_dist(r, c, args.epsilon) for r, c in lists]

    # a reward model for DM / DR: the balanced blend's z-score, calibrated on the log --------
    blend = balanced.hybrid.score_many(queries)
    beta = fit_calibration(blend[who, log.action], log.reward)

    def q_hat(n: int, items: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * blend[n, items])))

    # target policies ----------------------------------------------------------------------
    targets: dict[str, list[dict[tuple[int, int], float]]] = {}
    for eps in (0.0, 0.1, args.epsilon, 1.0):
        targets[f"balanced, explore {eps:g}"] = [slot_dist(r, c, eps) for r, c in lists]
    for preset in ("accurate", "discovery"):
        det = ranked_and_candidates(rec.pipeline(preset), queries)
        targets[f"{preset} (greedy)"] = [slot_dist(r, c, 0.0) for r, c in det]

    lines = ["# Off-policy evaluation from exploration logs (bench/ope.py)", "",
             f"Command: `{' '.join(['python', 'bench/ope.py', *sys.argv[1:]])}`", "",
             f"MovieLens-100K temporal split, {len(users)} test users x {args.rounds} lists x "
             f"{K} slots = {len(log):,} logged slots; logging policy: balanced with exploration "
             f"epsilon = {args.epsilon:g} over the next {POOL} candidates. A click is a held-out "
             f"future item. Logged click rate per slot: {on_policy_value(log)}.", "",
             "| target policy | truth | support | IPS | SNIPS | DM | DR | truth in IPS 95% CI |",
             "|---|---|---|---|---|---|---|---|"]
    plot_rows = []
    for name, dists in targets.items():
        true = np.mean([sum(p for (i, _), p in d.items() if i in relevant[n]) / K
                        for n, d in enumerate(dists)])
        support = np.mean([sum(p for key, p in d.items() if logged_support[n].get(key, 0) > 0) / K
                           for n, d in enumerate(dists)])
        target_prob = np.array([dists[n].get((a, p), 0.0) for n, a, p in
                                zip(who.tolist(), log.action.tolist(), log.position.tolist(),
                                    strict=True)])
        q_target = np.empty(len(log))
        cache: dict[tuple[int, int], float] = {}
        for i, (n, p) in enumerate(zip(who.tolist(), log.position.tolist(), strict=True)):
            if (n, p) not in cache:
                items = np.array([a for (a, s) in dists[n] if s == p])
                probs = np.array([dists[n][(a, p)] for a in items.tolist()])
                cache[(n, p)] = float(probs @ q_hat(n, items))
            q_target[i] = cache[(n, p)]
        q_logged = 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * blend[who, log.action])))
        est = estimate_from_target(log, target_prob, q_target, q_logged)
        ips = est["ips"]
        covered = "yes" if ips.ci_low <= true <= ips.ci_high else "no"
        lines.append(
            f"| {name} | {true:.4f} | {support:.3f} | {ips.value:.4f} ± {ips.stderr:.4f} | "
            f"{est['snips'].value:.4f} | {est['dm'].value:.4f} | "
            f"{est['dr'].value:.4f} ± {est['dr'].stderr:.4f} | {covered} |")
        plot_rows.append((name, true, est))
        print(lines[-1], file=sys.stderr)
    lines += ["", "Values are expected clicks per shown slot. IPS and DR carry one standard "
              "error; support is the share of the target's slot probability on (item, slot) "
              "pairs the logging policy can show. DM and DR use the balanced blend's score, "
              "calibrated to clicks on the log by a two-parameter logistic regression, as the "
              "reward model.", "", "![estimates against the truth](ope.png)"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    plot(plot_rows, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


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
                    xerr=[[v.value - v.ci_low for v in vals], [v.ci_high - v.value for v in vals]],
                    fmt="o", color=colour, label=key.upper(), capsize=3)
    ax.scatter([r[1] for r in rows], y, marker="|", s=400, color="black", label="truth", zorder=3)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("clicks per shown slot (95% intervals)")
    ax.set_title("Off-policy estimates from an epsilon-greedy log vs the truth")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
