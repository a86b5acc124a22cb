"""A throwaway PostgreSQL server for tests and benchmarks (initdb into a temp dir, loopback only).

Used by ``tests/store/conftest.py`` and ``bench/store_ingest.py``.  Needs the server binaries
(``initdb``, ``pg_ctl``, ``postgres``); ``find_pg_bin`` looks in ``$SERENDIP_PG_BIN``, on
``PATH`` and under ``/usr/lib/postgresql/*/bin``.  When run as root the server runs as the
``postgres`` OS user, because initdb refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from serendip.errors import StoreError

__all__ = ["PostgresServer", "create_schema", "find_pg_bin", "schema_url"]


def find_pg_bin() -> Path | None:
    """The directory holding initdb/pg_ctl, or None when PostgreSQL is not installed."""
    candidates: list[str] = []
    if os.environ.get("SERENDIP_PG_BIN"):
        candidates.append(os.environ["SERENDIP_PG_BIN"])
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    # Highest installed major version first.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for c in candidates:
        d = Path(c)
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file() and (d / "postgres").is_file():
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (a fresh namespace per test)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def create_schema(url: str) -> str:
    """Create an empty schema in the database at ``url``; returns a URL that uses it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]  # generated name
    return schema_url(url, name)


class PostgresServer:
    """Start with :meth:`start`, stop (and delete everything) with :meth:`stop`."""

    def __init__(self, bin_dir: Path | None = None, dbname: str = "serendip") -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise StoreError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bin_dir = found
        self.dbname = dbname
        self.port = 0
        self.root: Path | None = None
        self._as_postgres = hasattr(os, "geteuid") and os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StoreError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def start(self) -> str:
        """initdb, start on a free loopback port, create the database; returns its URL."""
        self.root = Path(tempfile.mkdtemp(prefix="serendip-pg-"))
        try:
            if self._as_postgres:
                shutil.chown(self.root, user="postgres", group="postgres")
            data, sock = self.root / "data", self.root / "sock"
            sock.mkdir()
            if self._as_postgres:
                shutil.chown(sock, user="postgres", group="postgres")
            self._run(
                "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )
            self.port = _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={sock} "
                "-c max_connections=200"
            )
            self._run(
                "pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.root / "server.log"),
                "-w", "-t", "60", "start",
            )
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
            ) as conn:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')  # type: ignore[arg-type]
        except BaseException:
            try:
                self.stop()
            except StoreError:
                pass
            raise
        return self.url

    def new_schema(self) -> str:
        """Create an empty schema and return a URL whose search_path points at it."""
        return create_schema(self.url)

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if self.port:
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
