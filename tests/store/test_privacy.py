"""A person's data (erase, export, retention), the catalog version, and API key management,
on both back ends."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from serendip.errors import ConfigError, DataError
from serendip.store import (
    ApiKeyInfo,
    EventRecord,
    Impression,
    ItemRecord,
    SQLiteStore,
    Store,
    UserRecord,
)
from serendip.store.sqlite import SCHEMA_VERSION


def _imp(user: str | None, n: int, ts: float, context: str | None = None) -> Impression:
    return Impression(user, (f"i{n}", "j"), (0.9, 0.1), "balanced", 0.25, (0.7, 0.3),
                      context, ts, f"imp-{user}-{n}")


def _seed_two_people(store: Store) -> None:
    store.upsert_users([UserRecord("ann", {"country": "NZ"}), UserRecord("bob", {"age": "40"})])
    store.append_events(
        [EventRecord("ann", f"i{n}", "rating", timestamp=100.0 + n, value=float(n % 5),
                     idempotency_key=f"ann-{n}") for n in range(1200)]
        + [EventRecord("bob", "i1", "click", timestamp=50.0)]
    )
    store.log_impressions([
        _imp("ann", 1, 10.0, "a quiet book about whales, said ann"),
        _imp("ann", 2, 20.0),
        _imp("bob", 3, 30.0, "bob wants noisy films"),
        _imp(None, 4, 40.0, "anonymous request"),
    ])


# erase -------------------------------------------------------------------------------------
def test_erase_user_deletes_everything_of_that_user_only(store: Store) -> None:
    _seed_two_people(store)
    assert store.erase_user("ann") == {"events": 1200, "impressions": 2, "users": 1,
                                      "conversations": 0}
    assert store.get_user("ann") is None and store.user_events("ann").empty
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    assert frame["user_id"].tolist() == ["bob", None]
    assert "whales" not in " ".join(c for c in frame["context"] if c)
    # everyone else is untouched
    assert store.get_user("bob") == UserRecord("bob", {"age": "40"})
    assert store.count_events() == 1 and store.user_events("bob")["item_id"].tolist() == ["i1"]
    # erasing again, or someone unknown, finds nothing
    assert store.erase_user("ann") == {"events": 0, "impressions": 0, "users": 0,
                                      "conversations": 0}
    assert store.erase_user("") == {"events": 0, "impressions": 0, "users": 0,
                                   "conversations": 0}
    # the idempotency keys went with the events: the same key is a new event now
    (ack,) = store.append_events([EventRecord("ann", "i0", idempotency_key="ann-0")])
    assert not ack.duplicate


def test_erase_user_is_all_or_nothing(backend: str, store: Store) -> None:
    _seed_two_people(store)
    # the last of the three deletes fails: the other two must be rolled back with it
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute("CREATE TRIGGER keep_users BEFORE DELETE ON users "
                         "BEGIN SELECT RAISE(ABORT, 'users are kept'); END")
        conn.close()
        failure: type[Exception] = sqlite3.DatabaseError
    else:
        with psycopg.connect(store.url, autocommit=True) as pg:  # type: ignore[attr-defined]
            pg.execute("CREATE FUNCTION keep_users() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'users are kept'; END $$")
            pg.execute("CREATE TRIGGER keep_users BEFORE DELETE ON users "
                       "FOR EACH ROW EXECUTE FUNCTION keep_users()")
        failure = psycopg.Error
    with pytest.raises(failure, match="users are kept"):
        store.erase_user("ann")
    assert len(store.user_events("ann")) == 1200
    assert store.count_impressions() == 4 and store.get_user("ann") is not None


def test_erased_text_is_gone_from_the_sqlite_files(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.migrate()
        marker = "zebra-unicorn-7731"
        store.upsert_users([UserRecord(marker, {"note": marker})])
        store.append_events([EventRecord(marker, "i", idempotency_key=marker + "-key")])
        store.log_impressions([Impression(marker, ("i",), (1.0,), "balanced", 0.5,
                                          context=f"{marker} searched for this")])
        store.append_events([EventRecord("other", "i")])
        files = sorted(tmp_path.glob("s.db*"))
        assert any(marker.encode() in f.read_bytes() for f in files)  # the scan sees it
        store.erase_user(marker)
        for f in sorted(tmp_path.glob("s.db*")):
            assert marker.encode() not in f.read_bytes(), f.name
        assert store.count_events() == 1
    finally:
        store.close()


# export ------------------------------------------------------------------------------------
def test_export_user_is_complete_and_json(store: Store) -> None:
    _seed_two_people(store)
    out = store.export_user("ann")
    assert json.loads(json.dumps(out)) == out  # JSON-serialisable as it is
    assert out["user_id"] == "ann"
    assert out["user"]["fields"] == {"country": "NZ"} and out["user"]["updated_at"] > 1e9
    events = out["events"]
    assert len(events) == 1200  # no cap
    assert [e["item_id"] for e in events] == [f"i{n}" for n in range(1200)]
    first = events[0]
    assert (first["type"], first["timestamp"], first["value"], first["idempotency_key"]) == (
        "rating", 100.0, 0.0, "ann-0")
    assert events[7]["value"] == 2.0 and events[0]["event_id"] < events[1]["event_id"]
    imps = out["impressions"]
    assert [i["impression_id"] for i in imps] == ["imp-ann-1", "imp-ann-2"]
    assert imps[0]["item_ids"] == ["i1", "j"] and imps[0]["scores"] == [0.9, 0.1]
    assert imps[0]["propensities"] == [0.7, 0.3] and imps[0]["preset"] == "balanced"
    assert imps[0]["discovery"] == 0.25 and imps[0]["timestamp"] == 10.0
    assert imps[0]["context"] == "a quiet book about whales, said ann"
    assert imps[1]["context"] is None
    assert "bob" not in json.dumps(out)  # nobody else's data

    nobody = store.export_user("nobody")
    assert nobody == {"user_id": "nobody", "user": None, "events": [], "impressions": [],
                      "conversations": []}
    # events without a user record still belong to the person
    store.append_events([EventRecord("carl", "x", timestamp=5.0)])
    carl = store.export_user("carl")
    assert carl["user"] is None and [e["item_id"] for e in carl["events"]] == ["x"]


# retention ---------------------------------------------------------------------------------
def test_purge_before_drops_old_impressions_only(store: Store) -> None:
    _seed_two_people(store)
    assert store.purge_before(30.0) == {"impressions": 2}  # 10.0 and 20.0; 30.0 is kept
    frame = store.impressions_frame()  # type: ignore[attr-defined]
    assert frame["timestamp"].tolist() == [30.0, 40.0]
    assert store.count_events() == 1201  # events are training data: retention keeps them
    assert store.purge_before(0.0) == {"impressions": 0}
    with pytest.raises(DataError, match="nan"):
        store.purge_before(float("nan"))
    with pytest.raises(DataError, match="'yesterday'"):
        store.purge_before("yesterday")  # type: ignore[arg-type]
    assert store.purge_before(time.time() + 1) == {"impressions": 2}
    assert store.count_impressions() == 0


# catalog version ---------------------------------------------------------------------------
def test_catalog_version_is_shared_and_bumped_only_by_changes(
    open_fresh: Callable[[], Store]
) -> None:
    a, b = open_fresh(), open_fresh()  # two service instances on one database
    assert a.catalog_version() == b.catalog_version() == 0
    a.upsert_items([ItemRecord("x", {"title": "X"}), ItemRecord("y", {"title": "Y"})])
    assert b.catalog_version() == 1
    a.upsert_items([ItemRecord("x", {"title": "X"})])  # the same record again: no change
    assert b.catalog_version() == 1
    b.upsert_items([ItemRecord("x", {"title": "X2"})])
    assert a.catalog_version() == 2
    a.append_events([EventRecord("u", "x")])
    a.upsert_users([UserRecord("u", {"k": "v"})])
    assert b.catalog_version() == 2  # only the catalog counts
    assert a.delete_items(["nope"]) == 0 and b.catalog_version() == 2
    assert a.delete_items(["y", "y", "nope"]) == 1
    assert b.catalog_version() == 3
    assert b.deleted_items_since(2) == ["y"] and b.deleted_items_since(3) == []
    assert b.deleted_items_since(0) == ["y"]
    b.upsert_items([ItemRecord("z")])
    b.delete_items(["x", "z"])
    assert a.catalog_version() == 5
    assert a.deleted_items_since(2) == ["x", "y", "z"] and a.deleted_items_since(4) == ["x", "z"]
    a.upsert_items([ItemRecord("y", {"title": "back"})])  # stored again: no longer deleted
    assert b.deleted_items_since(0) == ["x", "z"] and b.catalog_version() == 6
    with pytest.raises(DataError, match="-1"):
        a.deleted_items_since(-1)


# API keys ----------------------------------------------------------------------------------
def test_api_keys_list_count_and_revoke(store: Store) -> None:
    t0 = time.time()
    read = store.create_api_key("dashboard", "read")
    store.create_api_key("ingest", "write")
    admin = store.create_api_key("ops", "admin")
    keys = store.list_api_keys()
    assert [k.name for k in keys] == ["dashboard", "ingest", "ops"]
    assert [k.role for k in keys] == ["read", "write", "admin"]
    assert all(t0 - 1 <= k.created_at <= time.time() + 1 and k.active for k in keys)
    assert all(k.revoked_at is None and k.last_used_at is None for k in keys)
    assert set(vars(keys[0])) == {"name", "role", "created_at", "revoked_at", "last_used_at"}
    assert store.count_api_keys() == 3 and store.count_api_keys("admin") == 1

    assert store.check_api_key(read) == "read"
    (used,) = [k for k in store.list_api_keys() if k.name == "dashboard"]
    assert used.last_used_at is not None and used.last_used_at >= t0 - 1

    assert store.revoke_api_key("ops") is True
    assert store.check_api_key(admin) is None  # a revoked key no longer authenticates
    assert store.revoke_api_key("ops") is False and store.revoke_api_key("nobody") is False
    (ops,) = [k for k in store.list_api_keys() if k.name == "ops"]
    assert isinstance(ops, ApiKeyInfo) and not ops.active and ops.revoked_at is not None
    assert store.count_api_keys() == 2 and store.count_api_keys("admin") == 0
    assert store.count_api_keys(active_only=False) == 3
    assert store.count_api_keys("admin", active_only=False) == 1
    with pytest.raises(ConfigError, match="'ops'.*revoked"):  # names are not reused
        store.create_api_key("ops", "admin")
    with pytest.raises(ConfigError, match="'ingest'"):
        store.create_api_key("ingest", "read")
    with pytest.raises(ConfigError, match="root"):
        store.count_api_keys("root")  # type: ignore[arg-type]
    # nothing of a key's secret or hash is listed
    listed = repr(store.list_api_keys())
    assert read not in listed and read.removeprefix("sk_")[:12] not in listed
    assert "hmac" not in listed


# upgrade -----------------------------------------------------------------------------------
def _create_v2(backend: str, store_url: str) -> None:
    """A database as schema version 2 left it, with a catalog and one revoked key."""
    keys = [("old-admin", "lookup1", "hmac-sha256$00$00", "admin", 5.0, False),
            ("old-gone", "lookup2", "hmac-sha256$00$00", "read", 6.0, True)]
    if backend == "sqlite":
        from serendip.store.sqlite import SQLITE_MIGRATIONS

        conn = sqlite3.connect(store_url.removeprefix("sqlite://"))
        with conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                         "applied_at REAL NOT NULL)")
            for version, steps in SQLITE_MIGRATIONS[:2]:
                for sql in steps:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
            conn.execute("INSERT INTO items VALUES ('a', '{\"title\": \"A\"}', 1.0)")
            conn.executemany("INSERT INTO api_keys (name, key_lookup, key_hash, role, "
                             "created_at, revoked) VALUES (?, ?, ?, ?, ?, ?)", keys)
        conn.close()
    else:
        from serendip.store.postgres import POSTGRES_MIGRATIONS

        with psycopg.connect(store_url) as pg, pg.transaction():
            pg.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                       "applied_at DOUBLE PRECISION NOT NULL)")
            for version, steps in POSTGRES_MIGRATIONS[:2]:
                for sql in steps:
                    pg.execute(sql)  # type: ignore[arg-type]
                pg.execute("INSERT INTO schema_version VALUES (%s, 0)", (version,))
            pg.execute("INSERT INTO items VALUES ('a', '{\"title\": \"A\"}', 1.0)")
            pg.cursor().executemany("INSERT INTO api_keys (name, key_lookup, key_hash, role, "
                                    "created_at, revoked) VALUES (%s, %s, %s, %s, %s, %s)", keys)


def test_upgrade_from_version_2_in_place(
    backend: str, store_url: str, open_fresh: Callable[[], Store]
) -> None:
    _create_v2(backend, store_url)
    before = time.time()
    store = open_fresh()  # migrates
    assert store.schema_version() == SCHEMA_VERSION == 7  # type: ignore[attr-defined]
    assert store.latest_model() is None  # version 6: no model published yet
    keys = {k.name: k for k in store.list_api_keys()}
    assert keys["old-admin"].active and keys["old-admin"].created_at == 5.0
    gone = keys["old-gone"]
    assert not gone.active and gone.revoked_at is not None and gone.revoked_at >= before - 5
    assert store.count_api_keys() == 1 and store.count_api_keys(active_only=False) == 2
    assert store.get_item("a") == ItemRecord("a", {"title": "A"})
    assert store.catalog_version() == 0 and store.deleted_items_since(0) == []
    store.delete_items(["a"])
    assert store.catalog_version() == 1 and store.deleted_items_since(0) == ["a"]
    _seed_two_people(store)  # the new indexes and columns serve the new calls
    assert store.erase_user("bob") == {"events": 1, "impressions": 1, "users": 1,
                                      "conversations": 0}
    assert open_fresh().migrate() == SCHEMA_VERSION


def test_a_key_cap_holds_under_concurrent_creation_through_two_stores(
        open_fresh: Callable[[], Store]) -> None:
    """Twenty threads over two store objects (two instances) race to create admin keys: the
    cap is counted inside each creating transaction, so exactly ``cap`` succeed."""
    import threading

    a, b = open_fresh(), open_fresh()
    cap = 5
    made: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(20)

    def create(n: int) -> None:
        start.wait()
        try:
            (a if n % 2 else b).create_api_key(f"admin-{n}", "admin", max_active=cap)
            made.append(str(n))
        except ConfigError as e:
            assert "the limit is 5" in str(e)
            refused.append(str(n))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(made) == cap and len(refused) == 20 - cap
    assert a.count_api_keys(role="admin") == cap
    a.create_api_key("reader", "read", max_active=cap)  # the cap is per role


def test_concurrent_revocations_keep_the_last_admin_key(open_fresh: Callable[[], Store]) -> None:
    """Two instances revoke the only two admin keys at once: one succeeds, the other is
    refused inside its transaction, so an admin key always remains."""
    import threading

    a, b = open_fresh(), open_fresh()
    a.create_api_key("k1", "admin")
    a.create_api_key("k2", "admin")
    results: list[str] = []
    start = threading.Barrier(2)

    def revoke(store: Store, name: str) -> None:
        start.wait()
        try:
            results.append("revoked" if store.revoke_api_key(name, keep_last_admin=True)
                           else "missing")
        except ConfigError as e:
            assert "last active admin key" in str(e)
            results.append("refused")

    threads = [threading.Thread(target=revoke, args=(a, "k1")),
               threading.Thread(target=revoke, args=(b, "k2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["refused", "revoked"]
    assert a.count_api_keys(role="admin") == 1
    assert a.revoke_api_key("k1") or a.revoke_api_key("k2")  # without the guard: allowed


def test_conversations_are_stored_resumed_exported_and_erased(store: Store) -> None:
    state = {"liked": [3], "genres": ["comedy"], "turns": 1}
    msgs = [{"role": "user", "text": "I loved Heat"}, {"role": "assistant", "text": "Try …"}]
    store.save_conversation("c1", "ann", state, msgs)
    got = store.get_conversation("c1")
    assert got is not None and got["state"] == state and got["messages"] == msgs
    store.save_conversation("c1", "ann", {**state, "turns": 2}, [*msgs, *msgs])  # resumed
    again = store.get_conversation("c1")
    assert again is not None and again["state"]["turns"] == 2 and len(again["messages"]) == 4
    store.save_conversation("c2", None, {}, [])  # anonymous
    assert [c["conversation_id"] for c in store.export_user("ann")["conversations"]] == ["c1"]
    assert store.erase_user("ann")["conversations"] == 1
    assert store.get_conversation("c1") is None and store.get_conversation("c2") is not None
    with pytest.raises(DataError, match="conversation id"):
        store.save_conversation("bad\x00id", None, {}, [])
