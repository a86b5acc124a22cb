"""The generations table: a cache of generated texts, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg
import pytest

from serendip.errors import DataError
from serendip.llm import CachedGenerator, Generation
from serendip.store import Store
from serendip.store.postgres import POSTGRES_MIGRATIONS
from serendip.store.sqlite import SCHEMA_VERSION, SQLITE_MIGRATIONS


def test_put_and_get_round_trip(store: Store) -> None:
    assert store.get_generation("m", "abc") is None
    store.put_generation("m", "abc", "Une critique — 🎬", 12, 30)
    row = store.get_generation("m", "abc")
    assert row is not None and row["created_at"] > 0
    assert {k: v for k, v in row.items() if k != "created_at"} == {
        "model": "m", "prompt_hash": "abc", "text": "Une critique — 🎬",
        "prompt_tokens": 12, "completion_tokens": 30}
    assert store.get_generation("other-model", "abc") is None
    assert store.get_generation("m", "abd") is None
    assert store.get_generation("", "abc") is None


def test_put_is_idempotent_and_keeps_the_first_text(store: Store) -> None:
    store.put_generation("m", "h", "first", 1, 2)
    store.put_generation("m", "h", "second", 3, 4)
    row = store.get_generation("m", "h")
    assert row is not None and (row["text"], row["prompt_tokens"]) == ("first", 1)


@pytest.mark.parametrize(("args", "fragment"), [
    (("", "h", "t", 1, 1), "generation model must be a non-empty string"),
    (("m", None, "t", 1, 1), "generation prompt_hash must be a string, got None"),
    (("m", "h", "a\x00b", 1, 1), "generated text must not contain NUL"),
    (("m", "h", "t", -1, 1), "prompt_tokens must be a non-negative integer, got -1"),
    (("m", "h", "t", 1, 2.5), "completion_tokens must be a non-negative integer, got 2.5"),
])
def test_bad_values_are_refused_naming_them(store: Store, args: tuple, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        store.put_generation(*args)
    assert store.get_generation("m", "h") is None


def test_a_store_is_a_cache_shared_by_every_opener(open_fresh: Callable[[], Store]) -> None:
    calls: list[int] = []

    class Once:
        model = "writer"

        def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                     temperature: float = 0.0, json_schema: dict | None = None) -> Generation:
            calls.append(1)
            return Generation("written once", self.model, 5, 6)

    messages = [{"role": "user", "content": "describe item 7"}]
    first = CachedGenerator(Once(), open_fresh()).generate(messages, max_tokens=20)
    second = CachedGenerator(Once(), open_fresh()).generate(messages, max_tokens=20)
    assert not first.cached and second.cached and second.text == "written once"
    assert (second.prompt_tokens, second.completion_tokens) == (5, 6) and len(calls) == 1


def _create_v3(backend: str, store_url: str) -> None:
    """A database as schema version 3 left it, with one item."""
    if backend == "sqlite":
        conn = sqlite3.connect(store_url.removeprefix("sqlite://"))
        with conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                         "applied_at REAL NOT NULL)")
            for version, steps in SQLITE_MIGRATIONS[:3]:
                for sql in steps:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
            conn.execute("INSERT INTO items VALUES ('a', '{\"title\": \"A\"}', 1.0)")
        conn.close()
    else:
        with psycopg.connect(store_url) as pg, pg.transaction():
            pg.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                       "applied_at DOUBLE PRECISION NOT NULL)")
            for version, steps in POSTGRES_MIGRATIONS[:3]:
                for sql in steps:
                    pg.execute(sql)  # type: ignore[arg-type]
                pg.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
            pg.execute("INSERT INTO items VALUES ('a', '{\"title\": \"A\"}', 1.0)")


def test_upgrade_from_version_3_in_place(backend: str, store_url: str,
                                         open_fresh: Callable[[], Store]) -> None:
    assert SCHEMA_VERSION == POSTGRES_MIGRATIONS[-1][0] >= 4
    _create_v3(backend, store_url)
    store = open_fresh()  # migrates
    assert store.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
    assert store.get_item("a") is not None and store.catalog_version() == 0
    store.put_generation("m", "h", "text", 1, 2)
    assert open_fresh().migrate() == SCHEMA_VERSION
    row = open_fresh().get_generation("m", "h")
    assert row is not None and row["text"] == "text"
