"""Store fixtures: every behavioural test runs on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from serendip.store import Store, open_store
from serendip.store.testing import create_schema

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of a fresh, empty database (a new file, or a new PostgreSQL schema)."""
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    return create_schema(request.getfixturevalue("pg_url"))


@pytest.fixture
def open_fresh(store_url: str) -> Iterator[Callable[[], Store]]:
    """Opens the test's database (again); every store it opened is closed at the end."""
    opened: list[Store] = []

    def _open() -> Store:
        s = open_store(store_url)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_fresh: Callable[[], Store]) -> Store:
    return open_fresh()
