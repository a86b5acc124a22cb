"""Does describing thin items help?  The fallback enrichment measured on a held-out split.

    python bench/enrich.py --dataset goodbooks|lastfm|movielens [--k 10] [--max-users 2000]
                           [--min-chars 80]

Protocol.  Data whose timestamps are a trustworthy order gets one global time cut at the 0.8
quantile of event time (``time_split``): returning users' later events are the test part, and
items first seen after the cut stay in the catalog (``Split.new_items``).  Data without time
(Last.fm) gets a per-user random 80/20 split instead, and has no new items.

The default ``FitConfig`` is fitted on the training part twice: on the catalog as it is, and
on the catalog with a ``generated_description`` for its thin items (``serendip.enrich`` with
no generator: descriptions built from the data).  The descriptions are made from the
training part only (its interactions give "people who chose it also chose", the plain
catalog's vectors give the nearest items), so nothing of the test part reaches them.  Both
fits are evaluated on the same test users (a seeded subsample when there are more than
``--max-users``) with ``compute_metrics``, lists ranking every item the user has not used,
for the ``accurate`` and ``balanced`` presets and the ``semantic`` and ``textcf`` models
alone.  Writes ``bench/results/enrich-<data set>.md`` (``enrich-<data set>-min<N>.md`` for another
``--min-chars``: a higher threshold describes more items, to see the effect where the catalog
text is rarely thin).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from serendip.data import Dataset, load_dataset, random_split, time_split
from serendip.data.splits import Split
from serendip.enrich import GENERATED_COLUMN, enrich, thin_items
from serendip.eval.metrics import compute_metrics
from serendip.eval.runner import truth_of
from serendip.pipeline import FitConfig, Preset, Recommender
from serendip.text import Encoder, EncoderConfig
from serendip.types import Query

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("goodbooks", "lastfm", "movielens")
#: What each row of the table is: a shipped preset, or one model alone.
SYSTEMS: dict[str, str | Preset] = {
    "accurate": "accurate",
    "balanced": "balanced",
    "semantic alone": Preset(name="semantic", blend={"semantic": 1.0}, cold_fill=False),
    "textcf alone": Preset(name="textcf", blend={"textcf": 1.0}, cold_fill=False),
}
#: Metric columns of the table (``compute_metrics`` keys) and their headings.
COLUMNS = {"ndcg": "NDCG@{k}", "recall": "recall@{k}", "recall_new": "recall@{k} new",
           "recall_head": "recall@{k} head", "recall_mid": "recall@{k} mid",
           "recall_tail": "recall@{k} tail", "new_item_share": "new-item share"}

#: ``enrich``'s own threshold; another gives ``enrich-<data set>-min<N>.md``.
DEFAULT_MIN_CHARS = 80

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


def encoded(data: Dataset, encoder: Encoder) -> Dataset:
    """``data`` with item vectors from the default encoder (cached on disk by text)."""
    return data.with_item_vectors(encoder.encode_items(data, progress=False))


def split_of(data: Dataset) -> tuple[str, Split]:
    if data.time_quality.ordered:
        return "time (one global cut at the 0.8 quantile of event time)", time_split(data, 0.8)
    return ("random (per-user 80/20, seed 42; the data has no time, so there is no time cut "
            "and no new items)", random_split(data, test_ratio=0.2, seed=42))


def eval_truth(split: Split, max_users: int) -> dict[int, np.ndarray]:
    truth = truth_of(split)
    if len(truth) <= max_users:
        return truth
    users = np.sort(np.random.default_rng(0).choice(np.fromiter(truth, dtype=np.int64),
                                                     size=max_users, replace=False))
    return {int(u): truth[int(u)] for u in users}


def evaluate(rec: Recommender, preset: str | Preset, split: Split,
             truth: dict[int, np.ndarray], k: int) -> dict[str, float]:
    users = np.fromiter(truth.keys(), dtype=np.int64)
    queries = [Query(int(u), rec.data.history(int(u))) for u in users]
    lists = rec.pipeline(preset).recommend_many(queries, k, None)
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    return compute_metrics(recs, users, truth, split.train, k, new_items=split.new_items)


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.4f}"


def _words(n: int, what: str) -> str:
    return f"{n:,} {what}"


def run(name: str, args: argparse.Namespace) -> Path:
    k = args.k
    data = load_dataset(name)
    protocol, split = split_of(data)
    train = split.train
    truth = eval_truth(split, args.max_users)
    n_test_users = len(truth_of(split))
    new = split.new_items if split.new_items is not None else np.zeros(0, dtype=np.int64)
    say(f"{name}: {data.describe()}; {protocol}; {len(truth)} of {n_test_users} test users "
        f"evaluated; {new.size} new items")

    encoder = Encoder(EncoderConfig(**FitConfig().encoder))
    plain = encoded(train, encoder)
    thin = thin_items(plain, args.min_chars)
    t0 = time.perf_counter()
    rich = enrich(plain, progress=False, min_chars=args.min_chars)
    enrich_seconds = time.perf_counter() - t0
    described = np.flatnonzero(np.asarray(
        [bool(x) for x in rich.items[GENERATED_COLUMN].tolist()]))
    rich = encoded(rich, encoder)  # the new text re-encoded; cached texts are not
    say(f"thin items {thin.size}, described {described.size} in {enrich_seconds:.1f}s")
    example = [(str(rich.item_title(int(i))), str(rich.items[GENERATED_COLUMN].iat[int(i)]))
               for i in described[:: max(1, described.size // 3)][:3]]

    rows: dict[tuple[str, str], dict[str, float]] = {}
    fit_seconds = {}
    for label, d in (("plain", plain), ("enriched", rich)):
        t0 = time.perf_counter()
        rec = Recommender.fit(d, FitConfig(), progress=False)
        fit_seconds[label] = time.perf_counter() - t0
        for system, preset in SYSTEMS.items():
            m = evaluate(rec, preset, split, truth, k)
            rows[(system, label)] = m
            say(f"{label} {system}: NDCG@{k} {m['ndcg']:.4f}, recall {m['recall']:.4f}, "
                f"recall new {_fmt(m.get('recall_new', float('nan')))}")
    return write(name, args, data, protocol, split, truth, n_test_users, new, thin, described,
                 rich, rows, fit_seconds, example)


def write(name: str, args: argparse.Namespace, data: Dataset, protocol: str, split: Split,
          truth: dict[int, np.ndarray], n_test_users: int, new: np.ndarray, thin: np.ndarray,
          described: np.ndarray, rich: Dataset, rows: dict[tuple[str, str], dict[str, float]],
          fit_seconds: dict[str, float], example: list[tuple[str, str]]) -> Path:
    k = args.k
    train = split.train
    cols = [c for c in COLUMNS if any(c in m for m in rows.values())]
    new_thin = int(np.isin(new, described).sum())
    test_pairs = len(split.test)
    new_pairs = int(np.isin(split.test["item"].to_numpy(), new).sum()) if new.size else 0
    new_users = sum(bool(np.isin(t, new).any()) for t in truth.values())
    cmd = shlex.join(["python", "bench/enrich.py", *sys.argv[1:]])
    lines = [
        f"# Describing thin items: {name}",
        "",
        f"Command: `{cmd}` ({time.perf_counter() - _T0:.0f}s on this machine).",
        "",
        f"Data: {_words(data.n_users, 'users')}, {_words(data.n_items, 'items')} and "
        f"{_words(len(data.interactions), 'interactions')}. Protocol: {protocol}. The "
        f"training part has {_words(len(train.interactions), 'interactions')}; the test part "
        f"{_words(test_pairs, 'held-out pairs')} of {_words(n_test_users, 'users')}, of which "
        f"{_words(len(truth), 'users')} are evaluated"
        + (" (a random subsample, seed 0, to keep the run short)" if len(truth) < n_test_users
           else "") + ".",
        "",
        f"Thin items (catalog text under {args.min_chars} characters, or an empty column), "
        f"judged on the full catalog with the training interactions: {thin.size} of "
        f"{data.n_items}; described: {described.size} (no budget, no generator: every "
        "description is built from the data, `fallback_description`)."
        + (f" Items first seen after the cut (new items): {new.size}, {new_thin} of them "
           f"described; they are {new_pairs} of the {test_pairs} held-out pairs, and "
           f"{new_users} of the evaluated users have one held out (recall@{k} new averages "
           "those users only, so it is noisy where they are few)."
           if new.size else ""),
        "",
        "The descriptions use the training part only: its interactions (what the people who "
        "chose an item also chose; new items have none) and the plain catalog's vectors "
        "(the items nearest in the encoder space). Both fits use the default `FitConfig`, "
        f"{fit_seconds['plain']:.0f}s plain and {fit_seconds['enriched']:.0f}s enriched; "
        "each list ranks every item the user has not used. Popularity groups (head, mid, "
        "tail) are `compute_metrics`' item groups by training popularity; a recall in a group "
        "averages the users with a held-out item in it.",
        "",
        "| system | catalog | " + " | ".join(COLUMNS[c].format(k=k) for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for system in SYSTEMS:
        for label in ("plain", "enriched"):
            m = rows[(system, label)]
            lines.append(f"| {system} | {label} | "
                         + " | ".join(_fmt(m.get(c, float("nan"))) for c in cols) + " |")
    lines += ["", "Change, enriched over plain (relative, NDCG and recall):", ""]
    for system in SYSTEMS:
        a, b = rows[(system, "plain")], rows[(system, "enriched")]
        parts = []
        for c in ("ndcg", "recall", "recall_new"):
            if c in a and np.isfinite(a[c]) and a[c] > 0:
                parts.append(f"{COLUMNS[c].format(k=k)} {100 * (b[c] / a[c] - 1):+.1f}%")
            elif c in a and np.isfinite(a[c]):
                parts.append(f"{COLUMNS[c].format(k=k)} {a[c]:.4f} -> {b[c]:.4f}")
        lines.append(f"- {system}: {', '.join(parts)}")
    if example:
        lines += ["", "Examples of descriptions written:", ""]
        lines += [f"- {t}: {d}" for t, d in example]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "" if args.min_chars == DEFAULT_MIN_CHARS else f"-min{args.min_chars}"
    path = RESULTS / f"enrich-{name}{tag}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-users", type=int, default=2000,
                   help="evaluate at most this many test users (a seeded subsample)")
    p.add_argument("--min-chars", type=int, default=DEFAULT_MIN_CHARS,
                   help="an item whose catalog text is shorter is thin (another value than "
                   "the default writes enrich-<data set>-min<N>.md)")
    args = p.parse_args(argv)
    path = run(args.dataset, args)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
