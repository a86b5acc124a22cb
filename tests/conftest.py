"""Shared fixtures: small synthetic datasets with a known structure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

from serendip.data import Dataset
from serendip.store.testing import PostgresServer, find_pg_bin

# Reproducible property tests: the same examples on every run (a failure found once is found
# again), and no per-example deadline, which only measures how busy the machine is.
settings.register_profile("serendip", derandomize=True, deadline=None)
settings.load_profile("serendip")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A private PostgreSQL server (initdb in a temp dir, loopback TCP on a free port)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install "
            "postgresql or set SERENDIP_PG_BIN to their directory"
        )
    server = PostgresServer(bin_dir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def make_blocks(n_users: int = 40, n_items: int = 20, seed: int = 0) -> Dataset:
    """Two taste groups: users 0..n/2-1 like items of block A, the others block B.

    Items carry a genre ("A" or "B") and unit vectors that point to their block, plus a little
    noise, so semantic and collaborative models have the same known answer.
    """
    rng = np.random.default_rng(seed)
    half_u, half_i = n_users // 2, n_items // 2
    rows = []
    t = 0
    for u in range(n_users):
        block = range(0, half_i) if u < half_u else range(half_i, n_items)
        chosen = rng.choice(list(block), size=half_i - 2, replace=False)
        for i in chosen:
            rows.append((f"u{u}", f"i{i}", float(t), 1.0))
            t += 1
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"{'alpha' if i < half_i else 'beta'} item {i}" for i in range(n_items)],
            "genres": ["A" if i < half_i else "B" for i in range(n_items)],
        }
    )
    data = Dataset.from_frames(inter, items)
    vec = np.zeros((n_items, 8), dtype=np.float32)
    vec[:half_i, 0] = 1.0
    vec[half_i:, 1] = 1.0
    vec += rng.normal(scale=0.05, size=vec.shape).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return data.with_item_vectors(vec)


@pytest.fixture
def blocks() -> Dataset:
    return make_blocks()


@contextmanager
def local_ray_cluster(num_cpus: int) -> Iterator[None]:
    """A local Ray cluster on loopback with ``num_cpus`` logical CPUs, quiet, shut down after."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="warning")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield
    finally:
        ray.shutdown()


#: small and fast to fit, with ease_recent and transition for the shipped presets' blends:
#: the model the sharded batch paths (Ray, forked processes) are checked on
SHARDED_FIT = {"popularity": {}, "ease": {}, "ease_recent": {"type": "ease", "half_life": 20.0},
               "semantic": {}, "textcf": {}, "transition": {}}


def sharded_model(directory: Path) -> list[str]:
    """Fit ``SHARDED_FIT`` on more users than two shards of ``distributed.SHARD`` (so two
    workers both get work and the last shard is partial), save it to ``directory``; the
    user ids."""
    from serendip.distributed import SHARD
    from serendip.pipeline import FitConfig, Recommender

    data = make_blocks(n_users=2 * SHARD + 90, n_items=40, seed=3)
    Recommender.fit(data, FitConfig(models=SHARDED_FIT), progress=False).save(directory)
    return [str(u) for u in data.user_ids]


def assert_same_lists(a: list, b: list) -> None:
    """Two runs' lists are the same: items, scores bit for bit, reasons, fields and dtypes."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.items, y.items)
        assert np.array_equal(x.scores, y.scores)  # bit for bit, not approximately
        assert x.reasons == y.reasons
        assert sorted(x.fields) == sorted(y.fields)
        for name in x.fields:
            assert np.array_equal(x.fields[name], y.fields[name])
            assert np.asarray(x.fields[name]).dtype == np.asarray(y.fields[name]).dtype
