"""Batch work on a Ray cluster: recommendation lists and evaluation, sharded by user.

The work is split into shards of ``SHARD`` users, in the order the single-process path sees
them, and each shard is scored as one ``Pipeline.recommend_many`` batch, exactly the batch the
single-process path scores.  Matrix products are therefore computed on the same rows in the
same shapes, and the lists (items, scores, reasons, fields) are equal bit for bit, whichever
worker makes them and in whatever order the shards finish.

The shards flow through Ray Data (``map_batches`` over an actor pool): each actor loads the
model once, in its constructor, and then serves any number of shards.  The model directory
travels through Ray's object store (its files, read once by the driver), so the workers need
no shared volume and no copy of the model on their disks beforehand; they need the same
version of serendip installed.

Some pipelines make a list from the lists before it: the exposure memory of the
multi-objective reranker, exploration (one random stream over the whole batch) and the bandit
(which samples).  Sharded, their lists would depend on which shard ran where, so they are
refused here with an error that says so; run them without ``--ray``.

Ray is imported only when a function here is called, so serendip does not depend on it.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serendip.errors import ConfigError
from serendip.pipeline import Pipeline, Preset, Recommender
from serendip.types import ItemList, Query

__all__ = [
    "RAY_INSTALL", "SHARD", "import_ray", "ray_session", "order_dependent", "pack_lists",
    "unpack_lists", "recommend_batch_ray", "evaluate_lists_ray", "job_lists",
    "run_experiment_ray",
]

log = logging.getLogger(__name__)

#: how to install the optional dependency (the one-line error says it)
RAY_INSTALL = 'pip install "ray[data,client]"'
#: users per shard: ``Pipeline.recommend_many``'s batch and the CLI's, so a shard is scored as
#: the very batch the single-process path scores
SHARD = 256


def import_ray() -> ModuleType:
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the sharding runs on Ray Data)
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed; install it with: "
                          f"{RAY_INSTALL}") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                progress: bool = False) -> Iterator[ModuleType]:
    """Connect to the Ray cluster at ``address`` (e.g. ``ray://head:10001`` or ``auto``), or
    start a local one on this machine with ``num_cpus`` CPUs (all, when None); disconnect (and
    stop a local one) on exit.  A session the caller already opened is used as it is and left
    open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": progress}
    try:
        if address:
            with warnings.catch_warnings():  # the error below says it in one line
                warnings.simplefilter("ignore")
                ray.init(address=address, **kwargs)
        else:
            # a private cluster whose node address is loopback: the driver and the workers
            # talk over 127.0.0.1
            ray.init(num_cpus=num_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"could not start or reach {where}: {first}") from None
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        if not progress:  # Ray Data logs each run's plan at INFO
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        yield ray
    finally:
        ray.shutdown()


def order_dependent(pipe: Pipeline) -> str | None:
    """Why ``pipe``'s lists depend on the lists it made before (then it cannot be sharded
    with equal results), or None."""
    if pipe.bandit is not None:
        return "a bandit samples its lists"
    if pipe.explorer.config.epsilon > 0:
        return "exploration draws from one random stream over the whole batch"
    for rr in pipe.rerankers:
        if getattr(rr, "tracks_exposure", False):
            return "its exposure memory makes each list depend on the lists before it"
    return None


def _refuse_order_dependent(pipe: Pipeline, explore: float | None = None) -> None:
    why = order_dependent(pipe)
    if why is None and explore is not None and explore > 0 and pipe.bandit is None:
        why = "exploration draws from one random stream over the whole batch"
    if why is not None:
        raise ConfigError(f"preset {pipe.preset.name!r} cannot run on Ray with results equal "
                          f"to one process: {why}; run it without --ray")


# --- lists through Ray Data: a compact, exact encoding ------------------------------------

def pack_lists(lists: Sequence[ItemList]) -> bytes:
    """Lists as one ``.npz`` blob (no pickles): arrays keep their dtype, so unpacking gives
    back equal lists, scores bit for bit."""
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "lengths": lengths,
        "items": np.concatenate([x.items for x in lists]) if lists else np.zeros(0, np.int64),
        "scores": (np.concatenate([x.scores for x in lists]) if lists
                   else np.zeros(0, np.float64)),
        "reasons": np.array(json.dumps([None if x.reasons is None else [list(r) for r in x.reasons]
                                        for x in lists], ensure_ascii=False)),
    }
    names = sorted({n for x in lists for n in x.fields})
    arrays["field_names"] = np.array(json.dumps(names))
    for n, name in enumerate(names):
        has = np.array([name in x.fields for x in lists], dtype=bool)
        arrays[f"has_{n}"] = has
        arrays[f"field_{n}"] = np.concatenate(
            [np.asarray(x.fields[name]) for x in lists if name in x.fields])
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def unpack_lists(blob: bytes) -> list[ItemList]:
    """The lists ``pack_lists`` packed."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        lengths = z["lengths"]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        items, scores = z["items"], z["scores"]
        reasons = json.loads(str(z["reasons"]))
        names = json.loads(str(z["field_names"]))
        fields: list[dict[str, np.ndarray]] = [{} for _ in lengths]
        for n, name in enumerate(names):
            has, values = z[f"has_{n}"], z[f"field_{n}"]
            pos = 0
            for row in np.flatnonzero(has):
                m = int(lengths[row])
                fields[row][name] = values[pos : pos + m]
                pos += m
    return [
        ItemList(items[s:e], scores[s:e],
                 None if r is None else tuple(tuple(x) for x in r), f)
        for s, e, r, f in zip(starts, ends, reasons, fields, strict=True)
    ]


# --- the model on the workers --------------------------------------------------------------

def _model_files(directory: str | Path) -> dict[str, bytes]:
    """Every file of a model directory, by relative path (read once, on the driver)."""
    root = Path(directory)
    if not (root / "serendip.json").exists():
        raise ConfigError(f"{str(root)!r} is not a serendip model directory (no serendip.json)")
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


class _Model:
    """The model a worker holds: the shipped files written to a private temp directory and
    loaded once."""

    def __init__(self, model_ref: list[Any]):
        ray = import_ray()
        files: dict[str, bytes] = ray.get(model_ref[0])
        self._tmp = tempfile.TemporaryDirectory(prefix="serendip-model-")
        root = Path(self._tmp.name) / "model"
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.rec = Recommender.load(root)


class _RecommendWorker(_Model):
    """A Ray Data actor: one model load, then lists for shard after shard of user ids."""

    def __init__(self, model_ref: list[Any], preset: Preset, k: int, discovery: float | None,
                 candidates: np.ndarray | None, explore: float | None):
        super().__init__(model_ref)
        self.pipe = Pipeline(self.rec, preset)
        self.args = (k, discovery, candidates)
        self.explore = explore

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k, discovery, candidates = self.args
        blobs = []
        for users in batch["users"]:
            queries = [self.pipe.query(u) for u in json.loads(str(users))]
            blobs.append(pack_lists(self.pipe.recommend_many(
                queries, k, discovery, candidates, batch_size=SHARD, explore=self.explore)))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "lists": np.array(blobs, dtype=object)}


def _workers(ray: ModuleType, n_shards: int, workers: int | None) -> int:
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(workers, n_shards))


def _run_shards(ray: ModuleType, rows: list[dict[str, Any]], worker: type, kwargs: dict[str, Any],
                workers: int | None) -> list[bytes]:
    """Each row (one shard) through an actor pool of ``worker``; the packed results in shard
    order."""
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    pool = ray.data.ActorPoolStrategy(size=_workers(ray, len(rows), workers))
    out = ds.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=1, compute=pool,
                         num_cpus=1, batch_format="numpy")
    got: dict[int, bytes] = {}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, blob in zip(batch["shard"], batch["lists"], strict=True):
            got[int(shard)] = bytes(blob)
    missing = sorted(set(range(len(rows))) - set(got))
    if missing:  # never expected: Ray Data retries failed tasks
        raise RuntimeError(f"Ray returned no lists for shards {missing}")
    return [got[n] for n in range(len(rows))]


def recommend_batch_ray(
    model_dir: str | Path, user_ids: Sequence[str], k: int = 10,
    preset: str | Preset = "balanced", *, discovery: float | None = None,
    candidates: np.ndarray | None = None, explore: float | None = None,
    address: str | None = None, workers: int | None = None, progress: bool = False,
    loaded: Recommender | None = None,
) -> list[ItemList]:
    """The lists ``Recommender.load(model_dir).pipeline(preset).recommend_many`` makes for
    ``user_ids`` in batches of ``SHARD``, made on Ray: one shard per batch, one model load
    per worker.  ``workers`` bounds the actors (default: the cluster's CPUs); ``loaded`` is
    the model already loaded from ``model_dir`` here, if the caller has it."""
    rec = loaded if loaded is not None else Recommender.load(model_dir)
    pipe = rec.pipeline(preset)
    _refuse_order_dependent(pipe, explore)
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not user_ids:
        return []
    rows = [{"shard": n, "users": json.dumps([str(u) for u in user_ids[s : s + SHARD]])}
            for n, s in enumerate(range(0, len(user_ids), SHARD))]
    files = _model_files(model_dir)
    with ray_session(address, workers, progress) as ray:
        t0 = time.perf_counter()
        kwargs = {"model_ref": [ray.put(files)], "preset": pipe.preset, "k": int(k),
                  "discovery": discovery, "candidates": candidates, "explore": explore}
        blobs = _run_shards(ray, rows, _RecommendWorker, kwargs, workers)
        log.info("Ray: %d lists in %d shards in %.2fs", len(user_ids), len(rows),
                 time.perf_counter() - t0)
    return [lst for blob in blobs for lst in unpack_lists(blob)]


# --- evaluation ------------------------------------------------------------------------------

class _EvaluateWorker(_Model):
    """A Ray Data actor for evaluation: one model load; for a shard of test users, the lists
    of every job the single-process runner makes (see ``serendip.eval.runner``)."""

    def __init__(self, model_ref: list[Any], jobs: list[tuple[str, Preset, list[float]]],
                 k: int, cold_items: np.ndarray | None):
        super().__init__(model_ref)
        self.jobs, self.k, self.cold_items = jobs, k, cold_items

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = []
        for users in batch["users"]:
            queries = [Query(int(u), self.rec.data.history(int(u)))
                       for u in json.loads(str(users))]
            lists: list[ItemList] = []
            for kind, preset, values in self.jobs:
                for part in job_lists(self.rec, kind, preset, values, queries, self.k,
                                      self.cold_items):
                    lists.extend(part)
            blobs.append(pack_lists(lists))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "lists": np.array(blobs, dtype=object)}


def job_lists(rec: Recommender, kind: str, preset: Preset, values: Sequence[float],
              queries: Sequence[Query], k: int, cold_items: np.ndarray | None,
              ) -> list[list[ItemList]]:
    """The lists the runner makes for one job on ``queries`` (at most ``SHARD`` of them, one
    batch): a single list set for a model or a preset (``evaluate_pipeline``), one per knob
    value for a sweep (``sweep_knob``: pools scored once, re-ranked per value, each value on
    a fresh pipeline)."""
    from serendip.pipeline import _top_allowed

    if kind != "sweep":
        return [Pipeline(rec, preset).recommend_many(queries, k, None, candidates=cold_items)]
    base = Pipeline(rec, preset)
    if rec.retriever() is not None or base.bandit is not None:
        return [Pipeline(rec, preset).recommend_many(queries, k, v, candidates=cold_items)
                for v in values]
    eps = base.explorer.config.epsilon
    n_rank, n_cand = base._pool_sizes(k, eps)
    allowed = None
    if cold_items is not None:
        allowed = np.zeros(rec.data.n_items, dtype=bool)
        allowed[cold_items] = True
    pools = [_top_allowed(row, q, base._allowed_for(q, allowed), n_cand)
             for row, q in zip(base.hybrid.score_many(queries), queries, strict=True)]
    out = []
    for v in values:
        pipe = Pipeline(rec, preset)
        d = preset.internal_discovery(v)
        out.append([pipe._finish(Query(q.user, q.history, q.text, discovery=d), pool, k, eps,
                                 n_rank) for q, pool in zip(queries, pools, strict=True)])
    return out


def evaluate_lists_ray(
    rec: Recommender, users: np.ndarray, jobs: Sequence[tuple[str, Preset, Sequence[float]]],
    k: int, cold_items: np.ndarray | None = None, *, address: str | None = None,
    workers: int | None = None, progress: bool = False,
) -> list[list[list[ItemList]]]:
    """For each job ``(kind, preset, knob values)``, the lists of every test user in
    ``users`` (``[job][value or 0][user]``), sharded by user on Ray: the fitted model is saved
    once, shipped through the object store and loaded once per worker."""
    for _kind, preset, _ in jobs:
        _refuse_order_dependent(Pipeline(rec, preset))
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    sizes = [len(values) if kind == "sweep" else 1 for kind, _, values in jobs]
    if len(users) == 0:
        return [[[] for _ in range(n)] for n in sizes]
    with tempfile.TemporaryDirectory(prefix="serendip-eval-") as tmp:
        rec.save(Path(tmp) / "model")
        files = _model_files(Path(tmp) / "model")
    rows = [{"shard": n, "users": json.dumps([int(u) for u in users[s : s + SHARD]])}
            for n, s in enumerate(range(0, len(users), SHARD))]
    job_args = [(kind, preset, [float(v) for v in values]) for kind, preset, values in jobs]
    with ray_session(address, workers, progress) as ray:
        kwargs = {"model_ref": [ray.put(files)], "jobs": job_args, "k": int(k),
                  "cold_items": cold_items}
        blobs = _run_shards(ray, rows, _EvaluateWorker, kwargs, workers)
    out: list[list[list[ItemList]]] = [[[] for _ in range(n)] for n in sizes]
    for blob, s in zip(blobs, range(0, len(users), SHARD), strict=True):
        lists = unpack_lists(blob)
        m = min(SHARD, len(users) - s)
        pos = 0
        for j, n in enumerate(sizes):
            for v in range(n):
                out[j][v].extend(lists[pos : pos + m])
                pos += m
    return out


def run_experiment_ray(
    data: Any, protocol: str, models: Sequence[str] = ("popularity", "ease", "als"),
    presets: Sequence[str | Preset] = ("accurate", "balanced", "discovery"), *, k: int = 10,
    sweep: Sequence[float] | None = None, fit_config: Any = None, split: Any = None,
    progress: bool = True, address: str | None = None, workers: int | None = None,
) -> Any:
    """``serendip.eval.runner.run_experiment`` with the lists made on Ray, sharded by test
    user: the model is fitted here once, every metric is computed here from the gathered
    lists, so the rows are those of the single-process runner (``recommend_seconds`` is the
    Ray stage's time, shared by every row)."""
    import pandas as pd

    from serendip.data.splits import make_split
    from serendip.eval.runner import (
        DEFAULT_SWEEP,
        _metrics,
        experiment_config,
        experiment_jobs,
        truth_of,
    )

    sweep = DEFAULT_SWEEP if sweep is None else sweep
    cfg = experiment_config(data, models, fit_config)
    split = split or make_split(data, protocol)
    t0 = time.perf_counter()
    rec = Recommender.fit(split.train, cfg, progress=progress)
    fit_seconds = time.perf_counter() - t0
    truth = truth_of(split)
    users = np.fromiter(truth.keys(), dtype=np.int64)
    jobs = experiment_jobs(rec, models, presets)
    values = [float(v) for v in sweep]
    bad_values = [v for v in values if not 0.0 <= v <= 1.0]
    if bad_values:
        raise ConfigError(f"knob values must be between 0 and 1, got {bad_values}")
    t0 = time.perf_counter()
    lists = evaluate_lists_ray(rec, users, [(kind, p, values) for kind, _, p in jobs], k,
                               split.cold_items, address=address, workers=workers,
                               progress=progress)
    seconds = time.perf_counter() - t0
    rows = []
    for (kind, name, preset), found in zip(jobs, lists, strict=True):
        points = (list(zip(values, found, strict=True)) if kind == "sweep"
                  else [(preset.discovery, found[0])])
        for d, job in points:
            metrics = _metrics(job, users, truth, split, k)
            metrics["recommend_seconds"] = seconds
            rows.append({"protocol": protocol, "split": split.name, "kind": kind, "name": name,
                         "discovery": d, "k": k, "fit_seconds": fit_seconds, **metrics})
    return pd.DataFrame(rows)
