"""Online learning in a replayed world: LinearTS against fixed presets and epsilon-greedy.

    python bench/bandit.py [--rounds 20000] [--out bench/results/bandit.md]

MovieLens-100K, temporal split.  Every round a random test user gets a list of K = 5 items
from each policy; a slot is rewarded when its item is one of the user's held-out future items
(a stationary world: the same item can earn again later).  The policies:

- the accurate and balanced presets (deterministic lists),
- balanced with ``EpsilonSlate`` exploration (epsilon 0.1 over the next 50 candidates),
- the adaptive preset: ``LinearTS`` choosing from its blend's 100 best candidates, starting
  from the blend's order and learning online from every list it shows.

Reported: the reward per slot over all rounds and over the last quarter, the share of
long-tail items shown, the novelty of what was shown, catalog coverage, and the weights
LinearTS learned; a plot shows the reward per slot as the rounds go by.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from serendip.data import load_movielens_100k, make_split
from serendip.eval.metrics import head_by_item_share
from serendip.eval.runner import truth_of
from serendip.explore import EpsilonSlate, LinearTS
from serendip.pipeline import FitConfig, Recommender
from serendip.text import Encoder, EncoderConfig
from serendip.types import ItemList, Query

K = 5
POOL = 100
OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "bandit.md"))
    args = ap.parse_args(argv)

    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    split = make_split(data, "temporal")
    train = split.train
    truth = truth_of(split)
    users = sorted(truth)
    queries = [Query(u, train.history(u)) for u in users]
    relevant = [set(truth[u].tolist()) for u in users]
    rec = Recommender.fit(train, FitConfig(), progress=False)
    balanced, accurate = rec.pipeline("balanced"), rec.pipeline("accurate")
    adaptive = rec.pipeline("adaptive")
    fixed = {
        "accurate": [lst.items for lst in accurate.recommend_many(queries, K)],
        "balanced": balanced.recommend_many(queries, K),
    }
    def candidates(pipe, n):  # type: ignore[no-untyped-def]
        out = []
        for row, q in zip(pipe.hybrid.score_many(queries), queries, strict=True):
            row = row.copy()
            row[q.history] = -np.inf
            out.append(ItemList(np.arange(row.size), row).top(n))
        return out

    pools = candidates(balanced, POOL)  # the exploration pool of balanced + explore
    ts_pools = candidates(adaptive, adaptive.preset.candidates)

    explorer = EpsilonSlate({"epsilon": 0.1, "pool": 50, "seed": args.seed})
    explorer.train(train)
    assert adaptive.preset.bandit is not None
    ts = LinearTS({**adaptive.preset.bandit, "seed": args.seed})  # the preset's, seeded
    ts.train(train)

    pop = np.asarray(train.item_popularity, dtype=np.float64)
    head = head_by_item_share(pop, 0.2)
    info = -np.log2(np.maximum(pop, 1.0) / train.n_users)
    names = ["accurate", "balanced", "balanced + explore 0.1", "adaptive (LinearTS)"]
    rewards = {n: np.zeros((args.rounds, K)) for n in names}
    shown_items: dict[str, list[np.ndarray]] = {n: [] for n in names}
    rng = np.random.default_rng(args.seed)
    for t in range(args.rounds):
        n = int(rng.integers(len(users)))
        q = queries[n]
        lists = {
            "accurate": fixed["accurate"][n],
            "balanced": fixed["balanced"][n].items,
            "balanced + explore 0.1": explorer(q, fixed["balanced"][n], pools[n]).items,
        }
        chosen = ts(q, ts_pools[n], K)
        lists["adaptive (LinearTS)"] = chosen.items
        for name, items in lists.items():
            r = np.array([float(i in relevant[n]) for i in items.tolist()])
            rewards[name][t, : r.size] = r
            shown_items[name].append(items)
        ts.update(chosen.fields["features"], rewards["adaptive (LinearTS)"][t, : len(chosen)])
        if (t + 1) % 5000 == 0:
            print(f"round {t + 1}: LinearTS weights {ts.weights()}", file=sys.stderr)

    quarter = args.rounds - args.rounds // 4
    lines = ["# Online learning with LinearTS (bench/bandit.py)", "",
             f"Command: `{' '.join(['python', 'bench/bandit.py', *sys.argv[1:]])}`", "",
             f"MovieLens-100K temporal split; {args.rounds:,} rounds, each a random test user "
             f"({len(users)} users) served {K} items by every policy; reward: a held-out "
             f"future item. The adaptive preset's LinearTS picks from its blend's "
             f"{adaptive.preset.candidates} best candidates, starting from the blend's order.",
             "", "| policy | reward per slot | last quarter | tail share | novelty (bits) | "
             "coverage |", "|---|---|---|---|---|---|"]
    for name in names:
        items = np.concatenate(shown_items[name])
        lines.append(
            f"| {name} | {rewards[name].mean():.4f} | {rewards[name][quarter:].mean():.4f} | "
            f"{float(np.mean(~head[items])):.3f} | {float(info[items].mean()):.2f} | "
            f"{np.unique(items).size / train.n_items:.3f} |")
    w = ts.weights()
    lines += ["", "The adaptive preset's learned weights (posterior mean; features in [0, 1]): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in w.items()) + ".", "",
              "![reward per slot over the rounds](bandit.png)"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    plot(rewards, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


def plot(rewards: dict[str, np.ndarray], path: Path, window: int = 1000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in rewards.items():
        per_round = r.mean(axis=1)
        if per_round.size >= window:
            smooth = np.convolve(per_round, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window, per_round.size + 1), smooth, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"reward per slot (moving mean of {window} rounds)")
    ax.set_title("Online: LinearTS learning vs fixed presets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
