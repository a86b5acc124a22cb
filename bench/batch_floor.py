"""How fast a batch of recommendations could be at most, set by the text index alone.

    python bench/batch_floor.py [--items 1000000] [--queries 2000] [--pool 500]
                                [--threads N] [--target 2000] [--out bench/results/batch-floor]

At a million items a batch list starts with one search of the text space per person: the
``pool`` items whose text vectors lie closest to the person's text query, out of the lists an
inverted-file index probes.  Whatever else the batch does (the other models' scores, the
re-ranking, the reasons) comes on top, so the search's own rate is an upper bound of the batch's
users per second.  This script measures that bound on the machine it runs on, for the
retrieval settings serendip ships and for smaller probes, so the bound can be set beside the
batch target (``--target``, users per second).

Space and queries are ``bench/index.py``'s text space: unit vectors (d = 384) around 200 topic
centres, each query the normalised mean of 5 items of one topic.  The index is serendip's
``FaissIndex`` built as a fit builds it (IVF over sqrt(items) lists, 8-bit codes, twice the
pool fetched and re-ranked exactly).  All queries go to FAISS in one call with ``--threads``
threads (every core by default: a batch has the machine to itself).

Three rates per probe setting:

* **search + re-rank**: FAISS's batch search and the exact re-ranking of what it fetched, as
  ``FaissIndex.search`` does for one query, over all ``--queries``; the re-ranking runs in
  one thread and its time is divided by ``--threads`` (perfect scaling assumed, so that the
  rate stays an upper bound);
* **search alone**: the FAISS call;
* **matrix-product ceiling**: the probed items' exact float scores computed at this machine's
  measured matrix-product rate (float32 GEMM of the same width), ``2 d`` operations per probed
  item and query, with perfect reuse and nothing else: what any implementation of the same
  probe could approach at best.

Recall is the share of the exact top ``pool`` (by float inner product) that the search
returns, over ``--recall-queries`` of the queries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

_THREADS = str(os.cpu_count() or 1)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)  # a batch uses every core (set before numpy loads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index import exact_top, n_probe_of, text_space  # noqa: E402
from serendip.models._util import row_dots  # noqa: E402
from serendip.models.retrieval import (  # noqa: E402
    FaissIndex,
    RetrievalConfig,
    _query,
    _top,
    available,
)

DEFAULT = RetrievalConfig()


def gemm_rate(d: int, seconds: float = 2.0) -> float:
    """Float32 matrix-product operations per second at width ``d`` (best of repeated runs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8192, d), dtype=np.float32)
    b = rng.standard_normal((d, 1024), dtype=np.float32)
    a @ b  # warm
    best = math.inf
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * a.shape[0] * d * b.shape[1] / best


def refine(index: FaissIndex, queries: np.ndarray, found: np.ndarray, pool: int
           ) -> list[np.ndarray]:
    """``FaissIndex.search``'s exact re-ranking of the fetched ids, per query."""
    assert index.vectors is not None
    out = []
    for q, ids in zip(queries, found, strict=True):
        ids = ids[ids >= 0].astype(np.int64)
        out.append(ids[_top(row_dots(index.vectors[ids], q), pool)])
    return out


def measure(index: FaissIndex, queries: np.ndarray, truth: list[set[int]], pool: int,
            n_probe: int, rate: float, n_items: int, threads: int) -> dict[str, Any]:
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = n_probe
    q = np.stack([_query(v, index.dim, index._stored) for v in queries])  # as FaissIndex.search
    fetch = FaissIndex.REFINE * pool
    index.index.search(q[:50], fetch, params=params)  # warm
    t0 = time.perf_counter()
    _, found = index.index.search(q, fetch, params=params)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = refine(index, q, found, pool)
    refine_s = time.perf_counter() - t0
    recall = [len(t & set(g.tolist())) / pool for t, g in zip(truth, got, strict=False)]
    probed = n_probe / index.n_lists * n_items  # items scored per query (lists of equal size)
    ceiling = rate / (2.0 * queries.shape[1] * probed)
    row = {"n_probe": n_probe, "share": n_probe / index.n_lists,
           "recall": float(np.mean(recall)), "min_recall": float(np.min(recall)),
           "search_per_s": len(queries) / (search_s + refine_s / threads),
           "faiss_per_s": len(queries) / search_s, "gemm_ceiling_per_s": ceiling}
    print(f"  probe {n_probe:5d} ({row['share']:.3f}): recall {row['recall']:.4f} "
          f"(min {row['min_recall']:.3f})  search+re-rank {row['search_per_s']:,.0f}/s  "
          f"faiss {row['faiss_per_s']:,.0f}/s  ceiling {ceiling:,.0f}/s", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=2000, help="people in the batch")
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument("--pool", type=int, default=DEFAULT.per_source)
    p.add_argument("--threads", type=int, default=int(_THREADS))
    p.add_argument("--target", type=float, default=2000.0, help="batch target, users/s")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "batch-floor"))
    args = p.parse_args(argv)
    if not available("faiss"):
        print("error: faiss-cpu is not installed", file=sys.stderr)
        return 2
    import faiss

    faiss.omp_set_num_threads(args.threads)
    n = args.items
    rng = np.random.default_rng(n)
    print(f"text space: {n:,} items x 384 dims, {args.queries:,} queries", file=sys.stderr)
    x, queries = text_space(n, rng, args.queries)
    n_truth = min(args.recall_queries, args.queries)
    truth = [set(exact_top(x, q, args.pool).tolist()) for q in queries[:n_truth]]
    k = max(1, round(math.sqrt(n)))
    t0 = time.perf_counter()
    index = FaissIndex(x, k, iterations=DEFAULT.iterations, seed=DEFAULT.seed,
                       codes=DEFAULT.faiss_codes)
    build_s = time.perf_counter() - t0
    rate = gemm_rate(x.shape[1])
    print(f"index built in {build_s:.1f}s; float32 matrix product {rate / 1e9:.1f} GFLOP/s",
          file=sys.stderr)
    shipped = n_probe_of(k, n, args.pool)
    probes = sorted({max(1, shipped // f) for f in (1, 2, 4, 8, 16)}, reverse=True)
    rows = [measure(index, queries, truth, args.pool, pr, rate, n, args.threads)
            for pr in probes]
    command = " ".join(["python", "bench/batch_floor.py", *sys.argv[1:]])
    lines = [
        "# The text index's bound on batch recommendation (bench/batch_floor.py)", "",
        f"Command: `{command}`", "",
        f"numpy {np.__version__}, faiss {faiss.__version__}, {os.cpu_count()} CPUs visible, "
        f"{args.threads} threads. Text space: {n:,} items x 384 dims (`bench/index.py`'s topic "
        f"space); {args.queries:,} queries in one batch; index: `FaissIndex` as a fit builds it "
        f"({k:,} lists, 8-bit codes, {FaissIndex.REFINE * args.pool:,} fetched and re-ranked "
        f"exactly, built in {build_s:.0f} s). Pool {args.pool}; recall over the first "
        f"{n_truth} queries against the exact top {args.pool}. Float32 matrix product on this "
        f"machine: {rate / 1e9:.1f} GFLOP/s. Times are wall-clock on a shared machine: the "
        "rates are lower bounds of what the machine can do.", "",
        "Every batch list at this size needs this search, so each rate bounds the batch's "
        "users per second from above (the re-ranking's time is divided by the threads). "
        f"Each rate is also given as a share of the target of {args.target:,.0f} users/s: "
        "below 1 the target cannot be met with that setting, whatever the rest of the batch "
        "costs; the matrix-product ceiling is what a batched exact scan of the same lists could "
        "reach at best, with nothing else to do.", "",
        "| probed lists | share of items | recall@pool | min recall | search + re-rank /s | "
        "/ target | FAISS search alone /s | matrix-product ceiling /s | / target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (shipped)" if r["n_probe"] == shipped else ""
        lines.append(
            f"| {r['n_probe']}{mark} | {r['share']:.3f} | {r['recall']:.4f} | "
            f"{r['min_recall']:.3f} | {r['search_per_s']:,.0f} | "
            f"{r['search_per_s'] / args.target:.2f}x | {r['faiss_per_s']:,.0f} | "
            f"{r['gemm_ceiling_per_s']:,.0f} | {r['gemm_ceiling_per_s'] / args.target:.2f}x |")
    lines.append("")
    text = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "items": n, "queries": args.queries, "threads": args.threads,
         "gemm_flops": rate, "build_s": build_s, "shipped_probe": shipped, "rows": rows},
        indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
