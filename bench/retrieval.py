"""Candidate retrieval against full-catalog scoring, side by side in one run.

    python bench/retrieval.py [--users 300] [--index faiss] [--out bench/results/retrieval.md]

1. MovieLens-100K, temporal split: every preset recommends for every test user twice, once
   scoring every item and once through retrieval (forced on, IVF index even on this small text
   space), and both lists are measured by the same metrics: retrieval must not cost accuracy
   or discovery.
2. A synthetic 100,000-item catalog (``bench/load.py``'s generator) with the large-catalog
   default models: milliseconds per request for both paths, the speed-up, the overlap of the
   final top-10 lists, and the recall of the exact re-ranking pool (the preset's
   ``candidates`` best items by the blend) among the retrieved candidates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import synthetic_catalog  # noqa: E402
from serendip.data import Dataset, load_movielens_100k, make_split  # noqa: E402
from serendip.eval.runner import evaluate_pipeline, truth_of  # noqa: E402
from serendip.models.retrieval import RetrievalConfig  # noqa: E402
from serendip.pipeline import FitConfig, Recommender  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import Query  # noqa: E402

EXACT = RetrievalConfig(mode="exact")
INDEX = RetrievalConfig().index  # the index backend (--index; bench/index.py compares them)


def movielens(k: int) -> list[str]:
    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    split = make_split(data, "temporal")
    truth = truth_of(split)
    rec = Recommender.fit(split.train, FitConfig(), progress=False)
    ann = RetrievalConfig(mode="ann", exact_flops=0, index=INDEX)  # index the text space too
    out = ["## MovieLens-100K, temporal split: full scoring vs retrieval", "",
           f"Retrieval forced on ({ann.per_source} items per source, index {ann.index!r}, IVF lists "
           f"= sqrt(items), {ann.probe:.0%} probed). K = {k}.", "",
           "| preset | path | NDCG@10 | tail share | coverage | novelty | serendipity | "
           "seconds (all users) |", "|---|---|---|---|---|---|---|---|"]
    for preset in ("accurate", "balanced", "discovery"):
        row = {}
        for label, cfg in (("full", EXACT), ("retrieval", ann)):
            rec.use_retrieval(cfg)
            m = evaluate_pipeline(rec.pipeline(preset), split, k, None, truth)
            row[label] = m
            out.append(f"| {preset} | {label} | {m['ndcg']:.4f} | {m['tail_share']:.3f} | "
                       f"{m['coverage']:.3f} | {m['novelty']:.2f} | {m['serendipity']:.4f} | "
                       f"{m['recommend_seconds']:.2f} |")
        ratio = row["retrieval"]["ndcg"] / row["full"]["ndcg"]
        out.append(f"| {preset} | ratio | {ratio:.3f} | | | | | |")
        print(f"ml100k {preset}: NDCG ratio retrieval/full {ratio:.3f}", file=sys.stderr)
    return out


def synthetic(n_users: int, k: int) -> list[str]:
    items, events = synthetic_catalog()
    data = Dataset.from_frames(events[["user_id", "item_id", "timestamp"]], items)
    cfg = FitConfig.default_for(data.n_items)
    t0 = time.perf_counter()
    rec = Recommender.fit(data, cfg, progress=True)
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    users = rng.choice(data.n_users, n_users, replace=False)
    queries = [Query(int(u), data.history(int(u))) for u in users]
    t0 = time.perf_counter()
    rec.use_retrieval(RetrievalConfig(mode="ann", index=INDEX))
    assert rec.retriever() is not None
    build_s = time.perf_counter() - t0
    out = ["## Synthetic 100,000-item catalog: full scoring vs retrieval", "",
           f"{data.n_items:,} items, {data.n_users:,} users, {len(data.interactions):,} "
           f"interactions; default large-catalog models ({', '.join(cfg.models)}), fitted in "
           f"{fit_s:.1f} s (text vectors from the cache); retrieval structures built in "
           f"{build_s:.1f} s. {n_users} random users, one request at a time, K = {k}.", "",
           "| preset | full ms/request | retrieval ms/request | speed-up | top-10 overlap | "
           "pool recall | max score difference |", "|---|---|---|---|---|---|---|"]
    for preset in ("accurate", "balanced", "discovery"):
        rec.use_retrieval(EXACT)
        full_pipe = rec.pipeline(preset)
        full_pipe.recommend(queries[0], k)  # warm
        t0 = time.perf_counter()
        full = [full_pipe.recommend(q, k) for q in queries]
        full_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        rec.use_retrieval(RetrievalConfig(mode="ann", index=INDEX))
        retriever = rec.retriever()
        assert retriever is not None
        pipe = rec.pipeline(preset)
        pipe.recommend(queries[0], k)
        t0 = time.perf_counter()
        ann = [pipe.recommend(q, k) for q in queries]
        ann_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        overlap = np.mean([len(set(a.items.tolist()) & set(b.items.tolist())) / k
                           for a, b in zip(full, ann, strict=True)])
        n_pool = max(pipe.preset.candidates, k)
        recalls, diffs = [], []
        for q in queries[:100]:
            row = pipe.hybrid.score_many([q])[0]
            row[q.history] = -np.inf
            pool = set(np.argsort(-row, kind="stable")[:n_pool].tolist())
            got = pipe.hybrid.retrieve(q, retriever, n_pool)
            recalls.append(len(pool & set(got.items.tolist())) / n_pool)
            diffs.append(float(np.abs(got.scores - row[got.items]).max()))
        out.append(f"| {preset} | {full_ms:.2f} | {ann_ms:.2f} | {full_ms / ann_ms:.1f}x | "
                   f"{overlap:.3f} | {np.mean(recalls):.3f} (pool {n_pool}) | "
                   f"{max(diffs):.1e} |")
        print(f"synthetic {preset}: {full_ms:.2f} ms -> {ann_ms:.2f} ms, overlap {overlap:.3f}",
              file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=300, help="synthetic users timed")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--index", choices=["ivf", "faiss", "usearch"], default=RetrievalConfig().index,
                   help="index backend for the text space")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "retrieval.md"))
    args = p.parse_args(argv)
    global INDEX
    INDEX = args.index
    lines = ["# Candidate retrieval (bench/retrieval.py)", "",
             f"Command: `{' '.join(['python', 'bench/retrieval.py', *sys.argv[1:]])}`", ""]
    lines += movielens(args.k) + [""] + synthetic(args.users, args.k)
    lines += ["", "Pool recall: share of the exact re-ranking pool (the blend's best "
              "`candidates` items over the whole catalog) that retrieval returns; scores of "
              "retrieved items are exact (the difference is float32 rounding)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
