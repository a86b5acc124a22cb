"""Published model versions and the cluster-wide lock, on both back ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from serendip.errors import DataError
from serendip.store import ModelVersion, Store


def test_no_model_is_published_at_first(store: Store) -> None:
    assert store.latest_model() is None
    assert store.list_models() == []


def test_versions_count_up_and_the_newest_is_latest(store: Store) -> None:
    a = store.publish_model("m-a", 100.0, "host:1", events=7)
    b = store.publish_model("m-b", 200.0, "host:2")
    assert (a.version, b.version) == (1, 2)
    assert a == ModelVersion(1, "m-a", 100.0, a.created_at, "host:1", 7)
    assert b.events is None
    assert store.latest_model() == b
    assert store.list_models() == [b, a]
    assert store.list_models(limit=1) == [b]


def test_versions_survive_reopening(open_fresh: Callable[[], Store]) -> None:
    first = open_fresh()
    published = first.publish_model("m-1", 1.5, "x")
    first.close()
    assert open_fresh().latest_model() == published


@pytest.mark.parametrize("name", ["", ".hidden", "../up", "a/b", "sp ace", "x" * 129, 5])
def test_a_model_name_must_be_one_safe_path_component(store: Store, name: object) -> None:
    with pytest.raises(DataError, match="model name"):
        store.publish_model(name, 1.0, "x")  # type: ignore[arg-type]
    assert store.latest_model() is None


def test_a_name_is_published_once(store: Store) -> None:
    store.publish_model("m-1", 1.0, "x")
    with pytest.raises(DataError, match="'m-1' is already published"):
        store.publish_model("m-1", 2.0, "y")
    assert [m.version for m in store.list_models()] == [1]


def test_bad_publish_values_are_refused(store: Store) -> None:
    with pytest.raises(DataError, match="fitted_at"):
        store.publish_model("m", float("nan"), "x")
    with pytest.raises(DataError, match="events"):
        store.publish_model("m", 1.0, "x", events=-1)
    with pytest.raises(DataError, match="limit"):
        store.list_models(limit=0)


def test_concurrent_publishers_get_distinct_versions(open_fresh: Callable[[], Store]) -> None:
    stores = [open_fresh() for _ in range(3)]
    got: list[int] = []
    errors: list[BaseException] = []

    def publish(n: int) -> None:
        try:
            for j in range(4):
                got.append(stores[n].publish_model(f"m-{n}-{j}", 1.0, f"p{n}").version)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(got) == list(range(1, 13))
    assert [m.version for m in stores[0].list_models()] == list(range(12, 0, -1))


def test_a_lock_excludes_other_holders_until_released(open_fresh: Callable[[], Store]) -> None:
    one, two = open_fresh(), open_fresh()  # two processes' stores on one database
    assert one.acquire_lock("retrain", "a", 30.0)
    assert one.acquire_lock("retrain", "a", 30.0)  # re-taking one's own lock renews it
    assert not two.acquire_lock("retrain", "b", 30.0)
    assert two.acquire_lock("seed", "b", 30.0)  # another name is another lock
    assert one.renew_lock("retrain", "a", 30.0)
    assert not two.renew_lock("retrain", "b", 30.0)
    assert not two.release_lock("retrain", "b")  # not its lock: nothing happens
    assert not two.acquire_lock("retrain", "b", 30.0)
    assert one.release_lock("retrain", "a")
    assert not one.release_lock("retrain", "a")
    assert two.acquire_lock("retrain", "b", 30.0)
    assert not one.acquire_lock("retrain", "a", 30.0)


def test_closing_a_store_gives_its_locks_back(open_fresh: Callable[[], Store]) -> None:
    one, two = open_fresh(), open_fresh()
    assert one.acquire_lock("retrain", "a", 30.0)
    one.close()
    # PostgreSQL: the session ended; SQLite: the lease is still there until it lapses
    assert two.acquire_lock("retrain", "b", 30.0) == (type(two).__name__ == "PostgresStore")


def test_an_unrenewed_lease_lapses(open_fresh: Callable[[], Store], backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL locks end with their session, not by time")
    one, two = open_fresh(), open_fresh()
    assert one.acquire_lock("retrain", "a", 0.05)
    time.sleep(0.2)
    assert not one.renew_lock("retrain", "a", 30.0)
    assert two.acquire_lock("retrain", "b", 30.0)
    assert not one.release_lock("retrain", "a")


@pytest.mark.parametrize(("name", "holder", "ttl"),
                         [("", "a", 1.0), ("r", "", 1.0), ("r", "a", 0.0), ("r", "a", -1.0),
                          ("r", "a", float("inf"))])
def test_bad_lock_arguments_are_refused(store: Store, name: str, holder: str,
                                        ttl: float) -> None:
    with pytest.raises(DataError):
        store.acquire_lock(name, holder, ttl)
