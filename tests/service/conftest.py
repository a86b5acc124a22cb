"""Service fixtures: a small synthetic catalog in a fresh SQLite store per test, one fitted
model per session (injected into each engine), a hashing text encoder, and API keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serendip.data import Dataset
from serendip.pipeline import FitConfig, Recommender
from serendip.service import Engine, EngineConfig, create_app
from serendip.store import open_store
from serendip.store.base import Store
from serendip.text import item_texts
from tests.conftest import make_blocks

SMALL = FitConfig(models={
    "popularity": {}, "ease": {"l2": 10.0},
    "ease_recent": {"type": "ease", "l2": 10.0, "half_life": 5.0},
    "knn": {"neighbors": 5}, "semantic": {}, "textcf": {}, "transition": {},
    "als": {"factors": 4},
})


class HashEncoder:
    """A deterministic bag-of-words encoder (hashed tokens -> unit vectors): same interface
    as ``serendip.text.Encoder`` for the engine, no model to load."""

    dim = 32

    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for n, t in enumerate(texts):
            for tok in re.findall(r"[a-z0-9]+", t.lower()):
                h = int(hashlib.md5(tok.encode()).hexdigest(), 16)
                out[n, h % self.dim] += 1.0 if (h >> 8) % 2 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def encode_items(self, data: Dataset, template: str | None = None,
                     progress: bool = True) -> np.ndarray:
        return self.encode(item_texts(data, template), progress=progress)


@dataclass
class Seed:
    interactions: Path
    items: Path


@pytest.fixture(scope="session")
def seed_files(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return write_seed(tmp_path_factory.mktemp("seed"))


def write_seed(d: Path) -> Seed:
    """Two taste groups over 24 items (genres Comedy / Drama), written as CSV files."""
    data = make_blocks(n_users=40, n_items=24, seed=1)
    items = data.items.copy()
    items["genres"] = ["Comedy|Family" if g == "A" else "Drama" for g in items["genres"]]
    items["title"] = [
        ("funny space cartoon " if g == "A" else "sad war story ") + str(i)
        for i, g in zip(items["item_id"], data.items["genres"], strict=True)
    ]
    inter = data.interactions
    frame = inter.assign(
        user_id=data.user_ids[inter["user"].to_numpy()],
        item_id=data.item_ids[inter["item"].to_numpy()],
    )[["user_id", "item_id", "timestamp", "rating"]]
    # a little popularity skew so the head and the tail differ
    extra = [(f"u{u}", "i0", 10_000.0 + u, 4.0) for u in range(20, 40)]
    frame = pd.concat([frame, pd.DataFrame(extra, columns=frame.columns)], ignore_index=True)
    seed = Seed(d / "interactions.csv", d / "items.csv")
    frame.to_csv(seed.interactions, index=False)
    items.to_csv(seed.items, index=False)
    return seed


@pytest.fixture(scope="session")
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def fitted(seed_files: Seed, encoder: HashEncoder) -> Recommender:
    data = Dataset.from_files(seed_files.interactions, seed_files.items)
    return Recommender.fit(data, SMALL, progress=False, encoder=encoder)  # type: ignore[arg-type]


@dataclass
class Keys:
    admin: str
    write: str
    read: str

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"X-API-Key": getattr(self, role)}


def build_engine(store: Store, data_dir: Path, seed: Seed, fitted: Recommender | None,
                 encoder: HashEncoder) -> Engine:
    cfg = EngineConfig(data_dir=data_dir, fit_config=SMALL,
                       seed_interactions=str(seed.interactions), seed_items=str(seed.items))
    engine = Engine(store, cfg, recommender=fitted, encoder=encoder)
    engine.start()
    return engine


def make_keys(store: Store) -> Keys:
    return Keys(store.create_api_key("t-admin", "admin"), store.create_api_key("t-write", "write"),
                store.create_api_key("t-read", "read"))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store: every API test runs on SQLite and on a throwaway PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'serendip.db'}"
    else:
        from serendip.store.testing import create_schema

        url = create_schema(request.getfixturevalue("pg_url"))
    s = open_store(url)
    yield s
    s.close()


@pytest.fixture
def engine(store: Store, tmp_path: Path, seed_files: Seed, fitted: Recommender,
           encoder: HashEncoder) -> Iterator[Engine]:
    e = build_engine(store, tmp_path, seed_files, fitted, encoder)
    yield e
    e.close()  # stop the impression writer before the store closes


@pytest.fixture
def keys(store: Store) -> Keys:
    return make_keys(store)


@pytest.fixture
def client(engine: Engine, keys: Keys) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as c:
        yield c


@pytest.fixture
def api(client: TestClient, keys: Keys) -> Callable[..., object]:
    """``api(method, path, role="admin", **kwargs)`` -> response, with that role's key."""

    def call(method: str, path: str, role: str = "admin", **kwargs: object):  # type: ignore[no-untyped-def]
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        headers.update(keys.h(role))
        return client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    return call
