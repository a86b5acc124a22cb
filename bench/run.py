"""serendip against its tuned peers, side by side in one run per data set.

    python bench/run.py [--dataset movielens|goodbooks|lastfm|all] [--k 10]
                        [--tune-budget SECONDS] [--peers NAME,...] [--deep] [--legacy]

For each data set this writes ``BENCHMARKS-<data set>.md`` (tables and targets),
``bench/results/benchmarks-<data set>.csv`` (every metric of every system) and a JSON summary
beside it, then rebuilds the ``BENCHMARKS.md`` index from every summary present.

Protocol.  Data whose timestamps are a trustworthy order is split as deployed: one global time
cut at the 0.8 quantile of event time; returning users' later events are the test part, and
items first seen after the cut stay in the catalog (``Split.new_items``).  Data without time
gets a per-user random 80/20 split.  A validation split is carved from the training part by
the same protocol (``validation_split``); every peer's hyperparameters are chosen on it by
NDCG@K (``peers.tune_peer``), and serendip is shown tuned on the training part by its own
tuner (``serendip.tune``, which carves the same validation split) and untuned (the shipped
presets).  The test part is used once, for the figures below.  On ordered data two
order-aware peers run: a first-order transition baseline and Cornac's SASRec.

Every list holds K items ranked over every item the user has not interacted with; every
system is measured by the same ``compute_metrics``.  Ratios are against the best tuned peer
(the peer with the highest test NDCG, the strongest reference).

``--legacy`` (MovieLens only) adds the per-user protocols (temporal 80/20, leave-last-one-out,
cold items) with their older targets, peers tuned per protocol the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PEERS, Peer, eval_users, search_peer, top_k  # noqa: E402
from serendip.data import (  # noqa: E402
    Dataset,
    load_dataset,
    make_split,
    random_split,
    time_split,
    validation_split,
)
from serendip.data.splits import Split  # noqa: E402
from serendip.eval.metrics import compute_metrics  # noqa: E402
from serendip.eval.runner import truth_of  # noqa: E402
from serendip.pipeline import FitConfig, Preset, Recommender  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import Query  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("movielens", "goodbooks", "lastfm")
TITLES = {
    "movielens": "MovieLens-100K (movie ratings, treated as implicit)",
    "goodbooks": "goodbooks (books shelved to read; time = position in a time-sorted log)",
    "lastfm": "Last.fm (artists listened to; no time)",
}
PRESETS = ("accurate", "balanced", "discovery")
COLUMNS = ["ndcg", "recall", "novelty", "tail_share", "coverage", "gini",
           "max_list_share_tail", "new_item_share", "recall_new"]
LEGACY_COLUMNS = ["ndcg", "recall", "mrr", "novelty", "tail_share", "coverage", "serendipity",
                  "ild", "ndcg_tail"]
#: validation users at most for a peer's grid search (peers that score one user at a time
#: use fewer, see ``Peer.max_tune_users``)
MAX_VAL_USERS = 3000

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float | np.floating):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def md_table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| " + " | ".join(_fmt(r[c], 2 if c.endswith("seconds") else 4) for c in cols) + " |\n"
        for _, r in df[cols].iterrows())
    return head + body


def _clean(v: Any) -> Any:
    """JSON-safe: NaN becomes null."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    return v


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _params_text(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in p.items())


# --------------------------------------------------------------------------- systems
def peer_rows(split: Split, val: Split | None, truth: dict[int, np.ndarray], k: int,
              names: list[str], ordered: bool, *, tune: bool = True,
              max_val_users: int = MAX_VAL_USERS) -> list[dict[str, Any]]:
    """Tune each peer on ``val`` (when given), refit on ``split.train``, measure on test."""
    users = np.fromiter(truth.keys(), dtype=np.int64)
    rows = []
    for name in names:
        peer: Peer = PEERS[name]
        if peer.needs_order and not ordered:
            say(f"peer {name}: skipped (reads event order; this data has none)")
            continue
        try:
            row = _one_peer(peer, split, val, truth, users, k, tune, max_val_users)
        except Exception as e:  # a peer library too old or broken must not stop the run
            say(f"peer {name}: failed, left out ({type(e).__name__}: {e})")
            SKIPPED.append(f"{name}: {type(e).__name__}: {e}")
            continue
        rows.append(row)
    return rows


#: peers that failed in this run, with the reason (listed on the data set's page)
SKIPPED: list[str] = []
#: every system's lists on the current data set's test split (for the intervals)
RECS: dict[str, np.ndarray] = {}


def _one_peer(peer: Peer, split: Split, val: Split | None, truth: dict[int, np.ndarray],
              users: np.ndarray, k: int, tune: bool, max_val_users: int) -> dict[str, Any]:
    name = peer.name
    tune_seconds = 0.0
    params = dict(peer.defaults)
    val_ndcg = float("nan")
    note = ""
    if tune and val is not None:
        vusers = eval_users(val, min(max_val_users, peer.max_tune_users or max_val_users))
        say(f"peer {name}: tuning on {len(vusers)} validation users, "
            f"{len(peer.grid)} grid point(s)")
        found = search_peer(peer, val, vusers, k=k, on_trial=lambda p, nd, s: say(
            f"    {_params_text(p)}: validation NDCG@{k} {nd:.4f} ({s:.1f}s)"))
        params, val_ndcg, tune_seconds = found.params, found.ndcg, found.seconds
        limit = peer.options.get("max_epochs")
        if (peer.search is not None and limit and found.trials
                and params is found.trials[-1][0] and len(found.trials) < limit):
            note = " (still improving when the validation budget ran out)"
    t0 = time.perf_counter()
    scores = peer.fit_score(split, users, **params)
    recs = top_k(scores, users, split, k)
    seconds = time.perf_counter() - t0
    m = compute_metrics(recs, users, truth, split.train, k, new_items=split.new_items)
    RECS[name] = recs
    say(f"peer {name} ({_params_text(params)}): test NDCG@{k} {m['ndcg']:.4f}, "
        f"fit+score {seconds:.1f}s")
    return {"system": name, "kind": "peer", "params": _params_text(params) + note,
            "validation_ndcg": val_ndcg, "tune_seconds": tune_seconds, "fit_seconds": seconds,
            **m}


def evaluate(pipe: Any, split: Split, k: int, truth: dict[int, np.ndarray]
             ) -> tuple[dict[str, float], np.ndarray]:
    """``serendip.eval.runner.evaluate_pipeline``, keeping the lists (for the intervals)."""
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), pipe.rec.data.history(int(u))) for u in users]
    t0 = time.perf_counter()
    lists = pipe.recommend_many(queries, k, None, candidates=split.cold_items)
    seconds = time.perf_counter() - t0
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    m = compute_metrics(recs, users, truth, split.train, k, new_items=split.new_items)
    m["recommend_seconds"] = seconds
    return m, recs


def per_user_ndcg(recs: np.ndarray, users: np.ndarray, truth: dict[int, np.ndarray],
                  k: int) -> np.ndarray:
    """NDCG@k of each list (the per-user values ``compute_metrics`` averages)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros(len(users))
    for r, u in enumerate(users):
        rel = truth[int(u)]
        top = recs[r, :k]
        hits = np.isin(top, rel) & (top >= 0)
        out[r] = float((hits * disc[: top.size]).sum()) / float(disc[: min(k, len(rel))].sum())
    return out


def ratio_interval(a: np.ndarray, b: np.ndarray, draws: int = 1000, seed: int = 0
                   ) -> tuple[float, float]:
    """95% paired-bootstrap interval (over users) of mean(a) / mean(b)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    ratios = []
    for s in range(0, draws, 200):
        idx = rng.integers(0, n, size=(min(200, draws - s), n))
        den = b[idx].mean(axis=1)
        ratios.append(np.where(den > 0, a[idx].mean(axis=1) / np.maximum(den, 1e-300), np.nan))
    lo, hi = np.nanpercentile(np.concatenate(ratios), [2.5, 97.5])
    return float(lo), float(hi)


def serendip_rows(rec: Recommender, split: Split, k: int, label: str,
                  presets: dict[str, Preset | str], extra: dict[str, Any]
                  ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows, seconds = [], {}
    truth = truth_of(split)
    for name, preset in presets.items():
        m, recs = evaluate(rec.pipeline(preset), split, k, truth)
        seconds[name] = m["recommend_seconds"]
        system = " ".join(x for x in ("serendip", label, name) if x)
        RECS[system] = recs
        say(f"{system}: NDCG@{k} {m['ndcg']:.4f}, tail share {m['tail_share']:.3f}, "
            f"recommend {m['recommend_seconds']:.2f}s")
        rows.append({"system": system,
                     "kind": "serendip", **extra, **m})
    return rows, seconds


def tuned_serendip(train: Dataset, protocol: str, k: int, budget: float
                   ) -> tuple[Any | None, str]:
    """serendip's own tuner on the training part, or None with the reason."""
    try:
        from serendip.tune import TuneConfig, tune
    except ImportError as e:
        return None, f"not available ({e})"
    cfg_kwargs: dict[str, Any] = {"budget_seconds": budget, "k": k, "protocol": protocol}
    try:
        cfg = TuneConfig(**cfg_kwargs)
    except Exception:  # an older TuneConfig without some field
        cfg = TuneConfig(budget_seconds=budget)
    return tune(train, cfg, progress=False), ""


def tune_summary(result: Any) -> list[str]:
    """What serendip's tuner chose: model hyperparameters and the presets' blends."""
    lines = []
    for model, info in (getattr(result, "models", None) or {}).items():
        params = info.get("params", {}) if isinstance(info, dict) else {}
        nd = info.get("ndcg") if isinstance(info, dict) else None
        lines.append(f"- {model}: {_params_text(params) or 'defaults'}"
                     + (f" (validation NDCG@10 {nd:.4f})" if nd is not None else ""))
    for name, preset in (getattr(result, "presets", None) or {}).items():
        blend = ", ".join(f"{m} {w:.2f}" for m, w in preset.blend.items())
        rr = ", ".join(str(st.get("type", st.get("name", "?"))) for st in preset.rerank) \
            if preset.rerank else "none"
        lines.append(f"- preset {name}: blend {blend}; re-ranking {rr}; discovery "
                     f"{preset.discovery:g}")
    return lines


# --------------------------------------------------------------------------- one data set
def encode(data: Dataset) -> tuple[Dataset, float]:
    t0 = time.perf_counter()
    vectors = Encoder(EncoderConfig()).encode_items(data)
    return data.with_item_vectors(vectors), time.perf_counter() - t0


def headline_split(data: Dataset) -> tuple[str, Split, Split]:
    ordered = bool(data.time_quality.ordered)
    if ordered:
        split = time_split(data, cut=0.8)
        return "time", split, validation_split(split.train, "time", cut=0.8)
    split = random_split(data, test_ratio=0.2, seed=42)
    return "random", split, validation_split(split.train, "random")


def bench_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    k = args.k
    SKIPPED.clear()
    RECS.clear()
    say(f"== {name}: loading and encoding")
    data, encode_seconds = encode(load_dataset(name))
    ordered = bool(data.time_quality.ordered)
    protocol, split, val = headline_split(data)
    truth = truth_of(split)
    users = np.fromiter(truth.keys(), dtype=np.int64)
    n_new = 0 if split.new_items is None else len(split.new_items)
    say(f"{name}: {data!r}; {protocol} split: {len(users)} test users, {len(split.test)} "
        f"held-out pairs, {n_new} new items; validation: {len(truth_of(val))} users")

    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {"encode_seconds": encode_seconds}
    # serendip untuned: the default fit for this catalog and the shipped presets
    say("serendip untuned: fit")
    t0 = time.perf_counter()
    rec = Recommender.fit(split.train, None, progress=False)
    timing["fit_seconds"] = time.perf_counter() - t0
    r, sec = serendip_rows(rec, split, k, "untuned", {p: p for p in PRESETS},
                           {"params": "shipped presets"})
    rows += r
    timing.update({f"recommend_seconds_untuned_{p}": s for p, s in sec.items()})
    r, _ = serendip_rows(rec, split, k, "", {"semantic-only": Preset(
        name="semantic", blend={"semantic": 1.0})}, {"params": "content only"})
    rows += r
    if args.deep:
        for deep_name in ("two_tower", "sequential"):
            if deep_name == "sequential" and not ordered:
                continue
            t0 = time.perf_counter()
            deep = Recommender.fit(split.train, FitConfig(models={deep_name: {}}), progress=False)
            timing[f"{deep_name}_fit_seconds"] = time.perf_counter() - t0
            r, _ = serendip_rows(deep, split, k, "", {f"{deep_name}-only": Preset(
                name=deep_name, blend={deep_name: 1.0})}, {"params": "default"})
            rows += r

    # serendip tuned on the training part (its tuner carves the validation split itself)
    tune_note, tune_choices = "", []
    if args.tune_budget > 0:
        say(f"serendip tune (budget {args.tune_budget:.0f}s)")
        t0 = time.perf_counter()
        try:
            result, tune_note = tuned_serendip(split.train, protocol, k, args.tune_budget)
        except Exception as e:  # the tuner is young: a failure must not hide the rest
            result, tune_note = None, f"failed: {type(e).__name__}: {e}"
        timing["tune_seconds"] = time.perf_counter() - t0
        if result is not None:
            t0 = time.perf_counter()
            rec_t = Recommender.fit(split.train, result.fit_config, progress=False)
            timing["tuned_fit_seconds"] = time.perf_counter() - t0
            # a preset the tuner found no setting for stays the shipped one (as in the tuner)
            for p in PRESETS:
                found: dict[str, Preset | str] = {p: result.presets.get(p, p)}
                r, sec = serendip_rows(rec_t, split, k, "tuned", found, {
                    "params": "serendip.tune" if p in result.presets
                    else "shipped preset on the tuned fit"})
                rows += r
                timing.update({f"recommend_seconds_tuned_{p}": s for p, s in sec.items()})
            tune_note = "; ".join(getattr(result, "notes", []) or [])
            tune_choices = tune_summary(result)
        else:
            say(f"serendip tuned: {tune_note}")
    else:
        tune_note = "not run (--tune-budget 0)"

    # peers, each tuned on the validation split
    t0 = time.perf_counter()
    rows += peer_rows(split, val, truth, k, args.peers, ordered,
                      max_val_users=args.max_val_users)
    timing["peers_seconds"] = time.perf_counter() - t0

    df = pd.DataFrame(rows)
    df.insert(0, "dataset", name)
    df.insert(1, "protocol", protocol)
    peers = df[df.kind == "peer"]
    best_peer = str(peers.loc[peers.ndcg.idxmax(), "system"]) if len(peers) else ""
    ref = float(peers.ndcg.max()) if len(peers) else float("nan")
    df["ndcg_vs_best_peer"] = df["ndcg"] / ref if ref > 0 else float("nan")
    if best_peer and best_peer in RECS:
        base = per_user_ndcg(RECS[best_peer], users, truth, k)
        cis = {}
        for system in df.system:
            if system in RECS and system != best_peer:
                lo, hi = ratio_interval(per_user_ndcg(RECS[system], users, truth, k), base)
                cis[system] = f"{lo:.3f}–{hi:.3f}"
        df["ratio_95ci"] = df.system.map(cis).fillna("–")
    checks = dataset_targets(df, name, protocol, timing)
    return {"name": name, "data": data, "split": split, "protocol": protocol, "df": df,
            "best_peer": best_peer, "timing": timing, "checks": checks,
            "tune_note": tune_note, "tune_choices": tune_choices,
            "skipped": list(SKIPPED), "n_test_users": int(len(users)),
            "n_val_users": int(len(truth_of(val))), "n_new": n_new}


def _value(df: pd.DataFrame, system: str, col: str) -> float:
    sel = df.loc[df.system == system, col]
    return float(sel.item()) if len(sel) == 1 else float("nan")


Check = tuple[str, float, float | None, str]  # label, value, threshold (None: info), comparison


def dataset_targets(df: pd.DataFrame, name: str, protocol: str,
                    timing: dict[str, float]) -> list[Check]:
    """Targets per data set, on serendip tuned (untuned when the tuner did not run)."""
    label = "tuned" if (df.system == "serendip tuned accurate").any() else "untuned"
    acc, bal = f"serendip {label} accurate", f"serendip {label} balanced"
    peers = df[df.kind == "peer"]
    ref = float(peers.ndcg.max()) if len(peers) else float("nan")
    checks: list[Check] = [
        (f"{label} accurate NDCG@10 ≥ 1.05 × best tuned peer", _value(df, acc, "ndcg") / ref,
         1.05, ">="),
        (f"{label} balanced NDCG@10 ≥ 0.95 × best tuned peer", _value(df, bal, "ndcg") / ref,
         0.95, ">="),
        (f"{label} balanced tail share ≥ 0.30", _value(df, bal, "tail_share"), 0.30, ">="),
        (f"{label} balanced coverage ≥ 0.5", _value(df, bal, "coverage"), 0.5, ">="),
        (f"{label} balanced: no tail item in more than 10% of lists",
         _value(df, bal, "max_list_share_tail"), 0.10, "<="),
    ]
    if label == "tuned":
        checks.append(("untuned accurate NDCG@10 vs best tuned peer",
                       _value(df, "serendip untuned accurate", "ndcg") / ref, None, ""))
        checks.append(("untuned balanced NDCG@10 vs best tuned peer",
                       _value(df, "serendip untuned balanced", "ndcg") / ref, None, ""))
    if protocol == "time" and "recall_new" in df.columns:
        sem = _value(df, "serendip semantic-only", "recall_new")
        ratio = _value(df, bal, "recall_new") / sem if sem > 0 else float("nan")
        checks.append((f"{label} balanced new-item recall@10 ≥ 2 × content-only "
                       "(semantic-only)", ratio, 2.0 if name == "movielens" else None, ">="))
        checks.append((f"{label} balanced new-item slot share (their share of test "
                       f"interactions: {_value(df, bal, 'new_item_test_share'):.4f})",
                       _value(df, bal, "new_item_share"), None, ""))
    t_acc = timing.get(f"recommend_seconds_{label}_accurate", float("nan"))
    t_bal = timing.get(f"recommend_seconds_{label}_balanced", float("nan"))
    checks.append((f"{label} batch recommend time: balanced ≤ 2 × accurate", t_bal / t_acc,
                   2.0, "<="))
    if name == "movielens":
        checks.append(("fit on ML-100K (default fit, encoding cached), seconds < 30",
                       timing["fit_seconds"], 30.0, "<="))
        checks.append((f"recommend for all test users ({label} balanced), seconds < 10", t_bal,
                       10.0, "<="))
    return checks


def peer_notes(names: list[str], ordered: bool) -> list[str]:
    """One line per peer: what it is and the grid it was tuned over."""
    lines = []
    for name in names:
        peer = PEERS[name]
        grid = "; ".join(f"{key} ∈ {{{', '.join(_value_text(v) for v in vals)}}}"
                         for key, vals in peer.axes.items())
        if peer.needs_order and not ordered:
            lines.append(f"- `{name}`: {peer.about}; not run (this data has no order).")
            continue
        extra = ""
        if peer.search is not None:
            o = peer.options
            extra = (f"; epochs chosen by early stopping on validation NDCG@10 (at most "
                     f"{o.get('max_epochs')}, patience {o.get('patience')}, "
                     f"{o.get('budget_seconds', 0):.0f}s budget for the validation run), input "
                     "= the last events of each history, one torch thread")
        lines.append(f"- `{name}`: {peer.about}; grid {grid}{extra}.")
    lines.append("")
    lines.append(
        "Numeric axes are extended one step past their end when the best setting sits on it "
        "(up to twice), so a grid edge is not taken for an optimum. Every peer trains on the "
        "binary (user, item) pairs of the training part; each ranks over the same items. "
        "RecBole 1.2.1's SASRec is not among them: it does not run with NumPy 2 "
        "(`np.float_`, and its `ray` 2.6 dependency's `np.bool8`) nor load its checkpoints "
        "with torch ≥ 2.6.")
    return lines


def check_lines(checks: list[Check]) -> list[str]:
    lines = []
    for label, value, target, op in checks:
        if target is None:
            verdict = "info"
        elif math.isnan(value):
            verdict = "not measured"
        else:
            ok = value >= target if op == ">=" else value <= target
            verdict = "pass" if ok else "not met"
        lines.append(f"| {label} | {_fmt(float(value))} | {verdict} |")
        print(f"{verdict.upper():>12}  {label}: {_fmt(float(value))}")
    return lines


# --------------------------------------------------------------------------- legacy
def legacy_protocol(data: Dataset, protocol: str, k: int, peer_names: list[str],
                    max_val_users: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """The per-user protocols on MovieLens (as before), with peers tuned per protocol."""
    split = make_split(data, protocol)
    truth = truth_of(split)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    rec = Recommender.fit(split.train, None, progress=False)
    timing = {"fit_seconds": time.perf_counter() - t0}
    r, sec = serendip_rows(rec, split, k, "", {p: p for p in PRESETS}, {})
    rows += r
    timing.update({f"recommend_seconds_{p}": s for p, s in sec.items()})
    singles = ("semantic", "textcf") if protocol == "cold-items" else ("semantic", "textcf", "ease")
    rows += serendip_rows(rec, split, k, "", {f"{s}-only": Preset(name=s, blend={s: 1.0})
                                               for s in singles}, {})[0]
    for deep_name in ("two_tower", "sequential"):
        t0 = time.perf_counter()
        deep = Recommender.fit(split.train, FitConfig(models={deep_name: {}}), progress=False)
        timing[f"{deep_name}_fit_seconds"] = time.perf_counter() - t0
        rows += serendip_rows(deep, split, k, "", {f"{deep_name}-only": Preset(
            name=deep_name, blend={deep_name: 1.0})}, {})[0]
    # cold items: no peer can score a never-trained item (their lists are random among the
    # cold items), so there is nothing to tune, and SASRec's training is not spent on it
    val = None if protocol == "cold-items" else validation_split(split.train, protocol)
    if val is None:
        peer_names = [n for n in peer_names if n != "cornac-SASRec"]
    rows += peer_rows(split, val, truth, k, peer_names, True, tune=val is not None,
                      max_val_users=max_val_users)
    df = pd.DataFrame(rows)
    df.insert(0, "protocol", protocol)
    peers = df[df.kind == "peer"]
    ref = float(peers.ndcg.max())
    df["ndcg_vs_best_peer"] = df["ndcg"] / ref if ref > 0 else np.nan
    return df, timing


def run_legacy(data: Dataset, args: argparse.Namespace) -> tuple[list[str], list[Check]]:
    md: list[str] = []
    checks: list[Check] = []
    res: dict[str, pd.DataFrame] = {}
    for protocol in ("temporal", "loo", "cold-items"):
        say(f"== movielens legacy protocol {protocol}")
        df, timing = legacy_protocol(data, protocol, args.k, args.peers, args.max_val_users)
        res[protocol] = df
        how = ("peers untuned: none can score a never-trained item" if protocol == "cold-items"
               else "peers tuned on a validation split carved from the training part by the "
               "same protocol")
        md += [f"## Per-user protocol: {protocol}", "", f"Shipped presets; {how}.", "",
               md_table(df, ["system", "ndcg_vs_best_peer", *LEGACY_COLUMNS, "params"]), "",
               f"fit {timing['fit_seconds']:.1f}s (fitted on their own: two-tower "
               f"{timing['two_tower_fit_seconds']:.1f}s, sequential "
               f"{timing['sequential_fit_seconds']:.1f}s); recommend (balanced) "
               f"{timing['recommend_seconds_balanced']:.2f}s.", ""]
        if protocol == "temporal":
            t = timing
    tp = res["temporal"]
    peers = tp[tp.kind == "peer"]
    best = peers.loc[peers.ndcg.idxmax()]

    def g(df: pd.DataFrame, system: str, col: str) -> float:
        return _value(df, system, col)

    a, b = "serendip accurate", "serendip balanced"
    checks += [
        ("temporal: accurate NDCG@10 ≥ 1.05 × best tuned peer",
         g(tp, a, "ndcg") / best.ndcg, 1.05, ">="),
        ("temporal: balanced NDCG@10 ≥ 0.97 × best tuned peer",
         g(tp, b, "ndcg") / best.ndcg, 0.97, ">="),
        ("temporal: balanced tail share ≥ 0.30", g(tp, b, "tail_share"), 0.30, ">="),
        ("temporal: balanced coverage ≥ 0.60", g(tp, b, "coverage"), 0.60, ">="),
        ("temporal: balanced novelty ≥ 3.5 bits", g(tp, b, "novelty"), 3.5, ">="),
        ("temporal: balanced serendipity ≥ 1.3 × best tuned peer",
         g(tp, b, "serendipity") / best.serendipity, 1.3, ">="),
        ("leave-last-one-out: accurate NDCG@10 ≥ 0.085",
         g(res["loo"], a, "ndcg"), 0.085, ">="),
        ("cold items: balanced NDCG@10 ≥ 3 × semantic-only",
         g(res["cold-items"], b, "ndcg") / g(res["cold-items"], "serendip semantic-only", "ndcg"),
         3.0, ">="),
        ("fit on ML-100K (temporal), encoding cached, seconds < 30", t["fit_seconds"], 30.0,
         "<="),
        ("recommend for all test users (balanced, temporal), seconds < 10",
         t["recommend_seconds_balanced"], 10.0, "<="),
    ]
    pd.concat(res.values(), ignore_index=True).to_csv(
        RESULTS / "benchmarks-movielens-legacy.csv", index=False)
    return md, checks


# --------------------------------------------------------------------------- writing
def write_dataset(res: dict[str, Any], args: argparse.Namespace, enc_speed: dict | None,
                  legacy: tuple[list[str], list[Check]] | None) -> Path:
    name, df, data = res["name"], res["df"], res["data"]
    checks = list(res["checks"])
    extra_checks: list[Check] = []
    if enc_speed is not None:
        extra_checks.append(("encoder throughput ≥ 1,000 texts/s", enc_speed["serendip_per_s"],
                             1000.0, ">="))
    if legacy is not None:
        extra_checks += legacy[1]
    say(f"== {name}: targets")
    lines = check_lines(checks)
    extra_lines = check_lines(extra_checks) if extra_checks else []
    protocol = res["protocol"]
    tm = res["timing"]
    if protocol == "time":
        proto_text = (
            "**time cut** (as deployed): fit on every event before the 0.8 quantile of event "
            f"time, test the later events of the {res['n_test_users']:,} returning users; "
            f"{res['n_new']} items first seen after the cut stay in the catalog and in test. "
            "Validation: the same cut (0.8 quantile) inside the training part "
            f"({res['n_val_users']:,} users).")
    else:
        proto_text = (
            "**per-user random 80/20** (this data has no time, so no order-aware model runs): "
            f"{res['n_test_users']:,} test users. Validation: the same split inside the "
            f"training part ({res['n_val_users']:,} users).")
    quality = data.time_quality
    md = [
        f"# Benchmarks: {name}",
        "",
        "Written by `python bench/run.py --dataset " + name + "` in one run; do not edit by "
        "hand. Index: [BENCHMARKS.md](BENCHMARKS.md).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}.",
        f"Data: {TITLES[name]}: {data.n_users:,} users, {data.n_items:,} items, "
        f"{len(data.interactions):,} events"
        + ("" if quality.has_time else "; no timestamps")
        + (f"; {quality.tie_share:.0%} of events tie on timestamp with another of the same user"
           if quality.has_time and quality.tie_share > 0.05 else "") + ".",
        f"Protocol: {proto_text}",
        f"Lists of K = {args.k} over every item the user has not interacted with. Every peer's "
        "hyperparameters were chosen on the validation split by NDCG@10 (grid and choice in "
        "the `params` column); serendip **tuned** was tuned by `serendip.tune` on the training "
        "part only (budget "
        f"{args.tune_budget:.0f}s), **untuned** runs the shipped presets. Ratios are against "
        f"the best tuned peer, `{res['best_peer']}`.",
        f"Encoding the catalog took {tm['encode_seconds']:.1f}s (cached after the first run).",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *lines,
        *extra_lines,
        "",
    ]
    if res["tune_note"]:
        md += [f"serendip tune: {res['tune_note']}", ""]
    if enc_speed is not None:
        md += [
            "## Encoder throughput",
            "",
            f"sentence-transformers defaults: {enc_speed['default_per_s']:.0f} texts/s; "
            f"serendip's encoder: {enc_speed['serendip_per_s']:.0f} texts/s "
            f"(ratio {enc_speed['serendip_per_s'] / enc_speed['default_per_s']:.2f}); mean "
            f"cosine to the fp32 vectors {enc_speed['mean_cosine']:.5f}, top-10 neighbour "
            f"overlap {enc_speed['top10_overlap']:.3f}. Best of 3 interleaved runs on the 1,682 "
            "MovieLens-100K item texts (`python bench/encoder_speed.py` prints every variant).",
            "",
        ]
    md += [
        f"## {protocol} protocol",
        "",
        md_table(df, ["system", "ndcg_vs_best_peer", "ratio_95ci", *COLUMNS]),
        "",
        "`ratio_95ci`: 95% paired-bootstrap interval (1,000 resamples of the test users) of "
        "the NDCG@10 ratio to the best tuned peer.",
        "`max_list_share_tail`: the largest share of lists one tail item appears in. "
        "`new_item_share`: share of list slots holding items first seen after the cut; "
        "`recall_new`: recall@10 on those items (users with one in test).",
        "",
        "### Hyperparameters and time",
        "",
        md_table(df.assign(**{c: df.get(c, np.nan) for c in
                              ("validation_ndcg", "tune_seconds", "fit_seconds")}),
                 ["system", "params", "validation_ndcg", "tune_seconds", "fit_seconds",
                  "recommend_seconds"]),
        "",
        "serendip: default fit "
        f"{tm['fit_seconds']:.1f}s" + (f", tune {tm['tune_seconds']:.0f}s, tuned fit "
                                       f"{tm.get('tuned_fit_seconds', float('nan')):.1f}s"
                                       if "tune_seconds" in tm else "")
        + f"; peers (tuning included) {tm['peers_seconds']:.0f}s.",
        "",
    ]
    if res["tune_choices"]:
        md += ["### What serendip tune chose", "", *res["tune_choices"], ""]
    md += ["### Peers", "", *peer_notes(args.peers, bool(data.time_quality.ordered)), ""]
    if res["skipped"]:
        md += ["Peers that failed and are left out: " + "; ".join(res["skipped"]) + ".", ""]
    if legacy is not None:
        md += legacy[0]
    out = ROOT / f"BENCHMARKS-{name}.md"
    out.write_text("\n".join(md))
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / f"benchmarks-{name}.csv", index=False)
    all_checks = checks + extra_checks
    summary = {
        "dataset": name, "title": TITLES[name], "protocol": protocol,
        "users": data.n_users, "items": data.n_items, "events": len(data.interactions),
        "best_peer": res["best_peer"],
        "best_peer_ndcg": float(df.loc[df.system == res["best_peer"], "ndcg"].item())
        if res["best_peer"] else None,
        "systems": {r.system: {"ndcg": r.ndcg, "ratio": r.ndcg_vs_best_peer,
                               "tail_share": r.tail_share, "coverage": r.coverage}
                    for r in df.itertuples()},
        "targets": [{"target": c[0], "value": None if math.isnan(c[1]) else c[1],
                     "threshold": c[2], "op": c[3]} for c in all_checks],
        "seconds": round(time.perf_counter() - res["t_start"], 1),
    }
    (RESULTS / f"benchmarks-{name}.json").write_text(json.dumps(_clean(summary), indent=2))
    say(f"wrote {out.relative_to(ROOT)}")
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _met(t: dict[str, Any]) -> bool | None:
    if t["threshold"] is None or t["value"] is None:
        return None
    return t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"]


def write_index() -> Path:
    """BENCHMARKS.md: one line per data set from the summaries present."""
    rows = []
    for name in DATASETS:
        p = RESULTS / f"benchmarks-{name}.json"
        if not p.is_file():
            continue
        s = json.loads(p.read_text())
        sysd = s["systems"]

        def ratio(system: str, sysd: dict[str, Any] = sysd) -> str:
            v = sysd.get(system, {}).get("ratio")
            return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

        label = "tuned" if "serendip tuned accurate" in sysd else "untuned"
        verdicts = [_met(t) for t in s["targets"]]
        met = sum(v is True for v in verdicts)
        total = sum(v is not None for v in verdicts)
        rows.append(
            f"| [{name}](BENCHMARKS-{name}.md) | {s['users']:,} / {s['items']:,} / "
            f"{s['events']:,} | {s['protocol']} | `{s['best_peer']}` "
            f"({s['best_peer_ndcg']:.4f}) | {ratio(f'serendip {label} accurate')} | "
            f"{ratio(f'serendip {label} balanced')} | "
            f"{ratio('serendip untuned accurate')} | "
            f"{_fmt(_num(sysd.get(f'serendip {label} balanced', {}).get('tail_share')), 3)}"
            f" | {met} / {total} |")
    md = [
        "# Benchmarks",
        "",
        "serendip against implicit, Cornac and LensKit peers, every peer tuned on a validation "
        "split carved from the training part by the same protocol, on every bundled data set. "
        "Written by `python bench/run.py` (one data set: `--dataset NAME`); do not edit by "
        "hand. Each data set has its own page with every metric, the chosen hyperparameters "
        "and the targets; the raw figures are in `bench/results/benchmarks-<data set>.csv`.",
        "",
        "Protocol: a global time cut (as deployed) where the data has an order, else a "
        "per-user random split; NDCG@10 ratios are against the best tuned peer on the test "
        "part.",
        "",
        "| data set | users / items / events | protocol | best tuned peer (NDCG@10) | "
        "accurate × peer | balanced × peer | untuned accurate × peer | balanced tail share "
        "| targets met |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "accurate and balanced are serendip tuned by `serendip.tune` on the training part "
        "(untuned where the tuner did not run); untuned runs the shipped presets.",
        "",
    ]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(md))
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="all", choices=(*DATASETS, "all"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tune-budget", type=float, default=None,
                    help="seconds for serendip's tuner (default: 120 on MovieLens and Last.fm, "
                         "200 on goodbooks; 0 skips it)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated peers (default: all of {', '.join(PEERS)})")
    ap.add_argument("--max-val-users", type=int, default=MAX_VAL_USERS,
                    help="validation users at most for a peer's grid search")
    ap.add_argument("--sasrec-budget", type=float, default=None,
                    help="seconds for SASRec's early-stopped training run on validation "
                         "(default 240; it also stops after 20 epochs or 3 without progress)")
    ap.add_argument("--deep", action="store_true",
                    help="also the two-tower and sequential models on their own")
    ap.add_argument("--legacy", action="store_true",
                    help="MovieLens: also the per-user protocols (temporal, loo, cold items)")
    ap.add_argument("--no-encoder-speed", action="store_true",
                    help="MovieLens: skip the encoder throughput measurement")
    args = ap.parse_args(argv)
    args.peers = [p for p in args.peers.split(",") if p]
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; valid: {', '.join(PEERS)}")
    if args.sasrec_budget is not None and "cornac-SASRec" in PEERS:
        p = PEERS["cornac-SASRec"]
        PEERS["cornac-SASRec"] = dataclasses.replace(
            p, options={**p.options, "budget_seconds": args.sasrec_budget})

    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    budget_arg = args.tune_budget
    for name in names:
        t_start = time.perf_counter()
        args.tune_budget = budget_arg if budget_arg is not None else (
            200.0 if name == "goodbooks" else 120.0)
        enc_speed = None
        if name == "movielens" and not args.no_encoder_speed:
            # measured first: the peers (LensKit) change torch's thread settings when they train
            try:
                from encoder_speed import measure as measure_encoder
                say("encoder throughput")
                enc_speed = measure_encoder(repeats=3, verbose=False)
            except Exception as e:  # the speed check must not hide the quality results
                print(f"encoder speed not measured: {e}", file=sys.stderr)
        res = bench_dataset(name, args)
        res["t_start"] = t_start
        legacy = run_legacy(res["data"], args) if (args.legacy and name == "movielens") else None
        write_dataset(res, args, enc_speed, legacy)
        say(f"== {name} done in {time.perf_counter() - t_start:.0f}s")
    out = write_index()
    say(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
