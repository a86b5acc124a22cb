"""How even is the discovery knob?  Shipped presets against presets tuned for the catalog.

    python bench/knob.py [--dataset movielens|goodbooks|lastfm] [--budget 300]

On the as-deployed split (the time cut where the data has time, else a per-user random
split), presets are tuned on a validation split carved from the training part, then the knob
is swept from 0 to 1 on the test part for the shipped and the tuned ``balanced`` and
``discovery``.  For each knob value it reports NDCG@10, the share of accurate's NDCG given up,
the overlap of the lists with the knob-0 lists, and tail share.  An even knob gives up equal
shares of accuracy in equal steps (the tuned scale aims at knob x = x * 20%).  Writes
``bench/results/knob-<dataset>.md`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serendip.data import load_dataset, make_split  # noqa: E402
from serendip.eval.metrics import compute_metrics  # noqa: E402
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.pipeline import Recommender  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.tune import TuneConfig, tune  # noqa: E402
from serendip.types import Query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KNOBS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def sweep(rec: Recommender, preset, split, users, truth, k: int = 10):  # type: ignore[no-untyped-def]
    pipe = rec.pipeline(preset)
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    rows, base = [], None
    for knob in KNOBS:
        lists = pipe.recommend_many(queries, k, knob)
        recs = np.full((len(users), k), -1, dtype=np.int64)
        for r, lst in enumerate(lists):
            recs[r, : len(lst)] = lst.items
        m = compute_metrics(recs, users, truth, split.train, k)
        if base is None:
            base = recs
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(base, recs, strict=True)])
        rows.append({"knob": knob, "ndcg": m["ndcg"], "overlap": float(overlap),
                     "tail_share": m["tail_share"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="movielens", choices=("movielens", "goodbooks", "lastfm"))
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--max-users", type=int, default=3000,
                    help="test users sampled for the sweep (a fixed seed)")
    args = ap.parse_args()

    data = load_dataset(args.dataset)
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    protocol = "time" if data.time_quality.ordered else "random"
    split = make_split(data, protocol)
    t0 = time.perf_counter()
    result = tune(split.train, TuneConfig(budget_seconds=args.budget), progress=True)
    print(f"tuned in {time.perf_counter() - t0:.0f}s", flush=True)
    rec = Recommender.fit(split.train, result.fit_config, progress=False)
    rec.presets = dict(result.presets)
    shipped = Recommender.fit(split.train, None, progress=False)
    truth = truth_of(split)
    users = np.fromiter(truth.keys(), dtype=np.int64)
    if users.size > args.max_users:
        users = np.sort(np.random.default_rng(0).choice(users, args.max_users, replace=False))
    acc = {}
    for label, r in (("shipped", shipped), ("tuned", rec)):
        acc[label] = sweep(r, r.preset("accurate"), split, users, truth)[0]["ndcg"]
    curves = {}
    for name in ("balanced", "discovery"):
        curves[f"{name} (shipped)"] = ("shipped", sweep(shipped, shipped.preset(name), split, users, truth))
        if name in result.presets:
            curves[f"{name} (tuned)"] = ("tuned", sweep(rec, result.presets[name], split, users, truth))

    lines = [f"# The discovery knob on {args.dataset}", "",
             f"Written by `python bench/knob.py --dataset {args.dataset} --budget {args.budget:g}`. "
             f"Protocol: {split.name}, {users.size} test users; tuning saw only the training part. "
             "`cost` is the share of the same fit's accurate NDCG@10 given up; the tuned scale "
             "aims at cost = knob x 20%. `overlap` is the share of each list shared with its "
             "knob-0 list.", ""]
    for label, (which, rows) in curves.items():
        lines += [f"## {label}", "", "| knob | NDCG@10 | cost | overlap | tail share |",
                  "|---|---|---|---|---|"]
        for r in rows:
            cost = 1.0 - r["ndcg"] / acc[which] if acc[which] > 0 else float("nan")
            lines.append(f"| {r['knob']:.3f} | {r['ndcg']:.4f} | {cost:+.3f} | "
                         f"{r['overlap']:.2f} | {r['tail_share']:.3f} |")
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    md = RESULTS / f"knob-{args.dataset}.md"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, (which, rows) in curves.items():
        ks = [r["knob"] for r in rows]
        axes[0].plot(ks, [1.0 - r["ndcg"] / acc[which] for r in rows], marker="o", label=label)
        axes[1].plot(ks, [r["overlap"] for r in rows], marker="o", label=label)
    axes[0].plot([0, 1], [0, 0.2], color="grey", linestyle="--", label="aim: knob x 20%")
    axes[0].set_ylabel("share of accurate's NDCG@10 given up")
    axes[1].set_ylabel("overlap with the knob-0 list")
    for ax in axes:
        ax.set_xlabel("discovery knob")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Discovery knob, {args.dataset} ({split.name}, test users)")
    png = RESULTS / f"knob-{args.dataset}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    lines += [f"![knob]({png.name})", ""]
    md.write_text("\n".join(lines))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
