"""Training for surprise against re-ranking for it: one accuracy/serendipity frontier.

    python bench/surprise.py [--quick] [--points 3:0,2:0.5,6:0.5] [--blend 0.25,0.5,1,2]
                             [--rerank 0.1,0.2,...] [--pools 50,200] [--epochs 20]

On MovieLens-100K, split as deployed (a global time cut at the 0.8 quantile of event time;
validation: the same cut inside the training part), this compares on NDCG@10 against Ge et
al.'s serendipity@10 (held-out items outside the 50 most popular, per list slot), with tail
share, novelty and unexpectedness beside them:

(a) EASE, its L2 penalty chosen on validation NDCG@10: the reference of every ratio;
(b) EASE + the serendipity re-ranker (``serendip.rerank.Serendipity``) at several strengths
    and candidate pools;
(c) the two-tower model (surprise = 0) + the same re-ranker;
(d) the two-tower model trained with its surprise term (``TwoTowerConfig.surprise``, and
    ``surprise_popularity``) at several strengths, no re-ranking;
(e) the validation-chosen surprise-trained model + the re-ranker;
(f) EASE blended with the two-tower model (``Preset.blend``: per-user z-scores), the plain
    model (f0, on the reference side) and each surprise-trained one (f), at several weights.

Every hyperparameter is chosen on the validation split: the EASE penalty by NDCG@10; in each
family the operating point is the one with the most validation serendipity whose validation
NDCG@10 is at least 0.95 x validation EASE's.  The test part is used once.  The re-ranking
frontier is the upper concave hull of every test point without the surprise term -- (a), (b),
(c), the plain two-tower model and its blends with EASE (f0) -- (a hull point between two
lists is reached by serving one or the other at random); a trained point ((d), (e), (f)) lies
beyond it when no such mixture has at least its NDCG and at least its serendipity.  Writes ``bench/results/surprise-movielens.md`` (``-quick`` for
``--quick``), a JSON with every row and a plot beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serendip.data import load_dataset, random_split, time_split, validation_split  # noqa: E402
from serendip.data.dataset import Dataset  # noqa: E402
from serendip.data.splits import Split  # noqa: E402
from serendip.eval.metrics import (  # noqa: E402
    compute_metrics,
    ndcg,
    primitive_list,
    serendipity_ge,
)
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.pipeline import FitConfig, Preset, Recommender  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import Query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
NDCG_FLOOR = 0.95  # the target: serendipity >= 1.5 x EASE at NDCG@10 >= 0.95 x EASE
SER_TARGET = 1.5
COLUMNS = ["ndcg", "serendipity", "tail_share", "novelty", "unexpectedness", "coverage"]
_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------- measuring
def fit(train: Dataset, name: str, params: dict[str, Any]) -> tuple[Recommender, float]:
    t0 = time.perf_counter()
    rec = Recommender.fit(train, FitConfig(models={name: params}), progress=False)
    return rec, time.perf_counter() - t0


def preset(member: str, lam: float = 0.0, pool: int = 200) -> Preset:
    """The member alone; with ``lam`` > 0 re-ranked by serendipity at that trade-off."""
    rerank = [{"name": "serendipity", "strength": lam}] if lam > 0 else []
    return Preset(name=f"{member}-serendipity", blend={member: 1.0}, candidates=pool,
                  discovery=1.0, rerank=rerank)


def measure(rec: Recommender, p: Preset, split: Split, truth: dict[int, np.ndarray]
            ) -> tuple[dict[str, float], np.ndarray]:
    """Every metric of ``compute_metrics`` on the split's held-out users, and the lists."""
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    lists = rec.pipeline(p).recommend_many(queries, K, None, candidates=split.cold_items)
    recs = np.full((len(users), K), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    return compute_metrics(recs, users, truth, split.train, K), recs


def per_user(recs: np.ndarray, split: Split, truth: dict[int, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@K and Ge serendipity@K (the values ``compute_metrics`` averages)."""
    prim = primitive_list(split.train.item_popularity, 50)
    nd, se = [], []
    for row, rel in zip(recs, truth.values(), strict=True):
        top = row[row >= 0]
        nd.append(ndcg(top, rel, K))
        se.append(serendipity_ge(top, rel, prim, K))
    return np.array(nd), np.array(se)


def ratio_interval(a: np.ndarray, b: np.ndarray, draws: int = 1000, seed: int = 0
                   ) -> tuple[float, float]:
    """95% paired-bootstrap interval (over users) of mean(a) / mean(b)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    den = b[idx].mean(axis=1)
    r = np.where(den > 0, a[idx].mean(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    lo, hi = np.nanpercentile(r, [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- frontier
def upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of (ndcg, serendipity) points, by increasing NDCG."""
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()  # hull[-1] lies on or below the segment hull[-2] -> p
            else:
                break
        hull.append(p)
    return hull


def frontier_at(hull: list[tuple[float, float]], x: float) -> float:
    """The most serendipity a mixture of hull lists reaches at NDCG >= x (-inf: none)."""
    xs = np.array([h[0] for h in hull])
    ys = np.array([h[1] for h in hull])
    if x > xs[-1]:
        return -math.inf
    best = float(ys[xs >= x].max()) if (xs >= x).any() else -math.inf
    if x >= xs[0]:
        best = max(best, float(np.interp(x, xs, ys)))
    else:
        best = max(best, float(ys.max()))
    return best


# --------------------------------------------------------------------------- one split
class Stage:
    """Every system on one split (validation or test), its rows and its lists."""

    def __init__(self, name: str, split: Split) -> None:
        self.name, self.split = name, split
        self.truth = truth_of(split)
        self.rows: list[dict[str, Any]] = []
        self.lists: dict[str, np.ndarray] = {}

    def add(self, family: str, system: str, rec: Recommender, p: Preset,
            extra: dict[str, Any]) -> dict[str, Any]:
        m, recs = measure(rec, p, self.split, self.truth)
        row = {"stage": self.name, "family": family, "system": system, **extra,
               **{c: m[c] for c in COLUMNS}}
        self.rows.append(row)
        self.lists[system] = recs
        say(f"  {self.name}: {system}: NDCG@10 {m['ndcg']:.4f}, serendipity "
            f"{m['serendipity']:.4f}, tail share {m['tail_share']:.3f}, novelty "
            f"{m['novelty']:.2f}")
        return row

    def rerank_sweep(self, family: str, label: str, rec: Recommender, member: str,
                     lams: list[float], pools: list[int], extra: dict[str, Any]) -> None:
        for pool in pools:
            for lam in lams:
                self.add(family, f"{label} + re-rank {lam:g} (pool {pool})", rec,
                         preset(member, lam, pool), {**extra, "rerank": lam, "pool": pool})


def run_stage(stage: Stage, args: argparse.Namespace, l2: float
              ) -> tuple[dict[str, float], dict[str, Recommender]]:
    """(a)-(d) on one split: fit seconds per model and the fitted two-tower models."""
    train = stage.split.train
    secs: dict[str, float] = {}
    rec, secs["EASE"] = fit(train, "ease", {"l2": l2})
    say(f"{stage.name}: EASE (l2 {l2:g}) fit {secs['EASE']:.1f}s")
    base = {"surprise": math.nan, "share": math.nan, "rerank": 0.0, "pool": K}
    stage.add("EASE", "EASE", rec, preset("ease"), base)
    stage.rerank_sweep("EASE + re-rank", "EASE", rec, "ease", args.rerank, args.pools, base)
    tt = {"epochs": args.epochs, "seed": args.seed}
    models = {"surprise 0": {**tt}}
    for s, share in args.points:
        models[f"surprise {s:g}, popularity share {share:g}"] = {
            **tt, "surprise": s, "surprise_popularity": share}
    fitted: dict[str, Recommender] = {}
    for label, params in models.items():
        say(f"{stage.name}: two-tower {label}: fitting ({args.epochs} epochs)")
        r, secs[f"two-tower {label}"] = fit(train, "two_tower", params)
        say(f"{stage.name}: two-tower {label}: fit {secs[f'two-tower {label}']:.1f}s")
        fitted[label] = r
        extra = {"surprise": params.get("surprise", 0.0),
                 "share": params.get("surprise_popularity", 0.0), "rerank": 0.0, "pool": K}
        plain = label == "surprise 0"
        stage.add("two-tower" if plain else "two-tower surprise", f"two-tower {label}", r,
                  preset("two_tower"), extra)
        if plain:
            stage.rerank_sweep("two-tower + re-rank", "two-tower surprise 0", r, "two_tower",
                               args.rerank, args.pools, extra)
        both = Recommender(rec.data, {"ease": rec.scorers["ease"],
                                      "two_tower": r.scorers["two_tower"]},
                           FitConfig(models={"ease": {"l2": l2}, "two_tower": params}),
                           negatives=rec.negatives, negative_below=rec.negative_below)
        for wt in args.blend:
            stage.add("EASE + two-tower" if plain else "EASE + surprise two-tower",
                      f"EASE + {wt:g} × two-tower {label}", both,
                      Preset(name="blend", blend={"ease": 1.0, "two_tower": wt}, discovery=0.0),
                      {**extra, "blend": wt})
    return secs, fitted


def surprise_rerank(stage: Stage, args: argparse.Namespace, fitted: dict[str, Recommender],
                    chosen: dict[str, Any]) -> None:
    """(e): the chosen surprise-trained model, re-ranked."""
    label = chosen["label"]
    stage.rerank_sweep("surprise + re-rank", f"two-tower {label}", fitted[label], "two_tower",
                       args.rerank, args.pools,
                       {"surprise": chosen["surprise"], "share": chosen["share"]})


def pick(rows: list[dict[str, Any]], families: tuple[str, ...], floor: float
         ) -> dict[str, Any] | None:
    """The row of ``families`` with the most serendipity among those with NDCG >= floor."""
    ok = [r for r in rows if r["family"] in families and r["ndcg"] >= floor]
    return max(ok, key=lambda r: (r["serendipity"], r["ndcg"])) if ok else None


def tune_ease(val: Split, grid: list[float]) -> float:
    stage = Stage("validation", val)
    best, best_nd = grid[0], -1.0
    for l2 in grid:
        rec, s = fit(val.train, "ease", {"l2": l2})
        m, _ = measure(rec, preset("ease"), val, stage.truth)
        say(f"validation: EASE l2 {l2:g}: NDCG@10 {m['ndcg']:.4f} (fit {s:.1f}s)")
        if m["ndcg"] > best_nd:
            best, best_nd = l2, m["ndcg"]
    return best


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a small run: 2 epochs, one strength, a short re-ranking grid")
    ap.add_argument("--points", default="3:0,2:0.5,6:0.5",
                    help="surprise-trained models as surprise:surprise_popularity pairs")
    ap.add_argument("--blend", default="0.25,0.5,1,2",
                    help="two-tower weights in the blend with EASE (weight 1)")
    ap.add_argument("--rerank", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                    help="serendipity re-ranker strengths (discovery 1)")
    ap.add_argument("--pools", default="50,200", help="candidate pools the re-ranker sees")
    ap.add_argument("--ease-l2", default="50,100,200,500,1000,2000")
    ap.add_argument("--epochs", type=int, default=20, help="two-tower epochs (its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training (the machine may be shared)")
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.blend = "6:0.5", "0.25,1"
        args.rerank, args.pools, args.ease_l2, args.epochs = "0.3,0.6,1", "200", "200,500", 2
    command = " ".join(["python bench/surprise.py", *(shlex.quote(a) for a in
                                                      (argv if argv is not None else sys.argv[1:]))])
    args.points = [(float(a), float(b)) for a, b in
                   (pt.split(":") for pt in args.points.split(",") if pt.strip())]
    args.blend = floats(args.blend)
    args.rerank = floats(args.rerank)
    args.pools = [int(p) for p in floats(args.pools)]
    import torch

    torch.set_num_threads(args.threads)

    say("loading MovieLens-100K and encoding (cached after the first run)")
    data = load_dataset("movielens")
    t0 = time.perf_counter()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    encode_seconds = time.perf_counter() - t0
    if data.time_quality.ordered:
        split = time_split(data, cut=0.8)
        val = validation_split(split.train, "time", cut=0.8)
        protocol = "time cut at the 0.8 quantile; validation: the same cut inside training"
    else:  # pragma: no cover - MovieLens has time
        split = random_split(data, test_ratio=0.2, seed=42)
        val = validation_split(split.train, "random")
        protocol = "per-user random 80/20; validation: the same inside training"
    say(f"{data!r}; test users {len(truth_of(split))}, validation users {len(truth_of(val))}")

    # ---- validation: every choice is made here
    l2 = tune_ease(val, floats(args.ease_l2))
    say(f"validation: EASE l2 chosen: {l2:g}")
    vstage = Stage("validation", val)
    vsecs, vfitted = run_stage(vstage, args, l2)
    v_ease = next(r for r in vstage.rows if r["system"] == "EASE")
    floor = NDCG_FLOOR * v_ease["ndcg"]
    picks = {
        "EASE + re-rank": pick(vstage.rows, ("EASE", "EASE + re-rank"), floor),
        "two-tower + re-rank": pick(vstage.rows, ("two-tower", "two-tower + re-rank"), floor),
        "two-tower surprise": pick(vstage.rows, ("two-tower", "two-tower surprise"), floor),
        "EASE + two-tower": pick(vstage.rows, ("EASE", "EASE + two-tower"), floor),
        "EASE + surprise two-tower": pick(
            vstage.rows, ("EASE", "EASE + surprise two-tower"), floor),
    }
    # (e) re-ranks the surprise-trained model chosen above (the most accurate one when none
    # passes the floor); its strength and pool are then chosen on validation too
    trained = [r for r in vstage.rows if r["family"] == "two-tower surprise"]
    tt_pick = picks["two-tower surprise"]
    src = (tt_pick if tt_pick is not None and tt_pick["family"] == "two-tower surprise"
           else max(trained, key=lambda r: r["ndcg"]))
    chosen = {"label": src["system"][len("two-tower "):], "surprise": src["surprise"],
              "share": src["share"]}
    surprise_rerank(vstage, args, vfitted, chosen)
    picks["surprise + re-rank"] = pick(
        [r for r in vstage.rows if r["system"] == src["system"]
         or r["family"] == "surprise + re-rank"], ("two-tower surprise", "surprise + re-rank"),
        floor)
    for fam, r in picks.items():
        say(f"validation pick, {fam}: {r['system'] if r else 'none passes the NDCG floor'}")

    # ---- test: measured once
    tstage = Stage("test", split)
    tsecs, tfitted = run_stage(tstage, args, l2)
    surprise_rerank(tstage, args, tfitted, chosen)
    t_ease = next(r for r in tstage.rows if r["system"] == "EASE")
    for r in tstage.rows:
        r["ndcg_ratio"] = r["ndcg"] / t_ease["ndcg"]
        r["serendipity_ratio"] = (r["serendipity"] / t_ease["serendipity"]
                                  if t_ease["serendipity"] > 0 else math.nan)
    rerank_fams = ("EASE", "EASE + re-rank", "two-tower", "two-tower + re-rank",
                   "EASE + two-tower")
    hull = upper_hull([(r["ndcg"], r["serendipity"]) for r in tstage.rows
                       if r["family"] in rerank_fams])
    for r in tstage.rows:
        r["beyond_rerank_frontier"] = (r["family"] not in rerank_fams
                                       and r["serendipity"] > frontier_at(hull, r["ndcg"]))
        r["meets_target"] = (r["ndcg_ratio"] >= NDCG_FLOOR
                             and r["serendipity_ratio"] >= SER_TARGET)
    by_system = {r["system"]: r for r in tstage.rows}
    base_nd, base_se = per_user(tstage.lists["EASE"], split, tstage.truth)
    for r in tstage.rows:
        nd, se = per_user(tstage.lists[r["system"]], split, tstage.truth)
        r["ndcg_ratio_95ci"] = "{:.3f}–{:.3f}".format(*ratio_interval(nd, base_nd))
        r["serendipity_ratio_95ci"] = "{:.3f}–{:.3f}".format(*ratio_interval(se, base_se))

    # ---- verdicts
    lines = verdicts(tstage.rows, picks, by_system)
    for line in lines:
        print(line)
    write(args, command, protocol, data, l2, vstage, tstage, picks, lines, vsecs, tsecs, hull,
          encode_seconds)
    return 0


def verdicts(rows: list[dict[str, Any]], picks: dict[str, dict[str, Any] | None],
             by_system: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for fam, r in picks.items():
        if r is None:
            out.append(f"- {fam}: no validation point reached NDCG@10 ≥ {NDCG_FLOOR} × EASE.")
            continue
        t = by_system[r["system"]]
        out.append(
            f"- {fam}, validation-chosen `{r['system']}`: test NDCG ratio "
            f"{t['ndcg_ratio']:.3f} ({t['ndcg_ratio_95ci']}), serendipity ratio "
            f"{t['serendipity_ratio']:.3f} ({t['serendipity_ratio_95ci']}); target "
            f"(serendipity ≥ {SER_TARGET} × EASE at NDCG ≥ {NDCG_FLOOR} × EASE) "
            f"{'met' if t['meets_target'] else 'not met'}"
            + ("" if fam in ("EASE + re-rank", "two-tower + re-rank", "EASE + two-tower") else
               f"; beyond the re-ranking frontier: {'yes' if t['beyond_rerank_frontier'] else 'no'}")
            + ".")
    trained = [r for r in rows if r["family"] in ("two-tower surprise", "surprise + re-rank",
                                                   "EASE + surprise two-tower")]
    beyond = [r["system"] for r in trained if r["beyond_rerank_frontier"]]
    out.append("- Trained points (any strength, test) beyond the interpolated re-ranking "
               f"frontier: {', '.join(beyond) if beyond else 'none'}.")
    meet = [r["system"] for r in rows if r["meets_target"]]
    out.append("- Test points meeting the target (for information; choosing among them would "
               f"use the test part): {', '.join(meet) if meet else 'none'}.")
    hit = [r["system"] for r in rows if r["meets_target"] and r["beyond_rerank_frontier"]]
    out.append("- Issue target (a trained point with serendipity ≥ 1.5 × EASE at NDCG@10 ≥ "
               "0.95 × EASE that re-ranking alone does not reach): "
               + (f"met on test by {', '.join(hit)}" if hit else "not met") + ".")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def write(args: argparse.Namespace, command: str, protocol: str, data: Dataset, l2: float,
          vstage: Stage, tstage: Stage,
          picks: dict[str, dict[str, Any] | None], lines: list[str],
          vsecs: dict[str, float], tsecs: dict[str, float],
          hull: list[tuple[float, float]], encode_seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "surprise-movielens" + ("-quick" if args.quick else "")
    md, js, png = (RESULTS / f"{stem}.{ext}" for ext in ("md", "json", "png"))
    plot(tstage.rows, hull, png)
    test_cols = ["system", "ndcg", "serendipity", "ndcg_ratio", "ndcg_ratio_95ci",
                 "serendipity_ratio", "serendipity_ratio_95ci", "tail_share", "novelty",
                 "unexpectedness", "coverage", "beyond_rerank_frontier", "meets_target"]
    text = [
        "# Training for surprise against re-ranking for it (MovieLens-100K)",
        "",
        f"Written by `{command}` in one run; do not edit by hand. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work while it ran: "
        f"the seconds below are upper bounds), Python {platform.python_version()}, "
        f"{args.threads} torch thread(s).",
        f"Data: {data.n_users:,} users, {data.n_items:,} items, {len(data.interactions):,} "
        f"events. Protocol: {protocol}; {len(tstage.truth)} test users, "
        f"{len(vstage.truth)} validation users. Lists of K = {K} over every item the user "
        "has not used; every figure from `serendip.eval.metrics.compute_metrics` "
        "(serendipity = Ge et al. 2010 with the 50 most popular items as the primitive list).",
        f"EASE's L2 penalty chosen on validation NDCG@10: {l2:g} (grid {args.ease_l2}). "
        f"Two-tower: {args.epochs} epochs, seed {args.seed}, other settings its defaults; "
        "surprise-trained models (surprise, surprise_popularity): "
        f"{', '.join(f'({a:g}, {b:g})' for a, b in args.points)}. Re-ranker strengths "
        f"{args.rerank} (discovery 1) on candidate pools {args.pools}; blends: EASE 1 + "
        f"two-tower {args.blend} (per-user z-scores).",
        f"Operating points chosen on validation: the most serendipity with NDCG@10 ≥ "
        f"{NDCG_FLOOR} × validation EASE. Ratios are against EASE on test; intervals are 95% "
        "paired-bootstrap (1,000 resamples of the test users).",
        "",
        "## Verdict",
        "",
        *lines,
        "",
        f"![frontier]({png.name})",
        "",
        "## Test",
        "",
        *table(tstage.rows, test_cols),
        "",
        "`beyond_rerank_frontier`: a trained point (surprise term) with more serendipity than "
        "any random mixture of lists made without it (EASE or the plain two-tower, re-ranked "
        "at any strength and pool, or blended) reaching at least its NDCG@10.",
        "",
        "## Validation (where every choice was made)",
        "",
        *table(vstage.rows, ["system", "ndcg", "serendipity", "tail_share", "novelty"]),
        "",
        "## Fit seconds (upper bounds: shared machine)",
        "",
        "| model | validation fit | test fit |",
        "|---|---|---|",
        *[f"| {k} | {vsecs.get(k, math.nan):.1f} | {tsecs.get(k, math.nan):.1f} |"
          for k in tsecs],
        "",
        f"Encoding the catalog: {encode_seconds:.1f}s (cached after the first run).",
        "",
    ]
    md.write_text("\n".join(text))
    js.write_text(json.dumps({
        "command": command, "ease_l2": l2, "k": K,
        "picks": {k: (v["system"] if v else None) for k, v in picks.items()},
        "verdict": lines, "fit_seconds": {"validation": vsecs, "test": tsecs},
        "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in r.items()} for r in vstage.rows + tstage.rows],
    }, indent=2, ensure_ascii=False))
    say(f"wrote {md.relative_to(RESULTS.parent.parent)}, {js.name}, {png.name}")


def plot(rows: list[dict[str, Any]], hull: list[tuple[float, float]], png: Path) -> None:
    ease = next(r for r in rows if r["system"] == "EASE")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"EASE + re-rank": ("tab:blue", "o"), "two-tower + re-rank": ("tab:orange", "s"),
              "two-tower surprise": ("tab:red", "^"), "surprise + re-rank": ("tab:purple", "v"),
              "EASE + two-tower": ("tab:olive", "D"),
              "EASE + surprise two-tower": ("tab:pink", "P")}
    for fam, (color, marker) in styles.items():
        pts = sorted((r["ndcg"], r["serendipity"]) for r in rows if r["family"] == fam)
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], color=color, marker=marker,
                       s=22, label=fam, alpha=0.8)
    for fam, color in (("EASE", "tab:blue"), ("two-tower", "tab:orange")):
        r = next(r for r in rows if r["family"] == fam)
        ax.scatter([r["ndcg"]], [r["serendipity"]], color=color, marker="*", s=160,
                   edgecolor="black", label=f"{fam} (no re-ranking)")
    hx, hy = zip(*hull, strict=True)
    ax.plot(hx, hy, color="grey", linestyle="--",
            label="frontier without the surprise term (hull)")
    ax.axvline(NDCG_FLOOR * ease["ndcg"], color="green", linestyle=":", linewidth=1)
    ax.axhline(SER_TARGET * ease["serendipity"], color="green", linestyle=":", linewidth=1,
               label=f"target: ≥{SER_TARGET}× serendipity at ≥{NDCG_FLOOR}× NDCG")
    ax.set_xlabel("NDCG@10 (test)")
    ax.set_ylabel("Ge serendipity@10 (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("MovieLens-100K, time cut: accuracy vs serendipity")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
