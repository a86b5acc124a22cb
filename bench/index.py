"""Vector index backends for candidate retrieval, side by side in one run.

    python bench/index.py [--sizes 100000 1000000] [--queries 200] [--pool 500]
                          [--hnsw-max 100000] [--out bench/results/index-factors]

Every method answers the same inner-product queries over the same factor space: "give the
``pool`` items with the largest ``q . f``" (``pool`` = ``RetrievalConfig.per_source``, what each
source hands to the exact re-scoring).  Recall is measured against the exact top ``pool``
(ties broken by id) and the latency is one query at a time on one thread, as a request sees it
(the fastest of 3 timings of each query, so that other load on the machine counts less).

Spaces (all float32):

* ``text``: unit vectors (d = 384, the text encoder's width) drawn around 200 topic centres;
  queries are the normalised mean of 5 items of one topic, as a user's text profile is.
* ``als``: rank-64 factors with a popularity-skewed length (Zipf, exponent 0.9 on a random
  order) and a fifth of the items near the origin (length 1e-3 of the rest: never-seen
  items), the shape ALS leaves; queries are random user factors from the same low-rank model.
* ``als-fitted`` (100,000 items only): the item factors of serendip's ALS fitted on
  ``bench/load.py``'s synthetic 100,000-item catalog, queried with the user factors of 200
  random users.

Methods: ``exact`` (numpy ``F @ q`` and a partial sort: the reference), ``scan`` (serendip's
norm-ordered exact scan), ``ivf`` (serendip's numpy IVF), ``faiss-flat`` (IndexIVFFlat, same
lists and probes), ``faiss-sq8`` (IndexIVFScalarQuantizer with 8-bit codes, twice the pool
re-ranked exactly: serendip's default), ``x4``: four times the probes, ``usearch`` (HNSW; built only up to ``--hnsw-max`` items: its build is the
slowest).  The IVF methods probe what ``FactorSpace.search`` probes with the default
``RetrievalConfig``.  Memory is the bytes the structure holds beyond the caller's factors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one request, one thread (set before numpy loads BLAS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serendip.models.retrieval import (  # noqa: E402
    FactorSpace,
    FaissIndex,
    IVFIndex,
    RetrievalConfig,
    USearchIndex,
    available,
)

DEFAULT = RetrievalConfig()
REPEATS = 3  # each query is timed this many times; the fastest counts
WIDER = 4  # the IVF methods are also measured probing this many times more lists


def text_space(n: int, rng: np.random.Generator, n_queries: int, d: int = 384
               ) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(200, d)).astype(np.float32)
    topic = rng.integers(0, 200, n)
    x = centres[topic] + 0.8 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = np.stack([x[rng.choice(np.flatnonzero(topic == t), 5)].mean(axis=0)
                  for t in rng.choice(np.unique(topic[: min(n, 50_000)]), n_queries)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), q.astype(np.float32)


def als_space(n: int, rng: np.random.Generator, n_queries: int, d: int = 64
              ) -> tuple[np.ndarray, np.ndarray]:
    basis = rng.normal(size=(16, d)) / 4.0  # rank 16 structure plus noise in 64 dims
    x = rng.normal(size=(n, 16)) @ basis + 0.2 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    length = (1.0 / np.arange(1, n + 1) ** 0.9)[rng.permutation(n)]
    length[rng.random(n) < 0.2] = 1e-3 * length.min()  # never-seen items sit at the origin
    x *= (length / length.max())[:, None]
    q = rng.normal(size=(n_queries, 16)) @ basis + 0.2 * rng.normal(size=(n_queries, d))
    return x.astype(np.float32), q.astype(np.float32)


def fitted_als(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    from load import synthetic_catalog
    from serendip.data import Dataset
    from serendip.models import SCORERS

    items, events = synthetic_catalog()
    data = Dataset.from_frames(events[["user_id", "item_id", "timestamp"]], items)
    als = SCORERS["als"]()
    als.train(data)
    form = als.factor_space()
    assert form is not None
    users = np.random.default_rng(1).choice(data.n_users, n_queries, replace=False)
    from serendip.types import Query
    q, _ = als.query_factors([Query(int(u), data.history(int(u))) for u in users])
    return np.ascontiguousarray(form[1], dtype=np.float32), q.astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    s = x @ q
    part = np.argpartition(-s, n - 1)[:n]
    return part[np.lexsort((part, -s[part]))]


def n_probe_of(n_lists: int, n_items: int, pool: int) -> int:
    """What FactorSpace.search probes under the default config."""
    return max(math.ceil(DEFAULT.probe * n_lists), math.ceil(4 * pool * n_lists / n_items))


def measure(name: str, build: Callable[[], Any], search: Callable[[Any, np.ndarray], np.ndarray],
            size: Callable[[Any], int], queries: np.ndarray, truth: list[set[int]], pool: int
            ) -> dict[str, Any]:
    t0 = time.perf_counter()
    obj = build()
    build_s = time.perf_counter() - t0
    search(obj, queries[0])  # warm
    times, recalls = [], []
    for q, t in zip(queries, truth, strict=True):
        best = math.inf
        for _ in range(REPEATS):  # best of a few: the machine may be shared
            t0 = time.perf_counter()
            got = search(obj, q)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        recalls.append(len(t & set(got[:pool].tolist())) / pool)
    ms = np.array(times) * 1000
    row = {"method": name, "recall": float(np.mean(recalls)), "min_recall": float(np.min(recalls)),
           "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
           "build_s": build_s, "memory_mb": size(obj) / 2**20}
    print(f"  {name:8s} recall {row['recall']:.4f} (min {row['min_recall']:.3f})  "
          f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  build {build_s:.1f} s  "
          f"{row['memory_mb']:.0f} MB", file=sys.stderr)
    return row


def faiss_bytes(ix: FaissIndex) -> int:
    import faiss
    return int(faiss.serialize_index(ix.index).size)


def run_space(label: str, x: np.ndarray, queries: np.ndarray, pool: int, hnsw_max: int
              ) -> list[dict[str, Any]]:
    n = x.shape[0]
    print(f"{label}: {n:,} items x {x.shape[1]} dims, {len(queries)} queries", file=sys.stderr)
    truth = [set(exact_top(x, q, pool).tolist()) for q in queries]
    k = max(1, round(math.sqrt(n)))
    probe = n_probe_of(k, n, pool)
    scan_cfg = RetrievalConfig(exact_flops=10**12)  # never an index: the norm-ordered scan
    rows = [
        measure("exact", lambda: x, lambda _, q: exact_top(x, q, pool), lambda _: 0,
                queries, truth, pool),
        measure("scan", lambda: FactorSpace(x, scan_cfg), lambda s, q: s.search(q, pool),
                lambda s: s._sorted.nbytes + s._order.nbytes + s._norms.nbytes,
                queries, truth, pool),
    ]
    built: dict[str, Any] = {}

    def keep(name: str, make: Callable[[], Any]) -> Callable[[], Any]:
        def build() -> Any:
            built[name] = make()
            return built[name]
        return build

    ivf_size = lambda i: i.vectors.nbytes + i.ids.nbytes + i.centroids.nbytes  # noqa: E731
    rows.append(measure("ivf", keep("ivf", lambda: IVFIndex(x, k)),
                        lambda i, q: i.search(q, pool, probe), ivf_size, queries, truth, pool))
    rows.append(measure(f"ivf x{WIDER}", lambda: built["ivf"],
                        lambda i, q: i.search(q, pool, WIDER * probe), ivf_size,
                        queries, truth, pool))
    rows[-1]["build_s"] = rows[-2]["build_s"]
    if available("faiss"):
        variants: tuple[tuple[Literal["flat", "sq8"], str], ...] = (
            ("flat", "faiss-flat"), ("sq8", "faiss-sq8"))
        for codes, name in variants:
            rows.append(measure(name, keep(name, partial(FaissIndex, x, k, codes=codes)),
                                lambda i, q: i.search(q, pool, probe), faiss_bytes,
                                queries, truth, pool))
            rows.append(measure(f"{name} x{WIDER}", partial(built.__getitem__, name),
                                lambda i, q: i.search(q, pool, WIDER * probe), faiss_bytes,
                                queries, truth, pool))
            rows[-1]["build_s"] = rows[-2]["build_s"]
            built.pop(name)
    if available("usearch") and n <= hnsw_max:
        rows.append(measure("usearch", lambda: USearchIndex(x, ef_search=max(800, pool)),
                            lambda i, q: i.search(q, pool),
                            lambda i: int(i.index.memory_usage), queries, truth, pool))
    for r in rows:
        r.update(space=label, n_items=n, dims=int(x.shape[1]), n_lists=k, n_probe=probe)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["space"], r["n_items"]) for r in rows}, key=lambda g: (g[1], g[0]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (space, n) in zip(axes[0], groups, strict=True):
        for r in rows:
            if (r["space"], r["n_items"]) == (space, n):
                ax.scatter(r["p50_ms"], r["recall"], s=30)
                ax.annotate(r["method"], (r["p50_ms"], r["recall"]), fontsize=8,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(f"{space}, {n:,} items", fontsize=9)
        ax.set_xlabel("p50 ms per query (log)")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("recall@pool")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--pool", type=int, default=DEFAULT.per_source)
    p.add_argument("--hnsw-max", type=int, default=100_000)
    p.add_argument("--no-fitted", action="store_true", help="skip the fitted ALS space")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "index-factors"))
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        rng = np.random.default_rng(n)
        for label, make in (("text", text_space), ("als", als_space)):
            x, q = make(n, rng, args.queries)
            rows += run_space(label, x, q, args.pool, args.hnsw_max)
            del x
        if n == 100_000 and not args.no_fitted:
            x, q = fitted_als(args.queries)
            rows += run_space("als-fitted", x, q, args.pool, args.hnsw_max)
    versions = {"numpy": np.__version__}
    for mod in ("faiss", "usearch"):
        if available(mod):
            versions[mod] = __import__(mod).__version__
    command = " ".join(["python", "bench/index.py", *sys.argv[1:]])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Vector index backends (bench/index.py)", "", f"Command: `{command}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". "
             f"Pool = {args.pool} items per query; recall@pool against the exact top {args.pool}; "
             "latency one query at a time on one thread (best of 3 per query); IVF lists = sqrt(items), probes as "
             "`FactorSpace.search` with the default config.", ""]
    for space, n in sorted({(r["space"], r["n_items"]) for r in rows}, key=lambda g: (g[1], g[0])):
        grp = [r for r in rows if (r["space"], r["n_items"]) == (space, n)]
        exact = next(r for r in grp if r["method"] == "exact")
        lines += [f"## {space}: {n:,} items x {grp[0]['dims']} dims "
                  f"({grp[0]['n_lists']} lists, {grp[0]['n_probe']} probed)", "",
                  "| method | recall@pool | min recall | p50 ms | p99 ms | p50 vs exact | "
                  "build s | memory MB |", "|---|---|---|---|---|---|---|---|"]
        for r in grp:
            lines.append(f"| {r['method']} | {r['recall']:.4f} | {r['min_recall']:.3f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['p50_ms'] / exact['p50_ms']:.3f}x | {r['build_s']:.1f} | "
                         f"{r['memory_mb']:.0f} |")
        lines.append("")
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "versions": versions,
                                                    "rows": rows}, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
