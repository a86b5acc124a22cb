"""Accuracy of differentially private EASE against the privacy budget epsilon.

    python bench/dp.py [--dataset movielens] [--epsilons 0.5,1,2,4,8,inf]
                       [--clips 10,30,100] [--preset-clip 30] [--delta 1e-6]
                       [--protocol random|time]

On a per-user random 80/20 split (``--protocol time``: the time cut), EASE is trained on an
(epsilon, delta)-differentially private Gram matrix (``EASEConfig.dp_epsilon``: each user's
interactions clipped to ``dp_clip``, symmetric Gaussian noise calibrated to the clipped
sensitivity, see ``serendip.robust``) for every epsilon and clip, and measured alone (NDCG@10
on the test part).  For one clip the ``accurate`` preset is measured too, with its EASE
member (``ease_recent``) private and its other members (transition, textcf) exact: only the
EASE weights carry the guarantee there.  ``inf`` is the exact, non-private model (no
clipping).  Writes ``bench/results/dp-<dataset>.md`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attacks import encode, split_for  # noqa: E402
from serendip.data import load_dataset  # noqa: E402
from serendip.eval.metrics import compute_metrics  # noqa: E402
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.pipeline import FitConfig, Preset, Recommender  # noqa: E402
from serendip.robust import gaussian_sigma, gram_sensitivity  # noqa: E402
from serendip.types import Query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def ndcg(rec: Recommender, preset: Preset | str, split: Any, truth: dict[int, np.ndarray]
         ) -> float:
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    lists = rec.pipeline(preset).recommend_many(queries, K)
    recs = np.full((len(users), K), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    return float(compute_metrics(recs, users, truth, split.train, K)["ndcg"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens", choices=("movielens", "goodbooks", "lastfm"))
    ap.add_argument("--epsilons", default="0.5,1,2,4,8,inf")
    ap.add_argument("--clips", default="10,30,100")
    ap.add_argument("--preset-clip", type=int, default=30)
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol", default="random", choices=("random", "time"),
                    help="split: per-user random 80/20 (every user is tested; the default) "
                         "or the time cut (data with time only)")
    args = ap.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    clips = [int(c) for c in args.clips.split(",")]
    command = " ".join(["python bench/dp.py", *(shlex.quote(a) for a in sys.argv[1:])])
    name = args.dataset

    say(f"== {name}: loading and encoding")
    data = encode(load_dataset(name))
    protocol, split = split_for(data, args.protocol)
    truth = truth_of(split)
    ordered = bool(split.train.time_quality.ordered)
    say(f"{name}: {split.train!r}, {protocol} split, {len(truth)} test users")
    ease_only = Preset(name="ease", blend={"ease": 1.0})
    base = FitConfig.default_for(data.n_items, ordered).models
    acc_models = {k: v for k, v in base.items() if k in ("ease_recent", "transition", "textcf")}
    ease_member = "ease_recent" if "ease_recent" in acc_models else "ease"
    if ease_member == "ease":
        acc_models["ease"] = dict(base.get("ease", {}))

    rows: list[dict[str, Any]] = []
    for eps in epsilons:
        private = math.isfinite(eps)
        for clip in clips if private else [0]:
            dp = {"dp_epsilon": eps, "dp_delta": args.delta, "dp_clip": clip,
                  "seed": args.seed} if private else {}
            t0 = time.perf_counter()
            rec = Recommender.fit(split.train, FitConfig(models={"ease": {"l2": 500.0, **dp}}),
                                  progress=False)
            nd = ndcg(rec, ease_only, split, truth)
            sigma = gaussian_sigma(eps, args.delta, gram_sensitivity(clip)) if private else 0.0
            row = {"epsilon": eps, "clip": clip, "sigma": sigma, "ease": nd,
                   "accurate": float("nan")}
            if not private or clip == args.preset_clip:
                models = {k: dict(v) for k, v in acc_models.items()}
                models[ease_member] = {**models[ease_member], **dp}
                rec_a = Recommender.fit(split.train, FitConfig(models=models), progress=False)
                row["accurate"] = ndcg(rec_a, "accurate", split, truth)
            rows.append(row)
            say(f"epsilon {eps:g}, clip {clip or '-'}: sigma {sigma:.1f}, EASE NDCG@10 {nd:.4f}, "
                f"accurate {row['accurate']:.4f} ({time.perf_counter() - t0:.1f}s)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / f"dp-{name}.md"
    png = RESULTS / f"dp-{name}.png"
    exact = next(r for r in rows if not math.isfinite(r["epsilon"]))
    lines = [
        f"# Differentially private EASE on {name}",
        "",
        f"Made by `{command}` in {time.perf_counter() - _T0:.0f} s (written by bench/dp.py; "
        "see docs/robustness.md).",
        "",
        f"- {protocol} split, {len(truth)} test users, NDCG@10 over the whole catalog",
        f"- (epsilon, delta)-DP for adding or removing one user, delta = {args.delta:g}; "
        "clip = interactions kept per user (sampled, seed "
        f"{args.seed}); sigma = noise scale per Gram entry (analytic Gaussian mechanism, "
        "L2 sensitivity sqrt(clip (clip + 1) / 2)); EASE l2 = 500, raised under DP by "
        "2 sigma sqrt(n_items) (`dp_l2_noise`, the default)",
        f"- accurate: the shipped preset with its {ease_member} member private (clip "
        f"{args.preset_clip}) and transition and textcf exact; epsilon = inf is the exact fit",
        "",
        "| epsilon | clip | sigma | EASE NDCG@10 | vs exact | accurate NDCG@10 | vs exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "∞" if not math.isfinite(r["epsilon"]) else f"{r['epsilon']:g}"
        acc = "–" if math.isnan(r["accurate"]) else f"{r['accurate']:.4f}"
        acc_ratio = ("–" if math.isnan(r["accurate"])
                     else f"{r['accurate'] / exact['accurate']:.3f}")
        lines.append(f"| {eps} | {r['clip'] or '–'} | {r['sigma']:.1f} | {r['ease']:.4f} | "
                     f"{r['ease'] / exact['ease']:.3f} | {acc} | {acc_ratio} |")
    lines += ["", f"![NDCG@10 against epsilon]({png.name})", ""]
    md.write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    finite = [e for e in epsilons if math.isfinite(e)]
    for clip in clips:
        pts = [(r["epsilon"], r["ease"]) for r in rows if r["clip"] == clip]
        if pts:
            ax.plot(*zip(*pts, strict=True), "-o", label=f"EASE, clip {clip}")
    pts = [(r["epsilon"], r["accurate"]) for r in rows
           if r["clip"] == args.preset_clip and not math.isnan(r["accurate"])]
    if pts:
        ax.plot(*zip(*pts, strict=True), "-s", color="black",
                label=f"accurate preset, clip {args.preset_clip}")
    ax.axhline(exact["ease"], ls="--", color="gray", label="EASE, exact")
    ax.axhline(exact["accurate"], ls=":", color="black", label="accurate, exact")
    ax.set_xscale("log", base=2)
    if finite:
        ax.set_xticks(finite, [f"{e:g}" for e in finite])
    ax.set_xlabel(f"epsilon (delta = {args.delta:g})")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{name}: private EASE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    say(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
