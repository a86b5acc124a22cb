"""Batch work on a Ray cluster: recommendation lists and evaluation, sharded by user, and
encoding a catalog, sharded by encoder batch.

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

Encoding a catalog (``fit --ray``) is sharded the same way: ``RayEncoder`` keeps the
single-process encoder's longest-first order and its batches, a shard is a run of whole
batches, and each actor loads the sentence encoder once and runs every batch of its shards
through the same forward pass, so the vectors are equal bit for bit.  The embedding cache
stays with the caller: cached texts never travel.

Ray is imported only when a function here is called, so serendip does not depend on it.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serendip.errors import ConfigError
from serendip.pipeline import Pipeline, Preset, Recommender
from serendip.text.encoder import _DEFAULT_MODEL_ID, DEFAULT_MODEL, Encoder, EncoderConfig
from serendip.types import ItemList, Query

__all__ = [
    "RAY_INSTALL", "SHARD", "import_ray", "ray_session", "order_dependent", "pack_lists",
    "unpack_lists", "recommend_batch_ray", "evaluate_lists_ray", "job_lists",
    "run_experiment_ray", "RayEncoder", "SHARD_BATCHES", "RayTrainer", "recommend_batch_local",
]

log = logging.getLogger(__name__)

#: how to install the optional dependency (the one-line error says it)
RAY_INSTALL = 'pip install "ray[data,client]"'
#: users per shard: ``Pipeline.recommend_many``'s batch and the CLI's, so a shard is scored as
#: the very batch the single-process path scores
SHARD = 256
#: encoder batches per encoding shard (``RayEncoder``): a shard is this many whole batches of
#: ``EncoderConfig.batch_size`` texts, 1,024 texts at the default batch of 64
SHARD_BATCHES = 16


def _positive_int(name: str, value: object) -> int:
    """``value`` as an int when it is a positive integer (numpy's too, not a bool), else a
    one-line error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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


def _refuse_order_dependent(pipe: Pipeline, explore: float | None = None,
                            where: str = "on Ray", option: str = "--ray") -> None:
    why = order_dependent(pipe)
    if why is None and explore is not None and explore > 0 and pipe.bandit is None:
        why = "exploration draws from one random stream over the whole batch"
    if why is not None:
        raise ConfigError(f"preset {pipe.preset.name!r} cannot run {where} with results equal "
                          f"to one process: {why}; run it without {option}")


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

def _unpack_files(ref: Any, prefix: str) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """A directory's files shipped through the object store (``ref``: ``_model_files``),
    written under a fresh temporary directory (kept alive by the returned handle)."""
    files: dict[str, bytes] = import_ray().get(ref)
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    root = Path(tmp.name) / "model"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp, root


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
        self._tmp, root = _unpack_files(model_ref[0], "serendip-model-")
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


def _workers(ray: ModuleType, n_shards: int, workers: int | None, cpus: int = 1) -> int:
    """Actors in the pool: ``workers``, else as many of ``cpus`` CPUs each as the cluster
    holds; never more than there are shards."""
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus)
    return max(1, min(workers, n_shards))


def _run_shards(ray: ModuleType, rows: list[dict[str, Any]], worker: type, kwargs: dict[str, Any],
                workers: int | None, key: str = "lists", cpus: int = 1,
                gpus: int = 0) -> list[bytes]:
    """Each row (one shard) through an actor pool of ``worker`` (``cpus`` CPUs and ``gpus``
    GPUs reserved per actor); the packed results (the workers' ``key`` column) in shard
    order."""
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    pool = ray.data.ActorPoolStrategy(size=_workers(ray, len(rows), workers, cpus))
    out = ds.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=1, compute=pool,
                         num_cpus=cpus, num_gpus=gpus, batch_format="numpy")
    got: dict[int, bytes] = {}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, blob in zip(batch["shard"], batch[key], strict=True):
            got[int(shard)] = bytes(blob)
    missing = sorted(set(range(len(rows))) - set(got))
    if missing:  # never expected: Ray Data retries failed tasks
        raise RuntimeError(f"Ray returned no {key} for shards {missing}")
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


# --- several processes on this machine --------------------------------------------------------
#: what the forked workers of ``recommend_batch_local`` read (set in the parent before the fork,
#: so each child shares the loaded model's memory instead of loading its own); one batch at a
#: time per process (``_FORK_LOCK``)
_FORKED: dict[str, Any] = {}
_FORK_LOCK = threading.Lock()


def _forked_shard(n: int) -> tuple[int, bytes]:
    from threadpoolctl import threadpool_limits

    job = _FORKED
    with threadpool_limits(1):  # one BLAS thread per process: the processes share the cores
        lists = job["pipe"].recommend_many(job["shards"][n], job["k"], job["discovery"],
                                           job["candidates"], explore=job["explore"])
    return n, pack_lists(lists)


def recommend_batch_local(
    pipe: Pipeline, queries: Sequence[Query], k: int = 10, *, discovery: float | None = None,
    candidates: np.ndarray | None = None, explore: float | None = None, processes: int = 2,
    progress: Callable[[int], object] | None = None,
) -> list[ItemList]:
    """``pipe.recommend_many`` for ``queries`` in batches of ``SHARD``, by ``processes`` forked
    copies of this process that share its loaded model (copy-on-write: the model's arrays and
    index are not duplicated), one BLAS thread each.  The lists equal the single-process
    lists bit for bit: the shards are its batches, and no product that decides a list depends
    on the number of BLAS threads.  ``progress(n)`` is called with each shard's size as it
    completes.  Needs the ``fork`` start method (Linux, and other POSIX systems); presets
    whose lists depend on the lists before them are refused, as on Ray."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    processes = _positive_int("processes", processes)
    _refuse_order_dependent(pipe, explore, "in several processes", "--processes")
    if "fork" not in mp.get_all_start_methods():
        raise ConfigError("--processes needs the fork start method, which this system lacks; "
                          "run without it, or use --ray")
    shards = [list(queries[s : s + SHARD]) for s in range(0, len(queries), SHARD)]
    if processes == 1 or len(shards) <= 1:
        out: list[ItemList] = []
        for shard in shards:
            out.extend(pipe.recommend_many(shard, k, discovery, candidates, explore=explore))
            if progress is not None:
                progress(len(shard))
        return out
    got: dict[int, list[ItemList]] = {}
    with _FORK_LOCK:
        _FORKED.update(pipe=pipe, shards=shards, k=k, discovery=discovery,
                       candidates=candidates, explore=explore)
        try:
            with ProcessPoolExecutor(min(processes, len(shards)),
                                     mp_context=mp.get_context("fork")) as pool:
                futures = [pool.submit(_forked_shard, n) for n in range(len(shards))]
                for future in as_completed(futures):
                    n, blob = future.result()
                    got[n] = unpack_lists(blob)
                    if progress is not None:
                        progress(len(shards[n]))
        except BrokenProcessPool:
            raise ConfigError("a process making the lists stopped before its shard was done "
                              "(out of memory?); run with fewer --processes") from None
        finally:
            _FORKED.clear()
    return [lst for n in range(len(shards)) for lst in got[n]]


# --- training --------------------------------------------------------------------------------
def _als_rows(config: dict[str, Any], rows: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One shard of an ALS half-step, on a worker: its rows of ``x`` solved from all of ``y``
    with implicit's CPU solver, BLAS on one thread (as ``ALS.train`` runs it)."""
    from threadpoolctl import threadpool_limits

    from serendip.models.als import ALSConfig, cpu_solver

    c = ALSConfig(**config)
    # arguments come read-only from the object store, and implicit's solver takes writable
    # buffers (it writes only ``out``)
    out = np.array(x, dtype=np.float32, copy=True)
    fixed = y if y.flags.writeable else np.array(y, copy=True)
    if not all(a.flags.writeable for a in (rows.data, rows.indices, rows.indptr)):
        rows = rows.copy()
    with threadpool_limits(1, "blas"):
        cpu_solver(c)(rows, out, fixed, c.regularization, num_threads=1)
    return out


class RayTrainer:
    """``Recommender.fit``'s ``trainer`` for ``fit --ray``: ALS is trained on a Ray cluster,
    every other model here (their training does not split into independent parts, or takes
    seconds).

    ALS alternates two half-steps, the users' factors from the items' and back; within one,
    each row is solved from its own confidence row, its own start and the other side's
    factors, independently of every other row.  Each half-step is therefore cut into row
    ranges (``shards``, default one per CPU of the cluster), solved by Ray tasks of one CPU
    each, and gathered here before the next.  The rows of the confidence matrix and of its
    transpose travel to the object store once; the fixed side's factors once per half-step.
    The factors equal a single-process fit's bit for bit (``ALS.train_in_half_steps``).  When
    ALS would train on a CUDA GPU here, it does so here.
    """

    def __init__(self, address: str | None = None, *, shards: int | None = None,
                 progress: bool = False) -> None:
        self.address = address or None
        self.shards = None if shards is None else _positive_int("shards", shards)
        self.progress = progress
        #: what the last ALS training sent to Ray: shards per half-step, half-steps
        self.sent_shards = self.sent_steps = 0

    def __call__(self, scorer: Any, data: Any) -> None:
        from serendip.models.als import ALS

        if not isinstance(scorer, ALS) or self._on_gpu(scorer):
            scorer.train(data)
            return
        self.train_als(scorer, data)

    @staticmethod
    def _on_gpu(scorer: Any) -> bool:
        if not scorer.config.use_gpu:
            return False
        import implicit

        return bool(implicit.gpu.HAS_CUDA)

    def train_als(self, scorer: Any, data: Any) -> None:
        """Train ``scorer`` (an ``ALS``) with its half-steps sharded on Ray."""
        config = scorer.config.model_dump()
        self.sent_shards = self.sent_steps = 0
        with ray_session(self.address, None, self.progress) as ray:
            task = ray.remote(num_cpus=1)(_als_rows)
            n = self.shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
            # per matrix (users x items, then its transpose): the row ranges and their refs,
            # holding the matrix so that its id is not reused while cached
            parts: dict[int, tuple[Any, list[tuple[int, int, Any]]]] = {}
            t0 = time.perf_counter()

            def half_step(rows: Any, x: np.ndarray, y: np.ndarray) -> None:
                got = parts.get(id(rows))
                if got is None or got[0] is not rows:
                    cuts = np.unique(np.linspace(0, x.shape[0], n + 1).astype(np.int64))
                    got = (rows, [(int(a), int(b), ray.put(rows[int(a):int(b)]))
                                  for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
                    parts[id(rows)] = got
                y_ref = ray.put(y)
                futures = [task.remote(config, ref, x[a:b], y_ref) for a, b, ref in got[1]]
                for (a, b, _), solved in zip(got[1], ray.get(futures), strict=True):
                    x[a:b] = solved
                self.sent_shards = len(got[1])
                self.sent_steps += 1
                if self.sent_steps % 2 == 0:
                    log.info("ALS on Ray: iteration %d of %d (%d shards per half-step), "
                             "%.1fs", self.sent_steps // 2, scorer.config.iterations,
                             len(got[1]), time.perf_counter() - t0)

            scorer.train_in_half_steps(data, half_step)


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
        out.append([pipe._finish(replace(q, discovery=d), pool, k, eps,
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


# --- encoding the catalog --------------------------------------------------------------------

def _longest_first(texts: Sequence[str]) -> list[int]:
    """The order ``Encoder._encode_uncached`` encodes ``texts`` in: longest first, ties in
    input order (a stable sort), so that its batches are the very batches made here."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


def _pack_array(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _unpack_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)  # type: ignore[no-any-return]


class _EncodeWorker:
    """A Ray Data actor: one encoder load, then the raw vectors of shard after shard of
    texts, each shard run through the model in the batches the single-process path makes."""

    def __init__(self, config: dict[str, Any], batch_size: int, threads: int,
                 model_ref: list[Any]):
        import torch

        # a CPU forward pass sums in an order that depends on the number of threads: run as
        # many as the single-process path runs, whatever CPUs Ray reserved for this actor
        torch.set_num_threads(threads)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if model_ref:  # a local model directory, shipped through the object store
            self._tmp, root = _unpack_files(model_ref[0], "serendip-encoder-")
            config = {**config, "model": str(root)}
        self.encoder = Encoder(EncoderConfig(**config))
        self.encoder._load()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = []
        bs = self.batch_size
        for texts_json in batch["texts"]:
            texts: list[str] = json.loads(str(texts_json))
            vecs = [self.encoder._forward(texts[s : s + bs]) for s in range(0, len(texts), bs)]
            blobs.append(_pack_array(np.concatenate(vecs)))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "vectors": np.array(blobs, dtype=object)}


def _largest_node_cpus(ray: ModuleType) -> int:
    """CPUs of the cluster's largest live node."""
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus, default=1)))


class RayEncoder(Encoder):
    """An ``Encoder`` whose texts that are not cached are encoded on a Ray cluster.

    The driver does everything ``Encoder.encode`` does (deduplication, the embedding cache,
    normalisation); only the texts the cache lacks go to Ray.  They are put in the order the
    single-process path encodes them (longest first) and cut into the same batches of
    ``config.batch_size``; a shard is a run of ``shard_batches`` whole batches, and each actor
    (one encoder load each) runs the batches of its shards through ``Encoder._forward`` one
    by one.  Every forward pass thus sees the texts, padding and shapes the single-process
    pass sees.  On a CPU the sums inside a forward pass also depend on the number of torch
    threads, so each actor runs ``threads`` of them (default: as many as this process runs,
    which is what the single-process path would use) and reserves that many CPUs (at most a
    node's).  The vectors are then equal bit for bit on the same hardware and libraries.

    The workers run the device and precision resolved here, so the cache key written here
    (``model_id``) names what they ran.  A model given as a local directory travels through
    the object store (the workers need no copy of it); the bundled default model and names
    resolved from the Hugging Face cache are loaded by each worker from its own install.
    """

    def __init__(self, config: EncoderConfig | dict[str, Any] | None = None, *,
                 address: str | None = None, workers: int | None = None,
                 shard_batches: int = SHARD_BATCHES, threads: int | None = None,
                 progress: bool | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        for name, value in (("shard_batches", shard_batches), ("workers", workers),
                            ("threads", threads)):
            if value is not None:
                _positive_int(name, value)
        self.address = address or None
        self.workers = workers
        self.shard_batches = shard_batches
        #: torch threads per actor (default: what this process runs, when it encodes)
        self.threads = threads
        #: Ray's progress bars and worker logs (default: as ``encode``'s ``progress``)
        self.ray_progress = progress
        #: what the last ``encode`` sent to Ray: texts, shards, and actors that encoded them
        self.sent_texts = self.sent_shards = self.sent_workers = 0

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        self.sent_texts = self.sent_shards = self.sent_workers = 0
        return super().encode(texts, progress)

    @staticmethod
    def _local_threads() -> int:
        import torch

        return int(torch.get_num_threads())

    def _worker_config(self) -> dict[str, Any]:
        """The encoder config the workers run: this one with the device and precision
        resolved here (so they match the cache key) and no cache of their own."""
        values = self.config.model_dump()
        values["device"] = self.device
        if not self.config.quantize:
            values["precision"] = self.precision
        values["cache_dir"] = None
        return values

    def _model_files(self) -> dict[str, bytes] | None:
        """A local model directory's files (read once, here), or None when the workers load
        the model from their own install."""
        if self.config.model in (DEFAULT_MODEL, _DEFAULT_MODEL_ID):
            return None
        root = Path(self._model_path())
        if not root.is_dir():
            return None
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    def _encode_uncached(self, texts: list[str], progress: bool) -> np.ndarray:
        order = _longest_first(texts)
        per_shard = self.config.batch_size * self.shard_batches
        bounds = list(range(0, len(order), per_shard))
        # ASCII JSON: every text, even one with a lone surrogate, travels and comes back exact
        rows = [{"shard": n, "texts": json.dumps([texts[i] for i in order[s : s + per_shard]])}
                for n, s in enumerate(bounds)]
        config = self._worker_config()
        threads = self.threads or self._local_threads()
        files = self._model_files()
        show = progress if self.ray_progress is None else self.ray_progress
        with ray_session(self.address, self.workers, show) as ray:
            t0 = time.perf_counter()
            # reserve the actor's threads as CPUs, but never more than the largest node has
            # (it then runs its threads on fewer cores: slower, the same sums)
            cpus = max(1, min(threads, _largest_node_cpus(ray)))
            # never more actors than the cluster's CPUs (and GPUs) hold at once
            fit = _workers(ray, len(rows), None, cpus)
            gpus = 1 if config["device"] == "cuda" else 0  # each actor on a GPU of its own
            if gpus:
                fit = min(fit, int(ray.cluster_resources().get("GPU", 0)))
                if fit < 1:
                    raise ConfigError("the encoder runs on CUDA here, but the Ray cluster has "
                                      "no GPU; set [encoder] device = \"cpu\" in the fit "
                                      "config, or fit without --ray")
            workers = min(self.workers or fit, fit)
            kwargs = {"config": config, "batch_size": self.config.batch_size,
                      "threads": threads,
                      "model_ref": [ray.put(files)] if files is not None else []}
            blobs = _run_shards(ray, rows, _EncodeWorker, kwargs, workers, key="vectors",
                                cpus=cpus, gpus=gpus)
            log.info("Ray: %d texts encoded in %d shards by %d actors of %d threads in %.2fs",
                     len(texts), len(rows), workers, threads, time.perf_counter() - t0)
        self.sent_texts, self.sent_shards, self.sent_workers = len(texts), len(rows), workers
        out: np.ndarray | None = None
        for s, blob in zip(bounds, blobs, strict=True):
            vecs = _unpack_array(blob)
            idx = order[s : s + per_shard]
            if vecs.shape[0] != len(idx):  # never expected: a shard answers for its texts
                raise RuntimeError(f"Ray returned {vecs.shape[0]} vectors for a shard of "
                                   f"{len(idx)} texts")
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        assert out is not None
        return out

    def __repr__(self) -> str:
        return f"Ray{super().__repr__()[:-1]}, address={self.address!r})"
