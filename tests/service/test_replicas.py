"""Several service instances over one store and one shared model directory.

In process (both back ends): a primary fits and publishes model version 1, a follower loads
it; a retrain publishes a new version that the follower swaps in whole; instances started
together seed and fit once; superseded versions are pruned after the grace period.

As real processes (``serendip serve`` on loopback ports over a throwaway PostgreSQL server):
a deletion through one replica stops being served by all within the poll bound; events posted
to every replica are stored once; a retrain on the primary reaches every replica (the same
model version in ``/readyz``) and a new item uploaded through a follower is served by all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serendip.errors import ConfigError
from serendip.pipeline import Recommender
from serendip.service import Engine, EngineConfig, create_app
from serendip.service.app import MODEL_VERSION_HEADER
from serendip.service.lifecycle import KEEP_VERSIONS, POINTER
from serendip.store import ItemRecord, Store, open_store
from serendip.store.testing import create_schema
from tests.service.conftest import SMALL, HashEncoder, Seed


def _engine(store_url: str, data_dir: Path, shared: Path, seed: Seed, encoder: HashEncoder,
            role: str = "primary", **kw: object) -> tuple[Engine, Store]:
    store = open_store(store_url)
    options: dict[str, object] = {"model_poll": None, "catalog_poll": None, **kw}
    cfg = EngineConfig(data_dir=data_dir, fit_config=SMALL, seed_interactions=str(
        seed.interactions), seed_items=str(seed.items), shared_model_dir=shared, role=role,
        **options)  # type: ignore[arg-type]
    return Engine(store, cfg, encoder=encoder), store


@pytest.fixture
def cluster(store: Store, tmp_path: Path, seed_files: Seed, encoder: HashEncoder
            ) -> Iterator[Callable[..., Engine]]:
    """``cluster(name, role=...)``: an engine on the test's store and one shared model
    directory (``tmp_path / "models"``), not started; all are closed at the end."""
    made: list[tuple[Engine, Store]] = []

    def make(name: str, role: str = "primary", **kw: object) -> Engine:
        e, s = _engine(store.url, tmp_path / name, tmp_path / "models", seed_files, encoder,
                       role, **kw)
        made.append((e, s))
        return e

    yield make
    for e, s in made:
        e.close()
        s.close()


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _finish(e: Engine, job_id: str) -> str:
    assert _wait(lambda: e.job(job_id).status not in ("running", "queued"), 60.0)
    return e.job(job_id).status


def test_a_follower_loads_what_the_primary_publishes(cluster, store: Store,
                                                     tmp_path: Path) -> None:
    primary, follower = cluster("a"), cluster("b", role="follower")
    primary.start()
    first = store.latest_model()
    assert first is not None and first.version == 1
    assert (tmp_path / "models" / POINTER).read_text().strip() == first.name
    assert primary.model_version == 1
    follower.start()
    assert follower.model_version == 1
    assert list(follower.state.item_ids) == list(primary.state.item_ids)

    # a new item through the follower; a retrain on the primary brings it to both
    follower.upsert_items([ItemRecord("fresh", {"title": "funny space cartoon fresh",
                                                "genres": "Comedy|Family"})])
    assert follower.state.index("fresh") is None and primary.state.index("fresh") is None
    old = follower.state
    assert _finish(primary, primary.retrain().job_id) == "succeeded"
    assert primary.model_version == 2 and store.latest_model().version == 2  # type: ignore[union-attr]
    assert follower.state is old  # nothing changes until the follower polls
    assert follower.sync_model()
    assert follower.model_version == 2 and follower.state is not old
    assert follower.state.index("fresh") is not None
    similar = [it["item_id"] for it in follower.similar("fresh", k=5)["items"]]
    assert similar == [it["item_id"] for it in primary.similar("fresh", k=5)["items"]]
    assert not follower.sync_model()  # nothing newer


def test_a_follower_waits_for_a_first_model(cluster, store: Store) -> None:
    follower = cluster("b", role="follower", model_poll=0.02)
    primary = cluster("a")
    follower.start_background()
    time.sleep(0.2)
    assert not follower.ready and store.latest_model() is None  # a follower never fits
    primary.start()
    assert _wait(lambda: follower.ready)
    assert follower.model_version == 1 and len(store.list_models()) == 1


def test_primaries_started_together_seed_and_fit_once(cluster, store: Store,
                                                      seed_files: Seed) -> None:
    engines = [cluster(n) for n in "abc"]
    errors: list[BaseException] = []

    def start(e: Engine) -> None:
        try:
            if e.lifecycle.needs_seed():
                e.seed()
            e.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    n_rows = sum(1 for _ in seed_files.interactions.open()) - 1
    assert store.count_events() == n_rows  # seeded once
    assert [m.version for m in store.list_models()] == [1]  # fitted and published once
    assert {e.model_version for e in engines} == {1}


def test_retrains_on_two_primaries_take_turns(cluster, store: Store) -> None:
    a, b = cluster("a"), cluster("b")
    a.start()
    b.start()
    # another process holds the retrain lock: both jobs wait for it
    assert store.acquire_lock("retrain", "someone-else", 60.0)
    ja, jb = a.retrain(), b.retrain()
    time.sleep(0.3)
    assert a.job(ja.job_id).status == b.job(jb.job_id).status == "running"
    assert store.latest_model().version == 1  # type: ignore[union-attr]
    assert store.release_lock("retrain", "someone-else")
    assert _finish(a, ja.job_id) == _finish(b, jb.job_id) == "succeeded"
    assert [m.version for m in store.list_models()] == [3, 2, 1]
    assert {m.created_by for m in store.list_models()[:2]} == {a.lifecycle.holder,
                                                                b.lifecycle.holder}
    a.sync_model()
    b.sync_model()
    assert a.model_version == b.model_version == 3


def test_a_refresh_that_waited_follows_the_newer_version(cluster, store: Store) -> None:
    a, b = cluster("a"), cluster("b")
    a.start()
    b.start()
    assert store.acquire_lock("retrain", "someone-else", 60.0)
    job = b.lifecycle.retrain(kind="refresh", reason="new items")  # waits for the lock
    time.sleep(0.2)
    assert b.job(job.job_id).status == "running"
    # meanwhile the lock's holder publishes version 2 (as a's retrain would)
    published = a.lifecycle._publish(a.state.rec, store.count_events())
    assert published.version == 2
    store.release_lock("retrain", "someone-else")
    assert _finish(b, job.job_id) == "succeeded"
    assert [m.version for m in store.list_models()] == [2, 1]  # b did not fit again
    assert b.model_version == 2


def test_superseded_versions_are_pruned_after_the_grace(cluster, store: Store,
                                                        tmp_path: Path) -> None:
    a = cluster("a", model_grace=5.0)
    a.start()
    for _ in range(3):
        assert _finish(a, a.retrain().job_id) == "succeeded"
    models = tmp_path / "models"
    rows = store.list_models()
    assert [r.version for r in rows] == [4, 3, 2, 1]
    left = models / "leftover.tmp-writing"  # an interrupted save
    left.mkdir()
    now = time.time()
    assert a.lifecycle._prune(now) == []  # within the grace: nothing goes
    later = max(r.created_at for r in rows) + 60.0
    os.utime(left, (now - 3600, now - 3600))
    removed = a.lifecycle._prune(later)
    assert sorted(removed) == sorted([rows[2].name, rows[3].name, left.name])
    kept = {p.name for p in models.iterdir()}
    assert kept == {r.name for r in rows[:KEEP_VERSIONS]} | {POINTER}
    assert (models / POINTER).read_text().strip() == rows[0].name


def test_a_version_missing_from_the_shared_directory_is_named(cluster, store: Store) -> None:
    a = cluster("a")
    a.start()
    store.publish_model("not-here", time.time(), "elsewhere")
    with pytest.raises(ConfigError, match="model version 2 .*not-here.*share this directory"):
        a.sync_model()
    assert a.model_version == 1  # still serving the old one


def test_readyz_names_the_served_model_version(cluster, store: Store, tmp_path: Path,
                                               fitted: Recommender,
                                               encoder: HashEncoder) -> None:
    a = cluster("a")
    a.start()
    assert _finish(a, a.retrain().job_id) == "succeeded"
    with TestClient(create_app(a)) as c:
        r = c.get("/readyz")
    assert r.status_code == 200 and r.headers[MODEL_VERSION_HEADER] == "2"
    assert r.json()["model_version"] == 2
    single = Engine(store, EngineConfig(data_dir=tmp_path / "single", fit_config=SMALL,
                                        catalog_poll=None), recommender=fitted, encoder=encoder)
    single.start()
    try:
        with TestClient(create_app(single)) as c:
            r = c.get("/readyz")
        assert r.status_code == 200 and MODEL_VERSION_HEADER not in r.headers
        assert r.json()["model_version"] is None
    finally:
        single.close()


def test_config_refuses_a_bad_role_or_poll(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role must be one of primary, follower"):
        EngineConfig(data_dir=tmp_path, role="leader")
    with pytest.raises(ConfigError, match="model_poll"):
        EngineConfig(data_dir=tmp_path, model_poll=0.0)
    with pytest.raises(ConfigError, match=r"shown_limit must be a whole number >= 0, got 2\.5"):
        EngineConfig(data_dir=tmp_path, shown_limit=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="history_limit must be a whole number >= 0, got -1"):
        EngineConfig(data_dir=tmp_path, history_limit=-1)


# ---------------------------------------------------------------------- real processes
KEY = "sk_replicas_test_admin_key"
HEADERS = {"X-API-Key": KEY}
POLL = 1.0  # the default --catalog-poll and --model-poll


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    def __init__(self, name: str, root: Path, url: str, seed: Seed, role: str) -> None:
        self.name, self.port = name, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        cmd = [sys.executable, "-m", "serendip.cli", "serve", "--store", url,
               "--data-dir", str(root / name), "--model-dir", str(root / "models"),
               "--role", role, "--port", str(self.port), "--api-key", KEY,
               "--refresh-interval", "0", "--catalog-poll", str(POLL),
               "--model-poll", str(POLL), "--config", str(root / "fit.toml"),
               "--seed-interactions", str(seed.interactions), "--seed-items", str(seed.items)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=self.base, headers=HEADERS, timeout=30)

    def model_version(self) -> int | None:
        try:
            r = self.client.get("/readyz", timeout=2)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return int(r.headers[MODEL_VERSION_HEADER])

    def top(self, user: str, k: int = 10) -> list[str]:
        r = self.client.get(f"/v1/users/{user}/recommendations",
                            params={"k": k, "preset": "accurate"})
        assert r.status_code == 200, r.text
        return [it["item_id"] for it in r.json()["items"]]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _until(check: Callable[[], bool], what: str, replicas: list[Replica],
           timeout: float = 60.0) -> float:
    """Seconds until ``check()`` held (polled every 20 ms), failing after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            logs = "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in replicas)
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs}")
        for r in replicas:
            if r.proc.poll() is not None:
                raise AssertionError(f"{r.name} exited:\n{r.log.read_text()[-3000:]}")
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.slow
def test_replicas_over_one_postgres(pg_url: str, tmp_path: Path, seed_files: Seed) -> None:
    url = create_schema(pg_url)
    (tmp_path / "fit.toml").write_text(  # a small, fast fit
        "[models.popularity]\n[models.ease]\nl2 = 10.0\n[models.semantic]\n"
        "[models.textcf]\n[models.transition]\n")
    replicas = [Replica("a", tmp_path, url, seed_files, "primary"),
                Replica("b", tmp_path, url, seed_files, "follower"),
                Replica("c", tmp_path, url, seed_files, "follower")]
    timings: dict[str, list[float]] = {}
    try:
        # started together: the store is seeded once, version 1 fitted once, loaded by all
        _until(lambda: all(r.model_version() == 1 for r in replicas), "all ready", replicas,
               timeout=300.0)
        store = open_store(url)
        try:
            n_rows = sum(1 for _ in seed_files.interactions.open()) - 1
            assert store.count_events() == n_rows
            assert [m.version for m in store.list_models()] == [1]
        finally:
            store.close()
        a, b, c = replicas

        # a deletion through b stops being served by a and c within the catalog poll
        # (three deletions, one after another, each timed)
        for _ in range(3):
            target = a.top("u1", k=5)[0]
            assert all(target in r.top("u1") for r in replicas)
            r = b.client.delete(f"/v1/items/{target}")
            assert r.status_code == 200 and r.json() == {"deleted": 1}
            assert target not in b.top("u1")  # at once on the instance that deleted it
            t0 = time.monotonic()
            _until(lambda t=target: all(t not in r.top("u1") for r in (a, c)),  # type: ignore[misc]
                   "deletion", replicas)
            timings.setdefault("deletion_seconds", []).append(time.monotonic() - t0)

        # the same events posted to all three at once: stored once, one id per key
        batch = [{"user_id": f"rep{j}", "item_id": "i3", "type": "click",
                  "idempotency_key": f"rep-{j}"} for j in range(20)]
        acks: dict[str, list[dict[str, object]]] = {}

        def post(rep: Replica) -> None:
            resp = rep.client.post("/v1/events", json={"events": batch})
            assert resp.status_code == 201, resp.text
            acks[rep.name] = resp.json()["acks"]

        threads = [threading.Thread(target=post, args=(rep,)) for rep in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert set(acks) == {"a", "b", "c"}
        for j in range(len(batch)):
            per_key = [acks[n][j] for n in "abc"]
            assert len({a_["event_id"] for a_ in per_key}) == 1
            assert sum(not a_["duplicate"] for a_ in per_key) == 1
        store = open_store(url)
        try:
            ev = store.events_frame(types=["click"])
        finally:
            store.close()
        ev = ev[ev["user_id"].str.startswith("rep")]
        assert sorted(ev["user_id"]) == sorted(f"rep{j}" for j in range(20))

        # a new item through c; a retrain on a reaches every replica
        item = {"item_id": "fresh1", "fields": {"title": "funny space cartoon fresh",
                                                "genres": "Comedy|Family"}}
        assert c.client.put("/v1/items", json={"items": [item]}).status_code == 200
        assert a.client.get("/v1/items/fresh1/similar").status_code == 404
        assert b.client.get("/v1/items/fresh1/similar").status_code == 404
        for version in (2, 3):  # two retrains, each timed from the primary's swap
            job = a.client.post("/v1/admin/retrain").json()
            path = f"/v1/admin/jobs/{job['job_id']}"
            _until(lambda p=path: a.client.get(p).json()["status"] != "running",  # type: ignore[misc]
                   "retrain", replicas, timeout=300.0)
            status = a.client.get(path).json()["status"]
            assert status == "succeeded"
            assert a.model_version() == version
            t0 = time.monotonic()
            _until(lambda v=version: all(r.model_version() == v for r in replicas),  # type: ignore[misc]
                   "new model", replicas)
            timings.setdefault("new_model_seconds", []).append(time.monotonic() - t0)
        got = [r.client.get("/v1/items/fresh1/similar", params={"k": 5}) for r in replicas]
        assert all(g.status_code == 200 for g in got), [g.text for g in got]
        lists = [[it["item_id"] for it in g.json()["items"]] for g in got]
        assert lists[0] == lists[1] == lists[2] and target not in lists[0]
    finally:
        for rep in replicas:
            rep.stop()
    out = os.environ.get("SERENDIP_REPLICA_TIMINGS")
    if out:  # the measured bounds, for docs/deployment.md
        Path(out).write_text(json.dumps(
            {"poll_seconds": POLL, "replicas": len(replicas),
             **{k: [round(v, 3) for v in vs] for k, vs in timings.items()},
             **{f"max_{k}": round(max(vs), 3) for k, vs in timings.items()}},
            indent=2) + "\n")
    assert len(timings["deletion_seconds"]) == 3 and len(timings["new_model_seconds"]) == 2
