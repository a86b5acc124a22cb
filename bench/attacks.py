"""Shilling attacks on the shipped presets, with and without the fit-time profile defence.

    python bench/attacks.py [--dataset movielens|goodbooks|lastfm] [--users 500]
                            [--targets 5] [--sizes 0.01,0.03,0.05] [--seed 0]
                            [--protocol random|time]

On a per-user random 80/20 split (``--protocol time``: the time cut, where the data has
time), fake profiles are added to the training part, each attack pushing one target item:

- ``random``: filler items drawn uniformly from the catalog, rated around the global mean;
- ``average``: filler items drawn uniformly, each rated around its own mean rating;
- ``bandwagon``: half the filler from the most popular items (rated at the top of the scale),
  half drawn uniformly, rated around the global mean.

Every fake profile holds the target (rated at the top of the scale) and as many filler items
as the median genuine profile; its timestamps copy the timing of a random genuine user, so
no attack is a burst of events.  Data without ratings gets the same profiles unrated; where
the ratings are counts (Last.fm plays) rather than a star scale, fake values are drawn from
the observed ones (the item's own for ``average``) and the target and bandwagon items get
the 90th percentile.
Attack sizes are shares of the genuine users (1 %, 3 %, 5 % by default); targets are drawn
(fixed seed) from the long tail (items outside the 20 % most popular, with at least 2
training interactions); figures are averaged over targets.

For each preset (accurate, balanced, discovery), on a fixed sample of genuine users who have
not interacted with the target: the **hit ratio** (share of those users whose top-10 holds
the target) and the **rank shift** (mean over users of the target's rank among unseen items
by the preset's blend score before the attack minus after: positive = pushed up).  Each
attack is measured with the plain fit and with ``serendip.robust.ProfileDefense`` (scorers
trained without the flagged profiles; every user keeps their own history for their lists),
with the detector's precision and recall on the injected profiles.  On the clean training
part the defence's cost is NDCG@10 on the test part with and without it, and its false
positives among genuine users.

Writes ``bench/results/attacks-<dataset>.md`` (+ ``.png``, ``.csv``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serendip.data import Dataset, load_dataset, make_split, random_split  # noqa: E402
from serendip.eval.metrics import compute_metrics, head_by_item_share  # noqa: E402
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.pipeline import (  # noqa: E402
    SUBSTITUTES,
    FitConfig,
    Recommender,
    default_cache_dir,
    load_preset,
    star_scale_midpoint,
)
from serendip.robust import DefenseResult, ProfileDefense  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import Query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("accurate", "balanced", "discovery")
ATTACKS = ("random", "average", "bandwagon")
K = 10
_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def encode(data: Dataset) -> Dataset:
    """Item vectors through the on-disk embedding cache (as ``serendip fit`` does)."""
    enc = Encoder(EncoderConfig(cache_dir=default_cache_dir()))
    return data.with_item_vectors(enc.encode_items(data, progress=False))


def split_for(data: Dataset, protocol: str) -> tuple[str, Any]:
    """``random``: per-user 80/20 (seed 42), every user tested; ``time``: the 0.8 time cut
    (the data set's own protocol where it has time; random otherwise)."""
    if protocol == "time" and data.time_quality.ordered:
        return "time", make_split(data, "time", cut=0.8)
    return "random", random_split(data, test_ratio=0.2, seed=42)


# --------------------------------------------------------------------------- attacks
@dataclass(frozen=True)
class Stats:
    """What an attacker knows of the data (public aggregates)."""

    n_items: int
    profile_size: int
    popular: np.ndarray  # item indices, most popular first
    rating_scale: tuple[float, float] | None  # a star scale; None for counts or no ratings
    ratings: np.ndarray | None  # every rating (counts: sampled for fake profiles)
    item_ratings: dict[int, np.ndarray]  # each item's ratings (counts)
    global_mean: float
    global_sd: float
    item_mean: np.ndarray
    item_sd: np.ndarray
    times: list[np.ndarray]  # each genuine user's timestamps, sorted


def data_stats(data: Dataset) -> Stats:
    inter = data.interactions
    act = data.user_activity
    pop = data.item_popularity
    order = np.lexsort((np.arange(pop.size), -pop))
    ratings = "rating" in inter.columns
    item_mean = np.zeros(data.n_items)
    item_sd = np.zeros(data.n_items)
    scale = None
    gm = gs = 0.0
    all_r = None
    per_item: dict[int, np.ndarray] = {}
    if ratings and star_scale_midpoint(inter["rating"].to_numpy(np.float64)) is None:
        # counts (plays...): fakes draw from the observed values, not a scale
        all_r = inter["rating"].to_numpy(np.float64)
        per_item = {int(i): g.to_numpy(np.float64) for i, g in inter.groupby("item")["rating"]}
        ratings = False
    if ratings:
        r = inter["rating"].to_numpy(np.float64)
        scale = (float(r.min()), float(r.max()))
        gm, gs = float(r.mean()), float(r.std())
        g = inter.groupby("item")["rating"]
        m, s = g.mean(), g.std().fillna(gs)
        item_mean[:] = gm
        item_sd[:] = gs
        item_mean[m.index.to_numpy()] = m.to_numpy()
        item_sd[s.index.to_numpy()] = s.to_numpy()
    times = [data.history_times(u) for u in range(data.n_users) if act[u] > 0]
    return Stats(data.n_items, max(int(np.median(act[act > 0])), 2), order, scale, all_r,
                 per_item, gm, gs, item_mean, item_sd, times)


def _round_ratings(v: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return np.clip(np.round(v), scale[0], scale[1])


def fake_profiles(kind: str, n_fake: int, target: int, st: Stats, rng: np.random.Generator
                  ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """``n_fake`` profiles (items, ratings or None, timestamps) pushing ``target``."""
    out = []
    f = st.profile_size - 1  # filler items; the target makes the profile genuine-sized
    others = np.setdiff1d(np.arange(st.n_items), [target])
    head = st.popular[st.popular != target][: max(2 * f, 20)]
    for _ in range(n_fake):
        if kind == "bandwagon":
            sel = rng.choice(head, size=min(f // 2, head.size), replace=False)
            rest = np.setdiff1d(others, sel)
            fill = rng.choice(rest, size=f - sel.size, replace=False)
            items = np.concatenate([sel, fill])
        else:
            sel = np.zeros(0, dtype=np.int64)
            items = rng.choice(others, size=f, replace=False)
        ratings = None
        if st.ratings is not None:  # counts: observed values; the target a high one
            if kind == "average":
                r = np.array([rng.choice(st.item_ratings.get(int(i), st.ratings))
                              for i in items])
            else:
                r = rng.choice(st.ratings, size=items.size)
            r[: sel.size] = np.quantile(st.ratings, 0.9)
            ratings = np.concatenate([r, [np.quantile(st.ratings, 0.9)]])
        elif st.rating_scale is not None:
            lo, hi = st.rating_scale
            if kind == "average":
                r = rng.normal(st.item_mean[items], np.maximum(st.item_sd[items], 1e-6))
            else:
                r = rng.normal(st.global_mean, st.global_sd, size=items.size)
            r = _round_ratings(r, st.rating_scale)
            r[: sel.size] = hi
            ratings = np.concatenate([r, [hi]])
        items = np.concatenate([items, [target]])
        # timing of a genuine user (resampled to the profile's length)
        t = st.times[int(rng.integers(len(st.times)))]
        ts = np.sort(rng.choice(t, size=items.size, replace=t.size < items.size))
        perm = rng.permutation(items.size)  # the target anywhere in the sequence
        out.append((items[perm], None if ratings is None else ratings[perm], ts))
    return out


def inject(data: Dataset, profiles: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
           tag: str) -> Dataset:
    """``data`` with the fake profiles appended as new users (ids ``fake-<tag>-<n>``)."""
    n0 = data.n_users
    rows = []
    for n, (items, ratings, ts) in enumerate(profiles):
        df = pd.DataFrame({"user": n0 + n, "item": items.astype(np.int64),
                           "timestamp": ts.astype(np.float64)})
        if "rating" in data.interactions.columns:
            df["rating"] = ratings if ratings is not None else 1.0
        rows.append(df)
    inter = pd.concat([data.interactions, *rows], ignore_index=True)
    users = np.concatenate([data.user_ids,
                            np.array([f"fake-{tag}-{n}" for n in range(len(profiles))],
                                     dtype=object)])
    return Dataset(users, data.item_ids, data.items, inter, data.category_column,
                   data.item_vectors, has_time=data.has_time)


# --------------------------------------------------------------------------- measuring
def preset_models(data: Dataset) -> dict[str, dict[str, Any]]:
    """The default models the three presets blend (or substitute for) on this data."""
    default = FitConfig.default_for(data.n_items, bool(data.time_quality.ordered)).models
    needed: set[str] = set()
    for p in PRESETS:
        for name in load_preset(p).blend:
            if name in default:
                needed.add(name)
            else:  # the first substitute the default fit has (as pipelines choose)
                needed.update([s for s in SUBSTITUTES.get(name, ()) if s in default][:1])
    return {k: v for k, v in default.items() if k in needed}


def fit(data: Dataset, models: dict[str, dict[str, Any]]) -> Recommender:
    return Recommender.fit(data, FitConfig(models=models), progress=False)


def defend(rec: Recommender, raw: Dataset, models: dict[str, dict[str, Any]],
           defense: ProfileDefense) -> tuple[Recommender, DefenseResult]:
    """``rec`` (fitted on ``raw``) with its scorers retrained without the profiles the defence
    flags on ``raw``; every user keeps their history (and negatives) for their own lists."""
    result = defense.detect(raw)
    if not result.suspicious.any():
        return rec, result
    trained = fit(defense.apply(rec.data, result), models)
    return Recommender(rec.data, trained.scorers, rec.config, negatives=rec.negatives,
                       negative_below=rec.negative_below), result


def target_stats(rec: Recommender, users: np.ndarray, targets: np.ndarray
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Per preset: ``hit`` (users x targets bool) and ``rank`` (users x targets, NaN where the
    user already has the target).

    A list can only hold items among the preset's candidates (the blend's best
    ``candidates`` items the user may be shown), so lists are built only for users whose
    target ranks within them; for the others the target is not in the list by construction.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    has = np.zeros((len(users), len(targets)), dtype=bool)
    for r, q in enumerate(queries):
        has[r] = np.isin(targets, q.history)
    for p in PRESETS:
        pipe = rec.pipeline(p)
        d = pipe.preset.internal_discovery(pipe.preset.discovery)
        scores = pipe.hybrid.score_many([Query(q.user, q.history, discovery=d) for q in queries])
        rank = np.full((len(users), len(targets)), np.nan)
        for r, q in enumerate(queries):
            row = scores[r].copy()
            row[q.history] = -np.inf
            row[rec.negative_items(q.user)] = -np.inf
            for c, t in enumerate(targets):
                if not has[r, c]:
                    rank[r, c] = 1 + np.sum(row > row[t])
        pool = max(pipe.preset.candidates, K)
        near = np.flatnonzero((np.nan_to_num(rank, nan=np.inf) <= pool).any(axis=1))
        hit = np.zeros((len(users), len(targets)), dtype=bool)
        if near.size:
            lists = pipe.recommend_many([queries[i] for i in near], K)
            hit[near] = np.array([np.isin(targets, lst.items) for lst in lists])
        out[p] = {"hit": hit & ~has, "rank": rank}
    return out


def ndcg_rows(rec: Recommender, split: Any, truth: dict[int, np.ndarray]) -> dict[str, float]:
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    out = {}
    for p in PRESETS:
        lists = rec.pipeline(p).recommend_many(queries, K)
        recs = np.full((len(users), K), -1, dtype=np.int64)
        for r, lst in enumerate(lists):
            recs[r, : len(lst)] = lst.items
        out[p] = compute_metrics(recs, users, truth, split.train, K)["ndcg"]
    return out


def pick_targets(train: Dataset, n: int, rng: np.random.Generator) -> np.ndarray:
    pop = train.item_popularity
    tail = ~head_by_item_share(pop, 0.2)
    pool = np.flatnonzero(tail & (pop >= 2))
    return np.sort(rng.choice(pool, size=min(n, pool.size), replace=False))


# --------------------------------------------------------------------------- report
def _fmt(v: float, digits: int = 3) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}f}"


def write_report(name: str, args: argparse.Namespace, info: dict[str, Any],
                 df: pd.DataFrame, det: pd.DataFrame, clean: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / f"attacks-{name}.md"
    png = RESULTS / f"attacks-{name}.png"
    df.to_csv(RESULTS / f"attacks-{name}.csv", index=False)
    lines = [
        f"# Shilling attacks on {name}",
        "",
        f"Made by `{info['command']}` in {info['seconds']:.0f} s "
        f"(written by bench/attacks.py; see docs/robustness.md).",
        "",
        f"- data: {info['data']}; {info['protocol']} split, attacks injected into the "
        f"training part ({info['n_train_users']} genuine users)",
        f"- fake profile size {info['profile_size']} (median genuine profile: filler + target); "
        f"timestamps copy a random genuine user's timing",
        f"- targets ({len(info['targets'])}, tail items, seed {args.seed}): "
        + ", ".join(f"{t} ({info['target_pop'][i]:.0f} training users)"
                    for i, t in enumerate(info["target_titles"])),
        f"- measured on {info['n_eval']} genuine users sampled from the training users "
        f"(seed {args.seed}); per target, users who already have it are left out",
        "- hit ratio: share of those users whose top-10 holds the target; rank shift: mean "
        "rank (among unseen items, by the preset's blend score) before minus after the "
        "attack (positive: pushed up); figures are means over targets",
        "- defence: `ProfileDefense()` defaults; scorers trained without flagged profiles",
        "",
        "## Target exposure",
        "",
        "Before any attack (mean over targets): "
        + ", ".join(f"{p} hit ratio {_fmt(clean['hit_before'][p], 4)}, mean rank "
                    f"{_fmt(clean['rank_before'][p], 0)}" for p in PRESETS) + ".",
        "",
        "| attack | size | preset | hit ratio | hit ratio, defended | rank shift | "
        "rank shift, defended |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        lines.append(
            f"| {r.attack} | {r['size']:.0%} | {r.preset} | {_fmt(r.hit)} | "
            f"{_fmt(r.hit_defended)} | {_fmt(r.rank_shift, 1)} | "
            f"{_fmt(r.rank_shift_defended, 1)} |")
    lines += [
        "",
        "## Detector on the attacked training data",
        "",
        "Precision and recall of the flagged users against the injected profiles, and the "
        "share of genuine users flagged (means over targets).",
        "",
        "| attack | size | fakes per target | precision | recall | genuine flagged |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in det.iterrows():
        lines.append(f"| {r.attack} | {r['size']:.0%} | {r.n_fake:.0f} | {_fmt(r.precision)} "
                     f"| {_fmt(r.recall)} | {_fmt(r.genuine_flagged, 4)} |")
    lines += [
        "",
        "## Cost on clean data",
        "",
        f"The defence run on the clean training part flags {clean['flagged']} of "
        f"{clean['n_users']} genuine users ({clean['flagged'] / max(clean['n_users'], 1):.2%}). "
        f"NDCG@10 on the test part ({clean['n_test']} users):",
        "",
        "| preset | NDCG@10 | NDCG@10, defended | ratio |",
        "|---|---|---|---|",
    ]
    for p in PRESETS:
        a, b = clean["ndcg"][p], clean["ndcg_defended"][p]
        lines.append(f"| {p} | {a:.4f} | {b:.4f} | {b / a if a > 0 else float('nan'):.3f} |")
    lines += ["", f"![hit ratio and rank shift by attack size]({png.name})", ""]
    md.write_text("\n".join(lines))

    fig, axes = plt.subplots(2, len(ATTACKS), figsize=(4.2 * len(ATTACKS), 6.6),
                             sharey="row", squeeze=False)
    colors = {"accurate": "tab:blue", "balanced": "tab:orange", "discovery": "tab:green"}
    for col, attack in enumerate(ATTACKS):
        sub = df[df.attack == attack]
        for p in PRESETS:
            s = sub[sub.preset == p].sort_values("size")
            x = np.concatenate([[0.0], s["size"].to_numpy() * 100])
            base = clean["hit_before"][p]
            for row, (col_a, col_d, start) in enumerate(
                    (("hit", "hit_defended", base), ("rank_shift", "rank_shift_defended", 0.0))):
                ax = axes[row, col]
                ax.plot(x, np.concatenate([[start], s[col_a].to_numpy()]), "-o",
                        color=colors[p], label=p)
                ax.plot(x, np.concatenate([[start], s[col_d].to_numpy()]), "--x",
                        color=colors[p], alpha=0.7, label=f"{p}, defended")
        axes[0, col].set_title(f"{attack} attack")
        axes[1, col].set_xlabel("fake profiles (% of users)")
        for row in range(2):
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel("target hit ratio in top-10")
    axes[1, 0].set_ylabel("target rank shift (up)")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"{name}: pushed target in genuine users' lists")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return md


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens", choices=("movielens", "goodbooks", "lastfm"))
    ap.add_argument("--users", type=int, default=500, help="genuine users measured")
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--sizes", default="0.01,0.03,0.05")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol", default="random", choices=("random", "time"),
                    help="split: per-user random 80/20 (every user is tested; the default) "
                         "or the time cut (data with time only)")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    attacks = [a for a in args.attacks.split(",") if a]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad:
        ap.error(f"unknown attack(s) {bad}; valid: {', '.join(ATTACKS)}")
    command = " ".join(["python bench/attacks.py", *(shlex.quote(a) for a in sys.argv[1:])])
    name = args.dataset
    rng = np.random.default_rng(args.seed)

    say(f"== {name}: loading and encoding")
    data = encode(load_dataset(name))
    protocol, split = split_for(data, args.protocol)
    train = split.train
    models = preset_models(train)
    st = data_stats(train)
    active = np.flatnonzero(train.user_activity > 0)
    n_genuine = active.size
    eval_users = np.sort(rng.choice(active, size=min(args.users, active.size), replace=False))
    targets = pick_targets(train, args.targets, rng)
    say(f"{name}: {train!r}, {protocol} split; models {sorted(models)}; profile size "
        f"{st.profile_size}; targets {targets.tolist()}; {len(eval_users)} users measured")
    defense = ProfileDefense()

    # clean: exposure before the attack, accuracy with and without the defence
    say("clean fit (with and without the defence)")
    rec0 = fit(train, models)
    rec0d, res0 = defend(rec0, train, models, defense)
    before = target_stats(rec0, eval_users, targets)
    truth = truth_of(split)
    clean = {
        "hit_before": {p: float(before[p]["hit"].mean(axis=0).mean()) for p in PRESETS},
        "rank_before": {p: float(np.nanmean(before[p]["rank"])) for p in PRESETS},
        "ndcg": ndcg_rows(rec0, split, truth),
        "ndcg_defended": ndcg_rows(rec0d, split, truth),
        "flagged": int(res0.suspicious.sum()), "n_users": int(n_genuine),
        "n_test": len(truth),
    }
    say(f"clean: hit ratio {clean['hit_before']}; NDCG {clean['ndcg']} -> defended "
        f"{clean['ndcg_defended']}; {clean['flagged']} genuine users flagged")

    rows, det_rows = [], []
    n_runs = len(attacks) * len(sizes) * len(targets)
    run = 0
    for attack in attacks:
        for size in sizes:
            n_fake = max(1, int(round(size * n_genuine)))
            per: dict[str, list[Any]] = {k: [] for k in (
                "hit", "hit_d", "shift", "shift_d", "prec", "rec", "fp")}
            acc: dict[str, dict[str, list[float]]] = {
                p: {"hit": [], "hit_d": [], "shift": [], "shift_d": []} for p in PRESETS}
            for c, t in enumerate(targets):
                run += 1
                t0 = time.perf_counter()
                prng = np.random.default_rng([args.seed, ATTACKS.index(attack), c,
                                              int(size * 1000)])
                attacked = inject(train, fake_profiles(attack, n_fake, int(t), st, prng),
                                  f"{attack}-{c}")
                rec = fit(attacked, models)
                recd, res = defend(rec, attacked, models, defense)
                one = np.array([t])
                after = target_stats(rec, eval_users, one)
                after_d = target_stats(recd, eval_users, one)
                for p in PRESETS:
                    b = before[p]["rank"][:, c]
                    acc[p]["hit"].append(float(after[p]["hit"].mean()))
                    acc[p]["hit_d"].append(float(after_d[p]["hit"].mean()))
                    acc[p]["shift"].append(float(np.nanmean(b - after[p]["rank"][:, 0])))
                    acc[p]["shift_d"].append(float(np.nanmean(b - after_d[p]["rank"][:, 0])))
                fake = np.zeros(attacked.n_users, dtype=bool)
                fake[train.n_users:] = True
                flagged = res.suspicious
                tp = int((flagged & fake).sum())
                per["prec"].append(tp / flagged.sum() if flagged.any() else float("nan"))
                per["rec"].append(tp / fake.sum())
                per["fp"].append(float((flagged & ~fake).sum()) / n_genuine)
                say(f"[{run}/{n_runs}] {attack} {size:.0%} target {t}: hit "
                    + ", ".join(f"{p} {acc[p]['hit'][-1]:.3f}->{acc[p]['hit_d'][-1]:.3f}"
                                for p in PRESETS)
                    + f"; detector P {per['prec'][-1]:.2f} R {per['rec'][-1]:.2f} "
                    f"FP {per['fp'][-1]:.4f} ({time.perf_counter() - t0:.1f}s)")
            for p in PRESETS:
                rows.append({"attack": attack, "size": size, "preset": p,
                             "hit": float(np.mean(acc[p]["hit"])),
                             "hit_defended": float(np.mean(acc[p]["hit_d"])),
                             "rank_shift": float(np.mean(acc[p]["shift"])),
                             "rank_shift_defended": float(np.mean(acc[p]["shift_d"]))})
            det_rows.append({"attack": attack, "size": size, "n_fake": n_fake,
                             "precision": float(np.nanmean(per["prec"]))
                             if not all(math.isnan(v) for v in per["prec"]) else float("nan"),
                             "recall": float(np.mean(per["rec"])),
                             "genuine_flagged": float(np.mean(per["fp"]))})
    info = {
        "command": command, "seconds": time.perf_counter() - _T0, "data": data.describe(),
        "protocol": protocol, "n_train_users": n_genuine, "profile_size": st.profile_size,
        "targets": targets.tolist(),
        "target_titles": [train.item_title(int(t)) for t in targets],
        "target_pop": train.item_popularity[targets], "n_eval": len(eval_users),
    }
    md = write_report(name, args, info, pd.DataFrame(rows), pd.DataFrame(det_rows), clean)
    say(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
