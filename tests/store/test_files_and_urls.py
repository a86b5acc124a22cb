"""Private database files, and URLs whose passwords never reach a message or a repr."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from serendip.errors import ConfigError, StoreError
from serendip.store import (
    EventRecord,
    PostgresStore,
    SQLiteStore,
    StoreUnavailableError,
    open_store,
    redact_url,
)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask, as a careless service manager might leave it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_new_database_file_dir_and_sidecars_are_private(tmp_path: Path, open_umask: None
                                                        ) -> None:
    before = _mode(tmp_path)
    path = tmp_path / "made" / "deeper" / "store.db"
    store = open_store(f"sqlite://{path}")
    try:
        store.append_events([EventRecord("u", "i")])
        assert _mode(path) == 0o600
        assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
        for side in ("-wal", "-shm"):
            assert _mode(f"{path}{side}") == 0o600
        assert _mode(tmp_path) == before  # a directory it did not create is left alone
    finally:
        store.close()


def test_existing_file_keeps_its_mode_and_sidecars_never_exceed_it(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "shared.db"
    open_store(f"sqlite://{path}").close()
    os.chmod(path, 0o640)  # an operator chose group read access
    for side in ("-wal", "-shm"):
        side_path = Path(f"{path}{side}")
        side_path.touch()
        os.chmod(side_path, 0o666)  # left too open by some other tool
    store = open_store(f"sqlite://{path}")
    try:
        store.append_events([EventRecord("u", "i")])
        assert _mode(path) == 0o640
        for side in ("-wal", "-shm"):
            assert _mode(f"{path}{side}") == 0o640
    finally:
        store.close()


def test_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match="plain"):
        SQLiteStore(tmp_path / "plain" / "store.db")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgres://user:secret@host:5432/db?sslmode=require",
         "postgres://user:***@host:5432/db?sslmode=require"),
        ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
        ("postgresql://user:p@ss/w@rd@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db?password=secret&sslmode=require",
         "postgresql://user@host/db?password=***&sslmode=require"),
        ("postgresql://user@host/db?PASSWORD=secret", "postgresql://user@host/db?PASSWORD=***"),
        ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password = 'sec ret\\' x' dbname=d", "host=h password = *** dbname=d"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("sqlite:///var/lib/serendip/store.db", "sqlite:///var/lib/serendip/store.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url) and "sec ret" not in redact_url(url)


def test_bad_urls_are_named_without_their_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("mysql://root:topsecret@db/x")
    assert "topsecret" not in str(info.value) and "root:***@db" in str(info.value)
    with pytest.raises(ConfigError, match="pool_size") as info:
        PostgresStore("postgresql://u:topsecret@127.0.0.1:1/x?pool_size=0")
    assert "topsecret" not in str(info.value)


def test_postgres_store_url_connects_but_is_never_shown(pg_url: str) -> None:
    # the throwaway server trusts loopback, so a password in the URL is accepted and ignored
    url = pg_url.replace("postgres@", "postgres:pa55-word-xyz@") + "?pool_size=2&pool_timeout=3"
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        assert "pa55-word-xyz" in store.url and "pool_size" not in store.url  # libpq-ready
        assert store.pool_size == 2 and store.pool_timeout == 3.0
        assert "pa55-word-xyz" not in store.display_url
        assert store.display_url == redact_url(store.url)
        assert "pa55-word-xyz" not in repr(store) and "postgres:***@" in repr(store)
    finally:
        store.close()
    with pytest.raises(StoreError) as info:
        store.count_events()
    assert "closed" in str(info.value) and "pa55-word-xyz" not in str(info.value)


def test_unreachable_postgres_message_hides_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailableError) as info:
        PostgresStore(f"postgresql://u@127.0.0.1:{port}/d?password=s3cr3t-value",
                      connect_timeout=2)
    assert "s3cr3t-value" not in str(info.value) and "password=***" in str(info.value)


def test_a_password_with_a_raw_at_sign_is_hidden_from_driver_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # libpq cuts this URL at the first "@" and quotes the rest of the password as the host
    with pytest.raises(StoreError) as info:
        PostgresStore(f"postgresql://u:pa@ssXYZ@127.0.0.1:{port}/d", connect_timeout=2)
    assert "ssXYZ" not in str(info.value) and "pa@ss" not in str(info.value)
