"""Does the sequential model's text input lift the long tail?  Per item-popularity group.

    python bench/sequential.py [--protocol temporal|time] [--seeds 3] [--epochs 5] [--k 10]
                               [--quick]

Data: MovieLens-100K, split by time (``serendip.data.make_split``) and a validation split
carved from the training part by the same protocol (``validation_split``).  The default,
``temporal``, holds out each user's last 20 % of events, so every one of the 943 users is
evaluated; ``time`` is the headline protocol of ``bench/run.py`` (one global cut at the 0.8
quantile of event time), which evaluates only the 109 users who return after the cut, too few
for a per-group figure (there, no model places a held-out tail item in the first 10 slots).
Models, each fitted on the whole training part (test figures) with the same data, epochs and
seed; the text model and the dual view also on the validation split's training part, whose
figures alone decide whether the dual view earns its place:

- ``sequential text``: the shipped model (items enter as projected text vector + id);
- ``sequential random``: the same network and training with fixed random unit vectors of the
  same shape in place of the text vectors (``item_input="random"``);
- ``sequential text + dual``: the text model with the popularity-gated dual view
  (``dual_view=True``): an item's vector fuses its semantic and collaborative views, leaning
  on the text for items seen few times;
- ``EASE`` (reference): serendip's EASE with its L2 penalty chosen on validation NDCG@K.

Every list ranks every item the user has not used in training; every figure comes from
``serendip.eval.compute_metrics`` (overall NDCG/recall@K and per popularity group: head = the
20 % most popular items of the training part, mid = the next 30 %, tail = the rest, which
includes items nobody used in training), and per group again for lists of ``DEEP`` items,
where the tail is less sparse.  Neural models run over several seeds and are
reported as mean ± standard deviation over seeds.  Whether the dual view is worth keeping is
read from the validation split only; the test split is read once, for the figures.

Writes ``bench/results/sequential-movielens{,-time}{,-quick}.{md,json,png}`` (``-time`` for
the global cut, ``-quick`` for a smoke run) and prints progress as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import top_k  # noqa: E402
from serendip.data import Dataset, load_dataset, make_split, validation_split  # noqa: E402
from serendip.data.splits import Split  # noqa: E402
from serendip.eval import compute_metrics, popularity_groups  # noqa: E402
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.models import EASE, Sequential  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import Query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, Any]] = {
    "sequential text": {},
    "sequential random": {"item_input": "random"},
    "sequential text + dual": {"dual_view": True},
}
#: the models fitted on the validation split too: the dual view is kept or not from them
VALIDATED = ("sequential text", "sequential text + dual")
GROUPS = ("head", "mid", "tail")
METRICS = ("ndcg", "recall", *(f"{m}_{g}{d}" for d in ("", "_at100") for g in GROUPS
                               for m in ("ndcg", "recall")))
#: the longer list length of the second per-group view
DEEP = 100
EASE_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
#: the issue's target for the tail-group NDCG ratio text-init / random-init
TAIL_TARGET = 1.3
#: the issue's target for one model's fit on two CPU cores, seconds
FIT_TARGET = 300.0

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def measure(model: Any, split: Split, k: int) -> dict[str, float]:
    """Lists of ``k`` (and of ``DEEP``) for every user of ``split.test``: every metric of the
    first, and the per-group ones of the second (keys ``..._at<DEEP>``)."""
    truth = truth_of(split)
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), split.train.history(int(u))) for u in users]
    scores = model.score_many(queries)
    recs = top_k(scores, users, split, max(k, DEEP))
    out = compute_metrics(recs[:, :k], users, truth, split.train, k, new_items=split.new_items)
    deep = compute_metrics(recs, users, truth, split.train, DEEP, new_items=split.new_items)
    out.update({f"{m}_{g}_at{DEEP}": deep[f"{m}_{g}"] for g in GROUPS for m in ("ndcg", "recall")})
    return out


def group_support(split: Split) -> dict[str, int]:
    """Evaluated users with at least one held-out item in each popularity group."""
    groups = popularity_groups(split.train.item_popularity)
    t = split.test
    g = groups[t["item"].to_numpy()]
    return {name: int(t.loc[g == i, "user"].nunique()) for i, name in enumerate(GROUPS)}


def fit_sequential(train: Dataset, config: dict[str, Any]) -> tuple[Sequential, float]:
    m = Sequential(config)
    t0 = time.perf_counter()
    m.train(train)
    return m, time.perf_counter() - t0


def ease_reference(split: Split, val: Split, k: int) -> dict[str, Any]:
    """EASE with its L2 penalty chosen on validation NDCG@k, refitted on the training part."""
    best, best_nd = EASE_GRID[0], -1.0
    for l2 in EASE_GRID:
        m = EASE({"l2": l2})
        m.train(val.train)
        nd = measure(m, val, k)["ndcg"]
        say(f"EASE l2={l2:g}: validation NDCG@{k} {nd:.4f}")
        if nd > best_nd:
            best, best_nd = l2, nd
    m = EASE({"l2": best})
    m.train(val.train)
    val_m = measure(m, val, k)
    m = EASE({"l2": best})
    t0 = time.perf_counter()
    m.train(split.train)
    seconds = time.perf_counter() - t0
    test_m = measure(m, split, k)
    say(f"EASE l2={best:g}: test NDCG@{k} {test_m['ndcg']:.4f}, tail {test_m['ndcg_tail']:.4f}")
    return {"params": f"l2={best:g}", "val": [val_m], "test": [test_m], "fit_seconds": [seconds]}


def clean(v: Any) -> Any:
    """JSON-safe: NaN becomes null."""
    if isinstance(v, dict):
        return {a: clean(b) for a, b in v.items()}
    if isinstance(v, list):
        return [clean(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    return v


def stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs left out."""
    arr = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def cell(values: list[float], digits: int = 4) -> str:
    mean, sd = stats(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(res: dict[str, dict[str, Any]], part: str, k: int) -> list[str]:
    cols = {"ndcg": f"NDCG@{k}", "recall": f"recall@{k}", "ndcg_head": "NDCG head",
            "ndcg_mid": "NDCG mid", "ndcg_tail": "NDCG tail", "recall_tail": "recall tail",
            f"ndcg_mid_at{DEEP}": f"NDCG@{DEEP} mid", f"ndcg_tail_at{DEEP}": f"NDCG@{DEEP} tail",
            f"recall_tail_at{DEEP}": f"recall@{DEEP} tail"}
    lines = ["| model | " + " | ".join(cols.values()) + " | fit seconds |",
             "|---" * (len(cols) + 2) + "|"]
    for name, r in res.items():
        row = [cell([m[c] for m in r[part]]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {cell(r['fit_seconds'], 1)} |")
    return lines


def ratio_line(res: dict[str, dict[str, Any]], part: str, num: str, den: str, col: str
               ) -> tuple[float, list[float]]:
    """Ratio of the seed means, and the per-seed ratios (same seed paired)."""
    a = [m[col] for m in res[num][part]]
    b = [m[col] for m in res[den][part]]
    per_seed = [x / y if y > 0 else float("nan") for x, y in zip(a, b, strict=True)]
    mb = stats(b)[0]
    return (stats(a)[0] / mb if mb > 0 else float("nan")), per_seed


def plot(res: dict[str, dict[str, Any]], k: int, png: Path) -> None:
    """NDCG per popularity group on test, for lists of k and of DEEP (mean ± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, suffix, n in ((axes[0], "", k), (axes[1], f"_at{DEEP}", DEEP)):
        width = 0.8 / len(res)
        for j, (name, r) in enumerate(res.items()):
            means, sds = zip(*(stats([m[f"ndcg_{g}{suffix}"] for m in r["test"]])
                               for g in GROUPS), strict=True)
            x = np.arange(len(GROUPS)) + (j - (len(res) - 1) / 2) * width
            ax.bar(x, means, width, yerr=sds, capsize=3, label=name)
        ax.set_xticks(np.arange(len(GROUPS)), list(GROUPS))
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylabel(f"NDCG@{n} within the group")
        ax.set_title(f"MovieLens-100K test, lists of {n}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", choices=("temporal", "time"), default="temporal",
                   help="per-user last 20 %% (temporal) or one global time cut (time)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per neural model")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs of every sequential model (the same for all)")
    p.add_argument("--k", type=int, default=10, help="list length")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 5 epochs, smaller EASE grid: a smoke run (written with a "
                   "-quick suffix)")
    args = p.parse_args()
    if args.seeds < 1 or args.epochs < 1 or args.k < 1:
        p.error("--seeds, --epochs and --k must be at least 1")
    command = "python bench/sequential.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    if args.quick:
        args.seeds, args.epochs = 1, 2
    k = args.k
    epochs = args.epochs
    base: dict[str, Any] = {"epochs": epochs}

    say("loading MovieLens-100K and encoding titles")
    data = load_dataset("movielens")
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data))
    split = make_split(data, args.protocol)
    val = validation_split(split.train, args.protocol)
    support = {"val": group_support(val), "test": group_support(split)}
    n_users = {"val": len(truth_of(val)), "test": len(truth_of(split))}
    say(f"{args.protocol} split: {n_users['test']} test users ({support['test']} with a head/mid/tail "
        f"held-out item); validation: {n_users['val']} users ({support['val']})")

    res: dict[str, dict[str, Any]] = {}
    for name, extra in VARIANTS.items():
        res[name] = {"params": ", ".join(f"{a}={b}" for a, b in extra.items()) or "defaults",
                     "val": [], "test": [], "fit_seconds": []}
    for seed in range(args.seeds):
        for name, extra in VARIANTS.items():
            cfg = {**base, **extra, "seed": seed}
            r = res[name]
            if name in VALIDATED:
                m, sec = fit_sequential(val.train, cfg)
                vm = measure(m, val, k)
                r["val"].append(vm)
                say(f"seed {seed} {name}: validation NDCG@{k} {vm['ndcg']:.4f} (tail "
                    f"{vm['ndcg_tail']:.4f}, tail@{DEEP} {vm[f'ndcg_tail_at{DEEP}']:.4f}); "
                    f"fit {sec:.1f}s")
            m, sec = fit_sequential(split.train, cfg)
            tm = measure(m, split, k)
            r["test"].append(tm)
            r["fit_seconds"].append(sec)
            say(f"seed {seed} {name}: test NDCG@{k} {tm['ndcg']:.4f} (tail "
                f"{tm['ndcg_tail']:.4f}, tail@{DEEP} {tm[f'ndcg_tail_at{DEEP}']:.4f}); "
                f"fit {sec:.1f}s")
    res["EASE (tuned on validation)"] = ease_reference(split, val, k)

    # ---- verdicts
    text, rand, dual = "sequential text", "sequential random", "sequential text + dual"
    deep_tail = f"ndcg_tail_at{DEEP}"

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in values)

    tail_ratio, tail_per_seed = ratio_line(res, "test", text, rand, "ndcg_tail")
    deep_ratio, deep_per_seed = ratio_line(res, "test", text, rand, deep_tail)
    all_ratio, _ = ratio_line(res, "test", text, rand, "ndcg")
    dual_val = {c: ratio_line(res, "val", dual, text, c)[0]
                for c in ("ndcg_tail", deep_tail, "ndcg")}
    dual_test = {c: ratio_line(res, "test", dual, text, c)[0]
                 for c in ("ndcg_tail", deep_tail, "ndcg")}
    # the tail NDCG@k when it is measurable (either model places a tail item), else @DEEP
    mean_val = {(name, c): stats([m[c] for m in res[name]["val"]])[0]
                for name in (text, dual) for c in ("ndcg_tail", deep_tail, "ndcg")}
    val_tail_key = "ndcg_tail" if max(mean_val[text, "ndcg_tail"],
                                      mean_val[dual, "ndcg_tail"]) > 0 else deep_tail
    dual_helps = (mean_val[dual, val_tail_key] > mean_val[text, val_tail_key]
                  and mean_val[dual, "ndcg"] >= 0.98 * mean_val[text, "ndcg"])
    max_fit = max(max(r["fit_seconds"]) for r in res.values())
    say(f"tail NDCG@{k} text/random: test {tail_ratio:.3f} (per seed {fmt(tail_per_seed)}), "
        f"tail NDCG@{DEEP}: {deep_ratio:.3f}")
    say(f"dual view vs text, validation: tail {dual_val[val_tail_key]:.3f}, overall "
        f"{dual_val['ndcg']:.3f} -> {'helps' if dual_helps else 'does not help'}")

    # ---- write
    stem = "sequential-movielens" + ("" if args.protocol == "temporal" else "-time") + (
        "-quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{stem}.png"
    plot(res, k, png)
    total = time.perf_counter() - _T0
    met = "met" if tail_ratio >= TAIL_TARGET else "not met"
    protocol_text = {
        "temporal": "each user's last 20 % of events held out (every user evaluated)",
        "time": "one global time cut at the 0.8 quantile of event time (users returning "
                "after it evaluated)"}[args.protocol]
    tail_name = "NDCG" if val_tail_key == "ndcg_tail" else f"NDCG@{DEEP}"
    md = [
        "# Sequential model: text input against random input, per item-popularity group",
        "",
        f"Made by `{command}` in {total:.0f} s (written by bench/sequential.py; see "
        "docs/sequential.md).",
        "",
        f"- MovieLens-100K, {protocol_text}; {n_users['test']} test users, of whom "
        f"{support['test']['head']} / {support['test']['mid']} / {support['test']['tail']} "
        f"have a held-out head / mid / tail item (validation, carved from the training part "
        f"the same way: {n_users['val']} users, {support['val']['head']} / "
        f"{support['val']['mid']} / {support['val']['tail']})",
        "- groups by training popularity (`serendip.eval`): head = the 20 % most popular "
        "items, mid = the next 30 %, tail = the remaining 50 % (items never used in training "
        "included); a group's NDCG/recall counts only that group's held-out items and skips "
        f"users with none; the @{DEEP} columns are the same on lists of {DEEP}",
        f"- every sequential model: shipped settings but {epochs} epochs, the same data and "
        f"seeds 0..{args.seeds - 1}; figures are mean ± standard deviation over seeds"
        + (" (one seed: no spread)" if args.seeds == 1 else ""),
        "- random: the same network reading fixed random unit vectors of the text vectors' "
        "shape (`item_input=\"random\"`); dual: `dual_view=True` (semantic weight "
        "10 / (10 + training count))",
        f"- EASE: serendip's EASE, L2 chosen on validation NDCG@{k} over "
        f"{{{', '.join(f'{x:g}' for x in EASE_GRID)}}}: "
        f"{res['EASE (tuned on validation)']['params']}",
        f"- fit seconds: training only, on {os.cpu_count()} CPU core(s) ({platform.machine()}),"
        " a shared machine, so upper bounds",
        "",
        "## Test",
        "",
        *table(res, "test", k),
        "",
        "## Validation",
        "",
        *table(res, "val", k),
        "",
        f"![NDCG@{k} per popularity group]({png.name})",
        "",
        "## Verdict",
        "",
        (f"- tail-group NDCG@{k}, text / random input (ratio of seed means): "
         f"**{tail_ratio:.3f}** on test (per seed: {fmt(tail_per_seed)}). Target ≥ "
         f"{TAIL_TARGET}: **{met}**." if not math.isnan(tail_ratio) else
         f"- tail-group NDCG@{k}, text / random input: **undefined**, the random-input model "
         f"places no held-out tail item in its first {k} slots (text-input tail NDCG@{k}: "
         f"{cell([m['ndcg_tail'] for m in res[text]['test']])}). Target ≥ {TAIL_TARGET}: "
         f"**not met** (not measurable at {k})."),
        f"- tail-group NDCG@{DEEP}, text / random: {deep_ratio:.3f} on test (per seed: "
        f"{fmt(deep_per_seed)}).",
        f"- overall NDCG@{k}, text / random: {all_ratio:.3f} on test.",
        f"- dual view / text on validation: tail {tail_name} {dual_val[val_tail_key]:.3f}, "
        f"overall NDCG@{k} {dual_val['ndcg']:.3f}: "
        + ("it helps the tail group at an overall cost of at most 2 %" if dual_helps else
           "it does not help the tail group at an overall cost of at most 2 %")
        + f" (test, for information only: tail {dual_test['ndcg_tail']:.3f}, tail@{DEEP} "
        f"{dual_test[deep_tail]:.3f}, overall {dual_test['ndcg']:.3f}).",
        f"- slowest fit: {max_fit:.1f} s; target < {FIT_TARGET:.0f} s per model: "
        f"**{'met' if max_fit < FIT_TARGET else 'not met'}**.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    summary = {"command": command, "seconds": total, "epochs": epochs, "seeds": args.seeds,
               "k": k, "users": n_users, "group_support": support,
               "tail_ratio_text_random_test": tail_ratio,
               "tail_ratio_text_random_test_per_seed": tail_per_seed,
               f"tail_at{DEEP}_ratio_text_random_test": deep_ratio,
               "dual_vs_text_val": dual_val, "dual_vs_text_test": dual_test,
               "dual_helps_on_validation": dual_helps,
               "models": {name: {"params": r["params"], "fit_seconds": r["fit_seconds"],
                                 **{part: [{c: m[c] for c in METRICS} for m in r[part]]
                                    for part in ("val", "test")}}
                          for name, r in res.items()}}
    (RESULTS / f"{stem}.json").write_text(json.dumps(clean(summary), indent=2))
    say(f"wrote {RESULTS / stem}.md/.json/.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
