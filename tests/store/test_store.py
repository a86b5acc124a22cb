"""Behavioural tests of the Store protocol, run on both back ends."""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serendip.errors import ConfigError, DataError, StoreError
from serendip.store import (
    EVENT_TYPES,
    EventRecord,
    Impression,
    ItemRecord,
    PostgresStore,
    SQLiteStore,
    Store,
    UserRecord,
    role_at_least,
)
from serendip.store.sqlite import SCHEMA_VERSION

ODD_IDS = ["007", "a,b", "ünï", " padded ", "line\nbreak", "quote'\"", "😀", "%s", "?", "$1"]
INJECTION_IDS = [
    "x'); DROP TABLE events; --",
    "Robert'); DROP TABLE items;--",
    '"; DELETE FROM items; --',
    "1 OR 1=1",
]


def _all_rows_text(store: Store) -> str:
    """Every value of every table, as text, for scanning."""
    parts: list[str] = []
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for name in names:
                for row in conn.execute(f'SELECT * FROM "{name}"'):
                    parts.append(repr(row))
        conn.close()
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                ).fetchall()
            ]
            for name in names:
                for row in conn.execute(f'SELECT t::text FROM "{name}" t').fetchall():
                    parts.append(row[0])
    return "\n".join(parts)


# schema ------------------------------------------------------------------------------------
def test_migrate_is_idempotent(store: Store) -> None:
    version = store.migrate()
    assert version >= 1
    assert store.migrate() == version
    assert store.schema_version() == version  # type: ignore[attr-defined]
    assert store.count_items() == store.count_events() == store.count_impressions() == 0


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.url


# catalog -----------------------------------------------------------------------------------
def test_item_round_trip_with_odd_ids(store: Store) -> None:
    items = [ItemRecord(i, {"title": f"title of {i} — ünïcode ✓", "genres": "A|B"}) for i in ODD_IDS]
    assert store.upsert_items(items) == len(ODD_IDS)
    assert store.count_items() == len(ODD_IDS)
    for rec in items:
        assert store.get_item(rec.item_id) == rec
    assert store.get_item("missing") is None
    assert store.get_item("") is None


def test_upsert_replaces_fields(store: Store) -> None:
    store.upsert_items([ItemRecord("a", {"title": "old", "genres": "x"})])
    store.upsert_items([ItemRecord("a", {"title": "new"})])
    assert store.get_item("a") == ItemRecord("a", {"title": "new"})
    assert store.count_items() == 1
    # a repeated id in one batch keeps the last record
    assert store.upsert_items([ItemRecord("b", {"t": "1"}), ItemRecord("b", {"t": "2"})]) == 1
    assert store.get_item("b") == ItemRecord("b", {"t": "2"})


def test_delete_items(store: Store) -> None:
    store.upsert_items([ItemRecord(i) for i in ("a", "b", "c")])
    assert store.delete_items(["a", "c", "nope"]) == 2
    assert store.delete_items([]) == 0
    assert store.get_item("a") is None and store.get_item("b") is not None
    assert store.count_items() == 1


def test_items_frame_columns(store: Store) -> None:
    assert list(store.items_frame().columns) == ["item_id"]
    store.upsert_items(
        [
            ItemRecord("b", {"title": "B", "genres": "g"}),
            ItemRecord("a", {"title": "A", "description": "d"}),
            ItemRecord("ünï", {}),
        ]
    )
    frame = store.items_frame()
    assert list(frame.columns) == ["item_id", "description", "genres", "title"]
    assert frame["item_id"].tolist() == ["a", "b", "ünï"]
    assert frame.loc[frame.item_id == "a", "genres"].item() == ""
    assert frame.loc[frame.item_id == "b", "title"].item() == "B"


def test_injection_looking_ids_are_stored_verbatim(store: Store) -> None:
    store.upsert_items([ItemRecord(i, {"title": i}) for i in INJECTION_IDS])
    store.append_events([EventRecord(i, i, idempotency_key=i) for i in INJECTION_IDS])
    for i in INJECTION_IDS:
        assert store.get_item(i) == ItemRecord(i, {"title": i})
        assert store.user_events(i)["item_id"].tolist() == [i]
    assert store.count_items() == len(INJECTION_IDS)
    assert store.count_events() == len(INJECTION_IDS)
    assert store.events_frame()["user_id"].tolist() == INJECTION_IDS


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(
        st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=30),
        min_size=1,
        max_size=5,
        unique=True,
    )
)
def test_any_text_id_round_trips(store: Store, ids: list[str]) -> None:
    store.upsert_items([ItemRecord(i, {"t": i}) for i in ids])
    for i in ids:
        assert store.get_item(i) == ItemRecord(i, {"t": i})


# users -------------------------------------------------------------------------------------
def test_users(store: Store) -> None:
    assert store.upsert_users([UserRecord("u1", {"country": "NZ"}), UserRecord("ünï")]) == 2
    assert store.get_user("u1") == UserRecord("u1", {"country": "NZ"})
    assert store.get_user("ünï") == UserRecord("ünï", {})
    assert store.get_user("nobody") is None
    store.upsert_users([UserRecord("u1", {"country": "FR"})])
    assert store.get_user("u1") == UserRecord("u1", {"country": "FR"})


# events ------------------------------------------------------------------------------------
def test_events_append_in_order(store: Store) -> None:
    acks = store.append_events(
        [
            EventRecord("u1", "a", "click", timestamp=10.0),
            EventRecord("u2", "b", "rating", timestamp=5.0, value=4.5),
            EventRecord("u1", "c"),
        ]
    )
    ids = [a.event_id for a in acks]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert not any(a.duplicate for a in acks)
    more = store.append_events([EventRecord("u1", "d", "like", timestamp=1.0)])
    assert more[0].event_id > ids[-1]

    frame = store.events_frame()
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "type", "value"]
    assert frame["item_id"].tolist() == ["a", "b", "c", "d"]  # insertion order, not time
    assert frame["type"].tolist() == ["click", "rating", "interaction", "like"]
    assert frame["timestamp"].dtype == "float64" and frame["value"].dtype == "float64"
    assert frame["value"].iloc[1] == 4.5 and math.isnan(frame["value"].iloc[0])
    assert frame["timestamp"].iloc[2] > 1e9  # filled with "now"
    assert store.count_events() == 4

    assert store.events_frame(types=["rating"])["item_id"].tolist() == ["b"]
    assert store.events_frame(types=["click", "like"])["item_id"].tolist() == ["a", "d"]
    assert len(store.events_frame(types=[])) == 0


def test_user_events(store: Store) -> None:
    store.append_events([EventRecord("u1", f"i{n}", timestamp=float(n)) for n in range(5)])
    store.append_events([EventRecord("u2", "x")])
    assert store.user_events("u1")["item_id"].tolist() == [f"i{n}" for n in range(5)]
    assert store.user_events("u1", limit=2)["item_id"].tolist() == ["i3", "i4"]
    assert store.user_events("u1", limit=0).empty
    empty = store.user_events("nobody")
    assert empty.empty and list(empty.columns) == ["user_id", "item_id", "timestamp", "type", "value"]
    with pytest.raises(DataError, match="-1"):
        store.user_events("u1", limit=-1)

    # the request path's lean read: the same events, (item, type, value), oldest first
    store.append_events([EventRecord("u1", "i2", "skip", timestamp=9.0),
                         EventRecord("u1", "i5", "rating", value=2.0, timestamp=10.0)])
    assert store.recent_item_events("u1", 4) == [
        ("i3", "interaction", None), ("i4", "interaction", None), ("i2", "skip", None),
        ("i5", "rating", 2.0)]
    assert store.recent_item_events("nobody", 5) == []
    with pytest.raises(DataError, match="got 0"):
        store.recent_item_events("u1", 0)


def test_empty_events_frame_has_columns(store: Store) -> None:
    frame = store.events_frame()
    assert frame.empty
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "type", "value"]
    assert store.append_events([]) == []


def test_idempotency_in_one_batch(store: Store) -> None:
    acks = store.append_events(
        [
            EventRecord("u", "a", idempotency_key="k1"),
            EventRecord("u", "b"),
            EventRecord("u", "a", idempotency_key="k1"),
            EventRecord("u", "c", idempotency_key="k2"),
        ]
    )
    assert [a.duplicate for a in acks] == [False, False, True, False]
    assert acks[2].event_id == acks[0].event_id
    assert store.count_events() == 3


def test_idempotency_across_calls_and_reopen(open_fresh: Callable[[], Store]) -> None:
    first = open_fresh()
    (ack,) = first.append_events([EventRecord("u", "a", idempotency_key="key-1")])
    (again,) = first.append_events([EventRecord("u", "a", idempotency_key="key-1")])
    assert again == type(ack)(ack.event_id, True)
    first.close()
    second = open_fresh()
    acks = second.append_events(
        [EventRecord("u", "z", idempotency_key="key-1"), EventRecord("u", "b", idempotency_key="key-2")]
    )
    assert acks[0].event_id == ack.event_id and acks[0].duplicate
    assert not acks[1].duplicate
    assert second.count_events() == 2


# impressions -------------------------------------------------------------------------------
def test_impressions(store: Store) -> None:
    imp = Impression(
        user_id="u1",
        item_ids=("a", "ünï", "007"),
        scores=(0.9, 0.5, 0.1),
        preset="balanced",
        discovery=0.4,
        propensities=(0.5, 0.3, 0.2),
        context="something to read on a train",
        timestamp=123.0,
    )
    first = store.log_impression(imp)
    second = store.log_impression(Impression(None, (), (), "accurate", 0.0))
    third = store.log_impression(Impression(None, (), (), "accurate", 0.0, impression_id="x-1_Z"))
    assert isinstance(first, int) and third > second > first
    assert store.count_impressions() == 3
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    assert list(frame.columns) == [
        "id", "user_id", "item_ids", "scores", "propensities", "preset", "discovery", "context",
        "timestamp", "impression_id",
    ]
    row = frame.iloc[0]
    assert row["item_ids"] == ["a", "ünï", "007"] and row["scores"] == [0.9, 0.5, 0.1]
    assert row["propensities"] == [0.5, 0.3, 0.2] and row["context"] == imp.context
    assert row["timestamp"] == 123.0 and row["preset"] == "balanced"
    assert frame.iloc[1]["user_id"] is None and frame.iloc[1]["propensities"] is None
    assert frame["id"].tolist() == [first, second, third]
    assert frame["impression_id"].tolist() == [None, None, "x-1_Z"]  # NULLs do not collide


def test_recent_impressions_are_a_persons_latest_lists_oldest_first(store: Store) -> None:
    """What a bandit's ``shown`` feature reads: the person's ``limit`` latest lists by
    timestamp (not by insertion), oldest first, of any kind, and nobody else's."""
    for ts, user, items in ((30.0, "u1", ("c",)), (10.0, "u1", ("a", "b")),
                            (20.0, "u2", ("x",)), (20.0, "u1", ("b", "ünï")),
                            (40.0, None, ("z",))):
        store.log_impression(Impression(user, items, (1.0,) * len(items), "adaptive", 0.5,
                                        timestamp=ts))
    assert store.recent_impressions("u1", 10) == [(None, 10.0, ["a", "b"]),
                                                  (None, 20.0, ["b", "ünï"]),
                                                  (None, 30.0, ["c"])]
    assert [r[2] for r in store.recent_impressions("u1", 2)] == [["b", "ünï"], ["c"]]
    assert store.recent_impressions("u2", 10) == [(None, 20.0, ["x"])]
    store.log_impression(Impression("u2", ("y",), (1.0,), "adaptive", 0.5, timestamp=50.0,
                                    impression_id="k-2"))
    assert store.recent_impressions("u2", 1) == [("k-2", 50.0, ["y"])]
    assert store.recent_impressions("nobody", 10) == []
    with pytest.raises(DataError, match="limit"):
        store.recent_impressions("u1", -1)


def test_a_persons_latest_lists_are_read_by_index(backend: str, store: Store) -> None:
    """The request path's read of what a person was shown walks the (user, time) index: no
    scan and no sort of all their lists."""
    sql = ("SELECT impression_id, timestamp, item_ids FROM impressions WHERE user_id = {p} "
           "ORDER BY timestamp DESC, id DESC LIMIT {p}")
    if backend == "sqlite":
        with store._read() as conn:  # type: ignore[attr-defined]
            plan = " ".join(str(r[-1]) for r in conn.execute(
                "EXPLAIN QUERY PLAN " + sql.format(p="?"), ("u1", 5)).fetchall())
        assert "impressions_user_time" in plan and "TEMP B-TREE" not in plan, plan
    else:
        with store._read() as cur:  # type: ignore[attr-defined]
            cur.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(r[0] for r in cur.execute(
                "EXPLAIN " + sql.format(p="%s"), ("u1", 5)).fetchall())
        assert "impressions_user_time" in plan and "Sort" not in plan, plan


def _imp(key: str | None, n: int = 0) -> Impression:
    return Impression(f"u{n}", (f"i{n}", "j"), (1.0, 0.5), "balanced", 0.5, (0.6, 0.4),
                      f"context {n}", 1000.0 + n, key)


def test_impression_batch(store: Store) -> None:
    batch = [_imp(f"imp-{n:03d}", n) for n in range(300)] + [_imp(None, 300)]
    assert store.log_impressions(batch) == 301
    assert store.log_impressions([]) == 0
    assert store.count_impressions() == 301
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    assert frame["impression_id"].tolist() == [f"imp-{n:03d}" for n in range(300)] + [None]
    assert frame["user_id"].tolist() == [f"u{n}" for n in range(301)]
    assert frame["id"].is_monotonic_increasing and frame["id"].is_unique
    row = frame.iloc[7]
    assert row["item_ids"] == ["i7", "j"] and row["scores"] == [1.0, 0.5]
    assert row["propensities"] == [0.6, 0.4] and row["context"] == "context 7"
    assert row["timestamp"] == 1007.0 and row["discovery"] == 0.5
    # a missing timestamp is filled with "now"
    store.log_impressions([Impression(None, (), (), "accurate", 0.0, impression_id="now")])
    assert store.impressions_frame().iloc[-1]["timestamp"] > 1e9  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (_imp("bad id!"), "'bad id!'"),
        (_imp(""), "''"),
        (_imp("x" * 65), "x" * 65),
        (_imp("ünï"), "ünï"),
        (_imp("line\n"), "line"),
        (_imp(7), "7"),  # type: ignore[arg-type]
        (Impression("u", ("a",), (float("inf"),), "balanced", 0.5, impression_id="ok-3"), "inf"),
        (Impression("u", ("a", "b"), (1.0,), "balanced", 0.5), "1 scores for 2 items"),
    ],
)
def test_bad_impression_in_batch_writes_nothing(store: Store, bad: Impression, named: str) -> None:
    with pytest.raises(DataError, match=re.escape(named)) as info:
        store.log_impressions([_imp("ok-1", 1), _imp("ok-2", 2), bad])
    assert "#2" in str(info.value)  # the position in the batch
    assert store.count_impressions() == 0
    # the ids of the failed batch were not consumed
    assert store.log_impressions([_imp("ok-1", 1), _imp("ok-2", 2)]) == 2


def test_duplicate_impression_id_rolls_back_the_batch(open_fresh: Callable[[], Store]) -> None:
    store = open_fresh()
    store.log_impressions([_imp("taken", 0)])
    with pytest.raises(DataError, match="'taken'"):
        store.log_impressions([_imp("fresh-1", 1), _imp("taken", 2), _imp("fresh-2", 3)])
    with pytest.raises(DataError, match="'twice'"):  # repeated inside one batch
        store.log_impressions([_imp("twice", 1), _imp("fresh-3", 2), _imp("twice", 3)])
    with pytest.raises(DataError, match="'taken'"):
        store.log_impression(_imp("taken", 4))
    assert store.count_impressions() == 1
    assert store.impressions_frame()["impression_id"].tolist() == ["taken"]  # type: ignore[attr-defined]
    # the database's own UNIQUE index holds too (another writer, below the store's check)
    insert = ("INSERT INTO impressions (item_ids, scores, preset, discovery, timestamp, "
              "impression_id) VALUES ('[]', '[]', 'p', 0, 0, 'taken')")
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn, pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert)
        conn.close()
    else:
        with psycopg.connect(store.url) as pg, pytest.raises(psycopg.errors.UniqueViolation):
            pg.execute(insert)  # type: ignore[arg-type]
    assert open_fresh().log_impressions([_imp("fresh-1", 1), _imp("fresh-2", 2)]) == 2


def test_impression_id_raced_by_another_transaction(backend: str, store: Store) -> None:
    """PostgreSQL: an id committed by another transaction after the store's check is refused."""
    if backend != "postgres":
        pytest.skip("SQLite writers hold the file's write lock from their check to their commit")
    errors: list[BaseException] = []
    with psycopg.connect(store.url) as other:
        other.execute("INSERT INTO impressions (item_ids, scores, preset, discovery, timestamp, "
                      "impression_id) VALUES ('[]', '[]', 'p', 0, 0, 'raced')")  # not committed

        def write() -> None:
            try:  # sees no 'raced' yet, then waits on the other transaction's index entry
                store.log_impressions([_imp("mine", 1), _imp("raced", 2)])
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=write)
        t.start()
        t.join(0.5)
        assert t.is_alive()  # blocked on the uncommitted row
        other.commit()
        t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], DataError)
    assert "raced" in str(errors[0]) and "nothing of the batch" in str(errors[0])
    assert store.impressions_frame()["impression_id"].tolist() == ["raced"]  # type: ignore[attr-defined]


def _create_v1(backend: str, store_url: str) -> None:
    """A database as schema version 1 left it (only the first migration), with impressions."""
    rows = [("old-user", '["a", "b"]', "[0.9, 0.1]", None, "balanced", 0.5, "ctx", 10.0),
            (None, "[]", "[]", "[]", "accurate", 0.0, None, 11.0)]
    if backend == "sqlite":
        from serendip.store.sqlite import SQLITE_MIGRATIONS

        version, steps = SQLITE_MIGRATIONS[0]
        conn = sqlite3.connect(store_url.removeprefix("sqlite://"))
        with conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                         "applied_at REAL NOT NULL)")
            for sql in steps:
                conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
            conn.executemany("INSERT INTO impressions (user_id, item_ids, scores, propensities, "
                             "preset, discovery, context, timestamp) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.close()
    else:
        from serendip.store.postgres import POSTGRES_MIGRATIONS

        version, steps = POSTGRES_MIGRATIONS[0]
        with psycopg.connect(store_url) as pg, pg.transaction():
            pg.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                       "applied_at DOUBLE PRECISION NOT NULL)")
            for sql in steps:
                pg.execute(sql)  # type: ignore[arg-type]
            pg.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
            pg.cursor().executemany("INSERT INTO impressions (user_id, item_ids, scores, "
                                    "propensities, preset, discovery, context, timestamp) "
                                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    assert version == 1


def test_migration_from_version_1_keeps_impressions(
    backend: str, store_url: str, open_fresh: Callable[[], Store]
) -> None:
    _create_v1(backend, store_url)
    store = open_fresh()  # migrates
    assert store.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    assert frame["user_id"].tolist() == ["old-user", None]
    assert frame.iloc[0]["item_ids"] == ["a", "b"] and frame.iloc[0]["scores"] == [0.9, 0.1]
    assert frame.iloc[0]["context"] == "ctx" and frame.iloc[1]["propensities"] == []
    assert frame["impression_id"].tolist() == [None, None]
    assert store.log_impressions([_imp("new-1", 1), _imp(None, 2)]) == 2
    with pytest.raises(DataError, match="new-1"):
        store.log_impressions([_imp("new-1", 3)])
    assert store.impressions_frame()["impression_id"].tolist() == [  # type: ignore[attr-defined]
        None, None, "new-1", None]
    assert store.migrate() == SCHEMA_VERSION and open_fresh().count_impressions() == 4


# API keys ----------------------------------------------------------------------------------
def test_api_keys(store: Store) -> None:
    keys = {role: store.create_api_key(f"svc-{role}", role) for role in ("read", "write", "admin")}
    for role, key in keys.items():
        assert key.startswith("sk_") and len(key) > 40
        assert store.check_api_key(key) == role
    assert len(set(keys.values())) == 3
    assert store.check_api_key(keys["read"] + "x") is None
    assert store.check_api_key(keys["read"][:-1]) is None
    assert store.check_api_key("") is None
    assert store.check_api_key("sk_\x00") is None

    assert store.revoke_api_key("svc-write") is True
    assert store.check_api_key(keys["write"]) is None
    assert store.revoke_api_key("svc-write") is False
    assert store.revoke_api_key("never-made") is False
    assert store.check_api_key(keys["admin"]) == "admin"


def test_api_key_plaintext_is_never_stored(store: Store) -> None:
    key = store.create_api_key("ops", "admin")
    secret = key.removeprefix("sk_")
    text = _all_rows_text(store)
    assert "ops" in text  # the scan does see the table
    assert secret not in text and secret[:12] not in text
    if isinstance(store, SQLiteStore):  # also the raw database and WAL files
        for path in Path(store.path).parent.glob(Path(store.path).name + "*"):
            assert secret.encode() not in path.read_bytes()


def test_api_key_bad_role_and_duplicate_name(store: Store) -> None:
    with pytest.raises(ConfigError, match="superuser"):
        store.create_api_key("x", "superuser")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="''"):
        store.create_api_key("", "read")
    store.create_api_key("x", "read")
    with pytest.raises(ConfigError, match="'x'"):
        store.create_api_key("x", "admin")
    assert store.api_keys_frame()["name"].tolist() == ["x"]  # type: ignore[attr-defined]


def test_role_order() -> None:
    assert role_at_least("admin", "write") and role_at_least("write", "write")
    assert not role_at_least("read", "write") and not role_at_least(None, "read")
    with pytest.raises(ConfigError, match="root"):
        role_at_least("read", "root")  # type: ignore[arg-type]


# bad input ---------------------------------------------------------------------------------
GOOD = EventRecord("u", "i")


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (EventRecord("", "i"), "''"),
        (EventRecord("u", ""), "''"),
        (EventRecord("u", "i", "teleport"), "teleport"),
        (EventRecord("u", "i", value=float("nan")), "nan"),
        (EventRecord("u", "i", value=float("inf")), "inf"),
        (EventRecord("u", "i", timestamp=float("-inf")), "-inf"),
        (EventRecord("u", "i", "rating"), "rating"),
        (EventRecord("u", "i\x00"), "NUL"),
        (EventRecord(7, "i"), "7"),  # type: ignore[arg-type]
        (EventRecord("u", "i", idempotency_key=""), "idempotency_key"),
    ],
)
def test_bad_event_names_value_and_writes_nothing(store: Store, bad: EventRecord, named: str) -> None:
    with pytest.raises(DataError, match=named.replace("\x00", "")) as info:
        store.append_events([GOOD, EventRecord("u", "j", idempotency_key="k"), bad])
    assert "#2" in str(info.value)  # the position in the batch
    assert store.count_events() == 0
    # the key of the failed batch was not consumed
    assert store.append_events([EventRecord("u", "j", idempotency_key="k")])[0].duplicate is False


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (ItemRecord(""), "''"),
        (ItemRecord("x", {"title": 3}), "3"),  # type: ignore[dict-item]
        (ItemRecord("x", {"item_id": "y"}), "item_id"),
        (ItemRecord("x", {"": "y"}), "''"),
        (ItemRecord("x", {"t": "a\x00b"}), "NUL"),
    ],
)
def test_bad_item_names_value_and_writes_nothing(store: Store, bad: ItemRecord, named: str) -> None:
    with pytest.raises(DataError, match=named):
        store.upsert_items([ItemRecord("good", {"title": "fine"}), bad])
    assert store.count_items() == 0


def test_bad_user_writes_nothing(store: Store) -> None:
    with pytest.raises(DataError, match="''"):
        store.upsert_users([UserRecord("ok"), UserRecord("")])
    assert store.get_user("ok") is None


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (Impression("u", ("a", "b"), (1.0,), "balanced", 0.5), "1 scores for 2 items"),
        (Impression("u", ("a",), (float("nan"),), "balanced", 0.5), "nan"),
        (Impression("u", ("a",), (1.0,), "balanced", 1.5), "1.5"),
        (Impression("u", ("a",), (1.0,), "", 0.5), "preset"),
        (Impression("u", ("a",), (1.0,), "balanced", 0.5, propensities=(2.0,)), "2.0"),
        (Impression("u", ("",), (1.0,), "balanced", 0.5), "item_ids"),
    ],
)
def test_bad_impression(store: Store, bad: Impression, named: str) -> None:
    with pytest.raises(DataError, match=named):
        store.log_impression(bad)
    assert store.count_impressions() == 0


def test_unknown_event_type_filter(store: Store) -> None:
    with pytest.raises(DataError, match="teleport"):
        store.events_frame(types=["teleport"])
    assert set(EVENT_TYPES) >= {"click", "rating"}


# lifetime ----------------------------------------------------------------------------------
def test_reopen_keeps_everything(open_fresh: Callable[[], Store]) -> None:
    s = open_fresh()
    s.upsert_items([ItemRecord("ünï", {"title": "T"})])
    s.upsert_users([UserRecord("u", {"a": "b"})])
    s.append_events([EventRecord("u", "ünï", "rating", timestamp=1.5, value=3.0)])
    s.log_impression(Impression("u", ("ünï",), (1.0,), "discovery", 1.0))
    key = s.create_api_key("k", "write")
    before = s.events_frame()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.count_events()

    t = open_fresh()
    assert t.get_item("ünï") == ItemRecord("ünï", {"title": "T"})
    assert t.get_user("u") == UserRecord("u", {"a": "b"})
    pd.testing.assert_frame_equal(t.events_frame(), before)
    assert t.count_impressions() == 1
    assert t.check_api_key(key) == "write"


def test_top_users_most_events_first(store: Store) -> None:
    store.append_events(
        [EventRecord("b", "i1"), EventRecord("a", "i1"), EventRecord("b", "i2"),
         EventRecord("c", "i1"), EventRecord("c", "i2"), EventRecord("c", "i3")]
    )
    assert store.top_users(10) == ["c", "b", "a"]
    assert store.top_users(2) == ["c", "b"]
    with pytest.raises(DataError, match="0"):
        store.top_users(0)
