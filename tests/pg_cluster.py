"""A PostgreSQL cluster of the tests' own, in a temporary folder, that a test can stop and start for real.

The shared server (NEWSLETTER_TEST_DATABASE_URL) must never go down under other tests, so the fault
tests make their own: `initdb` and `pg_ctl` from /usr/lib/postgresql/<version>/bin, run as the
`postgres` OS user when the tests run as root (PostgreSQL refuses to run as root). Where the binaries
are missing the tests that need it are skipped, unless NEWSLETTER_REQUIRE_FAULTS=1 (set by .ci/run)
makes that a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

REQUIRED = os.environ.get("NEWSLETTER_REQUIRE_FAULTS") == "1"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One cluster: `start()`, `stop()` (fast or immediate, as a crash), `restart()`, and its `url`."""

    def __init__(self, bin_dir: Path, base: Path) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(command)
        if self._user:
            argv = ["runuser", "-u", self._user, "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.base}'\nfsync = off\nfull_page_writes = off\n"
                       "synchronous_commit = off\nmax_connections = 50\n")

    def start(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every connection cleanly, `immediate` is as abrupt as a crash."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        self.stop(mode)
        if down_for:
            time.sleep(down_for)
        self.start()

    def is_up(self) -> bool:
        return self._run(str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                         check=False).returncode == 0

    def create_database(self, name: str) -> str:
        """A new database on this cluster; its SQLAlchemy URL."""
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def own_cluster() -> Iterator[PostgresCluster]:
    """A started cluster for a fixture to yield, stopped and removed afterwards; skips (or fails) without binaries."""
    bin_dir = _bin_dir()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if REQUIRED:
            pytest.fail("NEWSLETTER_REQUIRE_FAULTS=1 but PostgreSQL's initdb/pg_ctl (or runuser) are missing")
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/<version>/bin)")
    base = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
    cluster = PostgresCluster(bin_dir, base)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
