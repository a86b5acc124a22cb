"""Load benchmark of the HTTP service: recommendation latency and event-ingestion throughput.

Starts ``serendip serve`` in a subprocess on a free loopback port over two catalogs, then
drives it with an asyncio + httpx open-loop load generator (bounded in count and in time):

* ``ml100k``: MovieLens-100K (1,682 items), the default fit config.
* ``synthetic``: a generated 100,000-item catalog (text titles, genres, descriptions) with
  ~200,000 random events, served with no fit config: above 40,000 items the default models
  leave out EASE and ItemKNN (a dense items x items matrix, 80 GB here) and fit popularity,
  ALS, semantic, TextCF and transition; the shipped presets put EASE's weight on ALS, and
  requests are answered by candidate retrieval (``serendip.models.retrieval``).

Phases (per catalog):

1. recommendations: ``GET /v1/users/{id}/recommendations?preset=balanced`` for random known
   users at a fixed arrival rate (default 100 req/s for 20 s, after a 3 s warm-up).  Requests
   are sent on schedule whether or not earlier ones have finished (open loop), and latency
   is measured from the *scheduled* send time, so a stalled server cannot hide its queueing
   (no coordinated omission).
2. ingestion: ``POST /v1/events`` in batches of 100 and one event per request, each event with
   a fresh idempotency key, with a few requests in flight; the rate is acknowledged events
   per second (the store acknowledges only after its transaction has committed).

The server is pinned to ``--server-cpus`` (default: the first two cores, when the machine has
at least four, so that the load generator runs on the others) with BLAS/OpenMP threads
limited to match.  Only 127.0.0.1 is ever contacted.

    .venv/bin/python bench/load.py                      # both catalogs
    .venv/bin/python bench/load.py --catalog ml100k --rate 100 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent

TARGET_P99_MS = 30.0
TARGET_EVENTS_PER_S = 2000.0


# ------------------------------------------------------------------------- synthetic data
_ADJ = (
    "silent crimson hidden golden broken frozen electric wandering final lost secret wild "
    "distant burning quiet brave strange hollow midnight northern velvet iron paper glass "
    "savage gentle forgotten restless bright lonely"
).split()
_NOUN = (
    "river empire garden station horizon letter machine kingdom harbor mirror signal orchard "
    "voyage circus planet detective island winter lantern frontier robot dragon symphony "
    "village comet archive labyrinth heist canyon"
).split()
_GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Horror "
    "Musical Mystery Romance Sci-Fi Thriller War Western Family History Sport"
).split()
_PLOT = (
    "a reluctant hero", "two estranged sisters", "a retired spy", "a curious child",
    "an ambitious chef", "a crew of misfits", "a small-town teacher", "a talking cat",
    "a disgraced scientist", "a travelling band",
)
_VERB = (
    "must save", "tries to escape", "falls for", "uncovers the truth about", "goes looking for",
    "races against time to rebuild", "accidentally inherits", "sets out to steal",
)


def synthetic_catalog(n_items: int = 100_000, n_events: int = 200_000, n_users: int = 20_000,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated items (title, genres, description) and events with Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    adj = rng.integers(0, len(_ADJ), n_items)
    noun = rng.integers(0, len(_NOUN), n_items)
    year = rng.integers(1950, 2025, n_items)
    g1 = rng.integers(0, len(_GENRES), n_items)
    g2 = rng.integers(0, len(_GENRES), n_items)
    who = rng.integers(0, len(_PLOT), n_items)
    verb = rng.integers(0, len(_VERB), n_items)
    obj = rng.integers(0, len(_NOUN), n_items)
    items = pd.DataFrame({
        "item_id": [f"s{i}" for i in range(n_items)],
        "title": [
            f"The {_ADJ[a].title()} {_NOUN[b].title()} {i % 997} ({y})"
            for i, (a, b, y) in enumerate(zip(adj, noun, year, strict=True))
        ],
        "genres": [
            _GENRES[a] if a == b else f"{_GENRES[a]}|{_GENRES[b]}"
            for a, b in zip(g1, g2, strict=True)
        ],
        "description": [
            f"{_PLOT[w].capitalize()} {_VERB[v]} the {_ADJ[a]} {_NOUN[o]}."
            for w, v, a, o in zip(who, verb, adj, obj, strict=True)
        ],
    })
    # Item popularity ~ Zipf (a long tail); user activity ~ lognormal; a user's items come
    # mostly from two favourite genres, so collaborative and text signals have structure.
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = pop[rng.permutation(n_items)]
    by_genre = [np.flatnonzero(g1 == g) for g in range(len(_GENRES))]
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    counts = np.maximum(1, np.round(activity / activity.sum() * n_events)).astype(int)
    users, chosen = [], []
    for u, c in enumerate(counts):
        favs = rng.choice(len(_GENRES), 2, replace=False)
        pool = np.concatenate([by_genre[f] for f in favs])
        n_fav = int(round(c * 0.7))
        p = pop[pool] / pop[pool].sum()
        a = rng.choice(pool, size=min(n_fav, len(pool)), replace=False, p=p)
        b = rng.choice(n_items, size=c - len(a), replace=True, p=pop / pop.sum())
        picks = np.unique(np.concatenate([a, b]))
        users.append(np.full(len(picks), u))
        chosen.append(rng.permutation(picks))
    uu = np.concatenate(users)
    ii = np.concatenate(chosen)
    events = pd.DataFrame({
        "user_id": [f"u{u}" for u in uu],
        "item_id": [f"s{i}" for i in ii],
        "timestamp": 1.6e9 + np.arange(len(uu), dtype=np.float64) * 60.0,
    })
    return items, events


# ------------------------------------------------------------------------- load generator
@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)  # from the scheduled send time
    service_ms: list[float] = field(default_factory=list)  # from the actual send time
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    units: int = 0  # events acknowledged (ingestion phases)
    elapsed_s: float = 0.0
    late_sends: int = 0  # requests the generator itself sent > 5 ms after schedule

    def pct(self, q: float, which: str = "latencies_ms") -> float:
        xs = sorted(getattr(self, which))
        if not xs:
            return math.nan
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100.0 * len(xs)) - 1))]

    def note_error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(msg[:200])


async def open_loop(phase: Phase, send: Callable[[], Awaitable[httpx.Response]], rate: float,
                    duration: float, max_requests: int, measure: bool = True) -> None:
    """Send ``rate`` requests per second on a fixed schedule for ``duration`` seconds."""
    n = min(max_requests, int(rate * duration))
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one(scheduled: float) -> None:
        start = loop.time()
        if start - scheduled > 0.005:
            phase.late_sends += 1
        try:
            r = await send()
        except httpx.HTTPError as e:
            phase.note_error(f"{type(e).__name__}: {e}")
            return
        end = loop.time()
        if r.status_code != 200:
            phase.note_error(f"HTTP {r.status_code}: {r.text}")
            return
        if measure:
            phase.ok += 1
            phase.latencies_ms.append((end - scheduled) * 1000.0)
            phase.service_ms.append((end - start) * 1000.0)

    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    # Bounded in time: whatever has not answered 10 s after the last send counts as an error.
    done, pending = await asyncio.wait(tasks, timeout=10.0) if tasks else (set(), set())
    for t in pending:
        t.cancel()
        phase.note_error("no answer within 10 s")
    phase.elapsed_s = loop.time() - t0


async def closed_loop(phase: Phase, send: Callable[[], Awaitable[tuple[int, int]]],
                      concurrency: int, duration: float, max_requests: int,
                      expect: int = 201) -> None:
    """``concurrency`` workers send back to back until the count or the time runs out."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + duration
    budget = iter(range(max_requests))

    async def worker() -> None:
        while loop.time() < deadline and next(budget, None) is not None:
            start = loop.time()
            try:
                status, acked = await send()
            except httpx.HTTPError as e:
                phase.note_error(f"{type(e).__name__}: {e}")
                continue
            if status != expect:
                phase.note_error(f"HTTP {status}")
                continue
            phase.ok += 1
            phase.units += acked
            phase.latencies_ms.append((loop.time() - start) * 1000.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.elapsed_s = loop.time() - t0


async def drain(client: httpx.AsyncClient, limit_s: float = 120.0) -> None:
    """Wait until an overloaded server has worked off its backlog (requests the generator gave
    up on are still computed), so that one phase's queue does not count against the next."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        t = loop.time()
        with contextlib.suppress(httpx.HTTPError):
            await client.get("/healthz", timeout=limit_s)
        if loop.time() - t < 0.05:
            return
        await asyncio.sleep(0.2)


async def run_load(base: str, key: str, users: list[str], items: list[str], args: argparse.Namespace,
                   label: str) -> list[Phase]:
    headers = {"X-API-Key": key}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    rnd = random.Random(7)
    phases: list[Phase] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=10.0,
                                 trust_env=False) as client:

        def rec_request() -> Awaitable[httpx.Response]:
            u = rnd.choice(users)
            return client.get(f"/v1/users/{u}/recommendations",
                              params={"k": 10, "preset": args.preset})

        # Unloaded service time first: one request at a time.
        seq = Phase(f"{label}: recommendations one at a time, preset {args.preset}")

        async def one_rec() -> tuple[int, int]:
            r = await rec_request()
            return r.status_code, 1

        await closed_loop(seq, one_rec, 1, args.duration, args.sequential, expect=200)
        phases.append(seq)
        rates = [float(x) for x in str(args.rate).split(",") if x.strip()]
        warm = Phase("warm-up")
        await open_loop(warm, rec_request, rates[0], args.warmup, 10**9, measure=False)
        await drain(client)
        for rate in rates:
            recs = Phase(f"{label}: recommendations {rate:g} req/s, preset {args.preset}")
            await open_loop(recs, rec_request, rate, args.duration, args.max_requests)
            phases.append(recs)
            await drain(client)

        def events_body(n: int) -> dict[str, object]:
            return {"events": [
                {"user_id": rnd.choice(users), "item_id": rnd.choice(items), "type": "click",
                 "idempotency_key": uuid.uuid4().hex}
                for _ in range(n)
            ]}

        for size, conc in ((100, args.batch_concurrency), (1, args.single_concurrency)):
            ph = Phase(f"{label}: events, {size} per request, {conc} in flight")

            async def send(size: int = size) -> tuple[int, int]:
                r = await client.post("/v1/events", json=events_body(size))
                acks = r.json().get("acks", []) if r.status_code == 201 else []
                return r.status_code, sum(1 for a in acks if not a.get("duplicate"))

            await closed_loop(ph, send, conc, args.ingest_duration,
                              max(1, args.max_events // size))
            phases.append(ph)
            await drain(client)
    return phases


# ------------------------------------------------------------------------- server process
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_cpus(spec: str | None) -> list[int] | None:
    avail = sorted(os.sched_getaffinity(0))
    if spec == "none":
        return None
    if spec:
        return [int(x) for x in spec.split(",")]
    return avail[:2] if len(avail) >= 4 else None


@contextlib.contextmanager
def serve(cmd: list[str], env: dict[str, str], cpus: list[int] | None, port: int, key: str,
          log_path: Path, start_timeout: float) -> Iterator[str]:
    """Run ``serendip serve`` until the block ends; yields its base URL once /readyz is 200."""
    env = {**os.environ, **env}
    if cpus:
        n = str(len(cpus))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = n
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=preexec, start_new_session=True)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}:\n"
                                   + log_path.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{base}/readyz", timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"server not ready within {start_timeout:.0f} s; see {log_path}:\n"
                               + log_path.read_text()[-3000:])
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ------------------------------------------------------------------------- catalogs
def serve_command(args: argparse.Namespace, catalog: str, work: Path, port: int,
                  key: str) -> tuple[list[str], list[str], list[str]]:
    """The ``serendip serve`` command line, and the user and item ids to draw requests from."""
    exe = str(Path(sys.executable).with_name("serendip"))
    # no automatic retrain: the ingestion phase would start one, and it measures serving only
    cmd = [exe, "-q", "serve", "--host", HOST, "--port", str(port), "--data-dir", str(work),
           "--api-key", key, "--refresh-interval", "0"]
    if catalog == "ml100k":  # an empty store seeds itself with MovieLens-100K
        from serendip.data import load_movielens_100k

        data = load_movielens_100k()
        return cmd, [str(u) for u in data.user_ids], [str(i) for i in data.item_ids]
    print(f"[{catalog}] generating {args.items:,} items and ~{args.events:,} events",
          file=sys.stderr, flush=True)
    items, events = synthetic_catalog(args.items, args.events, args.users)
    items.to_csv(work / "items.csv", index=False)
    events.to_csv(work / "events.csv", index=False)
    # no fit config: above 40,000 items the default models are the large-catalog set, and the
    # shipped presets put EASE's weight on ALS; requests are served by candidate retrieval
    cmd += ["--seed-interactions", str(work / "events.csv"), "--seed-items", str(work / "items.csv")]
    return cmd, sorted(set(events["user_id"])), items["item_id"].tolist()


# ------------------------------------------------------------------------- report
def fmt(x: float, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def report(rows: list[tuple[str, list[Phase], dict[str, str]]], args: argparse.Namespace) -> str:
    out = ["## Service load (bench/load.py)", ""]
    out.append(f"Command: `{' '.join(['.venv/bin/python', 'bench/load.py', *sys.argv[1:]])}`  ")
    out.append(f"Recommendation targets: p99 ≤ {TARGET_P99_MS:g} ms at 100 req/s; "
               f"ingestion ≥ {TARGET_EVENTS_PER_S:,.0f} events/s acknowledged durably.")
    out.append("")
    out.append("| catalog | phase | requests ok / errors | p50 ms | p99 ms | max ms | "
               "achieved | target met |")
    out.append("|---|---|---|---|---|---|---|---|")
    for label, phases, _info in rows:
        for ph in phases:
            if "recommendations" in ph.name:
                thr = ph.ok / ph.elapsed_s if ph.elapsed_s else math.nan
                p99 = ph.pct(99)
                met = "yes" if p99 <= TARGET_P99_MS and ph.errors == 0 else "no"
                if "one at a time" in ph.name:
                    met = "(baseline)"
                achieved = f"{fmt(thr)} req/s"
            else:
                thr = ph.units / ph.elapsed_s if ph.elapsed_s else math.nan
                met = "yes" if thr >= TARGET_EVENTS_PER_S and ph.errors == 0 else "no"
                achieved = f"{fmt(thr, 0)} events/s"
            out.append(
                f"| {label} | {ph.name.split(': ', 1)[-1]} | {ph.ok:,} / {ph.errors:,} | "
                f"{fmt(ph.pct(50))} | {fmt(ph.pct(99))} | {fmt(max(ph.latencies_ms, default=math.nan))} | "
                f"{achieved} | {met} |"
            )
    out.append("")
    for label, phases, info in rows:
        out.append(f"- {label}: " + "; ".join(f"{k} {v}" for k, v in info.items()))
        for ph in phases:
            if ph.error_samples:
                out.append(f"  - {ph.name} errors, e.g.: {ph.error_samples}")
            if "recommendations" in ph.name and "one at a time" not in ph.name:
                out.append(
                    f"  - {ph.name}: service time (from actual send) p50 "
                    f"{fmt(ph.pct(50, 'service_ms'))} ms, p99 {fmt(ph.pct(99, 'service_ms'))} ms; "
                    f"{ph.late_sends} sends > 5 ms behind schedule"
                )
    out.append("")
    out.append("Latency is measured from each request's scheduled send time (open loop, no "
               "coordinated omission), over loopback, with the load generator in the same "
               "machine.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", choices=("ml100k", "synthetic", "both"), default="both")
    p.add_argument("--rate", default="100",
                   help="recommendation requests per second (a comma list runs each rate)")
    p.add_argument("--sequential", type=int, default=200,
                   help="requests sent one at a time first (unloaded service time)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    p.add_argument("--max-requests", type=int, default=5000)
    p.add_argument("--preset", default="balanced")
    p.add_argument("--ingest-duration", type=float, default=10.0)
    p.add_argument("--max-events", type=int, default=50_000, help="per ingestion phase")
    p.add_argument("--batch-concurrency", type=int, default=4)
    p.add_argument("--single-concurrency", type=int, default=16)
    p.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    p.add_argument("--events", type=int, default=200_000, help="synthetic events")
    p.add_argument("--users", type=int, default=20_000, help="synthetic users")
    p.add_argument("--server-cpus", default=None,
                   help="comma-separated cores for the server ('none' = no pinning)")
    p.add_argument("--start-timeout", type=float, default=1800.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.md"),
                   help="write the report here too ('' = print only)")
    args = p.parse_args(argv)

    cpus = server_cpus(args.server_cpus)
    if cpus:
        rest = sorted(set(os.sched_getaffinity(0)) - set(cpus))
        if rest:
            os.sched_setaffinity(0, rest)
    catalogs = ["ml100k", "synthetic"] if args.catalog == "both" else [args.catalog]
    rows: list[tuple[str, list[Phase], dict[str, str]]] = []
    raw: dict[str, object] = {}
    for catalog in catalogs:
        work = Path(tempfile.mkdtemp(prefix=f"serendip-load-{catalog}-"))
        try:
            port = free_port()
            key = uuid.uuid4().hex
            cmd, users, items = serve_command(args, catalog, work, port, key)
            env = {"HF_HUB_OFFLINE": "1", "NO_PROXY": "*"}
            shown = " ".join(c if c != key else "KEY" for c in cmd)
            print(f"[{catalog}] starting: {shown}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            with serve(cmd, env, cpus, port, key, work / "server.log", args.start_timeout) as base:
                startup = time.perf_counter() - t0
                print(f"[{catalog}] ready in {startup:.1f} s at {base}", file=sys.stderr, flush=True)
                phases = asyncio.run(run_load(base, key, users, items, args, catalog))
            info = {
                "startup (fit + load)": f"{startup:.1f} s",
                "server cores": ",".join(map(str, cpus)) if cpus else f"unpinned ({os.cpu_count()} cores shared with the generator)",
                "users sampled": f"{len(users):,}",
                "items": f"{len(items):,}",
            }
            rows.append((catalog, phases, info))
            raw[catalog] = {
                "info": info,
                "phases": [
                    {"name": ph.name, "ok": ph.ok, "errors": ph.errors, "units": ph.units,
                     "elapsed_s": ph.elapsed_s, "p50_ms": ph.pct(50), "p99_ms": ph.pct(99),
                     "service_p50_ms": ph.pct(50, "service_ms"),
                     "service_p99_ms": ph.pct(99, "service_ms"),
                     "mean_ms": statistics.fmean(ph.latencies_ms) if ph.latencies_ms else None}
                    for ph in phases
                ],
            }
        finally:
            if args.keep:
                print(f"[{catalog}] work directory kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    text = report(rows, args)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
