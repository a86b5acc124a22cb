"""Durability: SIGKILL `serendip serve` while events stream in; every acknowledged event is
stored exactly once after a restart and a full re-send (idempotency keys)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serendip.pipeline import Recommender
from serendip.store import open_store

KEY = "sk_durability_test_admin_key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, seed, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "serendip.cli", "serve", "--data-dir", str(data_dir),
           "--port", str(port), "--api-key", KEY,
           "--seed-interactions", str(seed.interactions), "--seed-items", str(seed.items)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not become ready:\n{log.read_text()}")


def _batch(n: int, size: int = 10) -> list[dict[str, object]]:
    # one distinct user per event, so "stored exactly once" is a per-user count
    return [{"user_id": f"dur{n}-{j}", "item_id": f"i{(n + j) % 24}", "type": "click",
             "idempotency_key": f"dur-{n}-{j}"} for j in range(size)]


@pytest.mark.slow
def test_acknowledged_events_survive_sigkill(tmp_path: Path, seed_files, fitted: Recommender):
    data_dir = tmp_path / "data"
    fitted.save(data_dir / "model")  # pre-fitted: the server loads it instead of fitting
    log = tmp_path / "serve.log"
    proc, base = _start(data_dir, seed_files, log)
    assert f"/#key={KEY}" in log.read_text()

    acked: dict[int, list[dict[str, object]]] = {}
    sent: list[int] = []
    stop = threading.Event()
    headers = {"X-API-Key": KEY}

    def sender() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=5) as c:
            n = 0
            while not stop.is_set():
                sent.append(n)
                try:
                    r = c.post("/v1/events", json={"events": _batch(n)})
                except httpx.HTTPError:
                    return  # the server is gone: this batch is unacknowledged
                if r.status_code == 201:
                    acked[n] = r.json()["acks"]
                n += 1

    t = threading.Thread(target=sender)
    t.start()
    deadline = time.time() + 60
    while len(acked) < 30 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-stream: the sender is posting as fast as it can
    proc.wait()
    stop.set()
    t.join()
    assert len(acked) >= 30, log.read_text()

    proc, base = _start(data_dir, seed_files, log)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            for n in sent:  # re-send everything, acknowledged or not
                r = c.post("/v1/events", json={"events": _batch(n)})
                assert r.status_code == 201, r.text
                if n in acked:  # acknowledged before: now all duplicates of the same events
                    assert r.json()["acks"] == [
                        {"event_id": a["event_id"], "duplicate": True} for a in acked[n]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    store = open_store(f"sqlite:///{data_dir / 'serendip.db'}")
    try:
        ev = store.events_frame(types=["click"])
    finally:
        store.close()
    ev = ev[ev["user_id"].str.startswith("dur")]
    counts = ev.groupby("user_id").size()
    expected = {f"dur{n}-{j}" for n in sent for j in range(10)}
    assert set(counts.index) == expected
    assert (counts == 1).all()
