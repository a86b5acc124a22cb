"""Batch recommendation throughput: one process against a local Ray cluster, side by side.

    python bench/batch.py [--workers 2] [--synthetic-items 50000] [--synthetic-users 2000]
                          [--out bench/results/batch.md]

For each catalog a model is fitted and saved, then lists (k=10, the balanced preset) are made
for the same users twice:

* one process: ``Recommender.load`` + ``Pipeline.recommend_many`` in batches of 256, as
  ``serendip recommend`` does without ``--ray``, with the BLAS threads the machine gives it
  and again limited to one BLAS thread (what each Ray worker gets);
* Ray: ``serendip.distributed.recommend_batch_ray`` on a local cluster of ``--workers`` CPUs,
  timed from the call (the cluster already started; its start is reported apart): the
  model shipped through the object store, loaded once per worker, and the shards' lists.

Catalogs: MovieLens-100K (1,682 items, every one of its 943 users; item vectors from the
default encoder, read from the embedding cache when present) and a generated catalog
(``bench/load.py``'s generator) large enough for candidate retrieval, with random unit item
vectors instead of encoded text: this measures list-making, not quality, and encoding tens
of thousands of texts would dominate the run.  Each row says whether the Ray lists equal the
one-process lists (items, scores bit for bit, reasons, fields).

Times are wall-clock on the machine the script runs on; on a shared machine they are upper
bounds (throughputs lower bounds).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import synthetic_catalog  # noqa: E402
from serendip.data import Dataset, load_movielens_100k  # noqa: E402
from serendip.distributed import SHARD, ray_session, recommend_batch_ray  # noqa: E402
from serendip.pipeline import FitConfig, Recommender  # noqa: E402
from serendip.text import Encoder, EncoderConfig  # noqa: E402
from serendip.types import ItemList  # noqa: E402

K = 10
PRESET = "balanced"


def _equal(a: list[ItemList], b: list[ItemList]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if not (np.array_equal(x.items, y.items) and np.array_equal(x.scores, y.scores)
                and x.reasons == y.reasons and sorted(x.fields) == sorted(y.fields)
                and all(np.array_equal(x.fields[n], y.fields[n]) for n in x.fields)):
            return False
    return True


def movielens() -> Dataset:
    data = load_movielens_100k()
    return data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))


def synthetic(n_items: int, n_users: int, seed: int = 0) -> Dataset:
    items, events = synthetic_catalog(n_items=n_items, n_events=20 * n_users, n_users=n_users,
                                      seed=seed)
    data = Dataset.from_frames(events, items)
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(data.n_items, 64)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return data.with_item_vectors(vec)


def single(model_dir: Path, users: list[str]) -> tuple[list[ItemList], float]:
    t0 = time.perf_counter()
    pipe = Recommender.load(model_dir).pipeline(PRESET)
    queries = [pipe.query(u) for u in users]
    lists: list[ItemList] = []
    for s in range(0, len(queries), SHARD):
        lists.extend(pipe.recommend_many(queries[s : s + SHARD], K))
    return lists, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--synthetic-items", type=int, default=50_000,
                    help="generated catalog size (0: leave it out)")
    ap.add_argument("--synthetic-users", type=int, default=2_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch.md"))
    args = ap.parse_args()

    import ray

    catalogs = [("MovieLens-100K", movielens)]
    if args.synthetic_items > 0:
        catalogs.append((f"synthetic {args.synthetic_items:,} items",
                         lambda: synthetic(args.synthetic_items, args.synthetic_users)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="serendip-bench-batch-") as tmp:
        models = []
        for name, make in catalogs:
            data = make()
            t0 = time.perf_counter()
            rec = Recommender.fit(data, FitConfig(), progress=False)
            fit_s = time.perf_counter() - t0
            d = Path(tmp) / f"model{len(models)}"
            rec.save(d)
            users = [str(u) for u in data.user_ids]
            retrieval = rec.retriever() is not None
            models.append((name, d, users, data, fit_s, retrieval))
            print(f"{name}: {data.describe()}, fitted in {fit_s:.1f}s, "
                  f"retrieval {'on' if retrieval else 'off'}", flush=True)
        t0 = time.perf_counter()
        with ray_session(None, args.workers):
            start_s = time.perf_counter() - t0
            print(f"local Ray cluster ({args.workers} CPUs) started in {start_s:.1f}s", flush=True)
            for name, d, users, data, _fit_s, retrieval in models:
                ref, one_s = single(d, users)
                with threadpool_limits(limits=1, user_api="blas"):
                    ref1, one1_s = single(d, users)
                t0 = time.perf_counter()
                got = recommend_batch_ray(d, users, K, PRESET, workers=args.workers)
                ray_s = time.perf_counter() - t0
                equal = _equal(ref, got) and _equal(ref, ref1)
                rows.append((name, data.n_items, len(users), retrieval, one_s, one1_s, ray_s,
                             equal))
                print(f"{name}: {len(users)} users; one process {one_s:.2f}s "
                      f"({len(users) / one_s:.0f} users/s), with 1 BLAS thread {one1_s:.2f}s "
                      f"({len(users) / one1_s:.0f} users/s); Ray {args.workers} workers "
                      f"{ray_s:.2f}s ({len(users) / ray_s:.0f} users/s); Ray/one-process "
                      f"throughput {one_s / ray_s:.2f}x; lists equal: {equal}", flush=True)
    lines = [
        "# Batch recommendation: one process vs Ray",
        "",
        f"Written by `bench/batch.py` (k={K}, preset {PRESET}); Ray {ray.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs visible, local Ray "
        f"cluster of {args.workers} CPUs (started in {start_s:.1f}s, not counted below).",
        "The Ray time counts shipping the model, starting one actor per worker, one model load "
        "each, and the lists. Times are wall-clock on a shared machine: upper bounds.",
        "",
        "One process runs with the BLAS threads the machine gives it, and again with one BLAS "
        "thread, as each Ray worker has. \"Lists equal\": the Ray lists and the one-thread "
        "lists equal the one-process lists (items, scores bit for bit, reasons, fields).",
        "",
        "| catalog | items | users | retrieval | one process users/s (s) | one process, "
        "1 thread users/s (s) | Ray users/s (s) | Ray / one process | lists equal |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for name, n_items, n_users, retrieval, one_s, one1_s, ray_s, equal in rows:
        lines.append(f"| {name} | {n_items:,} | {n_users:,} | {'yes' if retrieval else 'no'} "
                     f"| {n_users / one_s:.0f} ({one_s:.1f}) "
                     f"| {n_users / one1_s:.0f} ({one1_s:.1f}) "
                     f"| {n_users / ray_s:.0f} ({ray_s:.1f}) | {one_s / ray_s:.2f}x "
                     f"| {'yes' if equal else 'NO'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if not all(r[-1] for r in rows):
        sys.exit("Ray lists differ from the one-process lists")


if __name__ == "__main__":
    main()
