"""A real, throw-away PostgreSQL server for tests: initdb into a temp dir, start it on a free loopback
port, create a database, stop it and remove everything at the end.

Uses Debian's server binaries (`make test` installs the `postgresql` package when missing). Tests run
as root in CI, and initdb/postgres refuse to run as root, so then they run as the `postgres` system
user. Missing binaries are an error, never a skip: the job-store tests would otherwise pass without
ever touching PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "dgate"
DATABASE = "dgate_test"
_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
max_connections = 100
# A throw-away database: durability off is several times faster and changes no semantics.
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def find_postgres_bin() -> Path:
    """The directory holding initdb and pg_ctl: the newest Debian version, else PATH."""
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if versions:
        newest = max(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.split("/")[3])] or [0])
        return Path(newest).parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH. "
        "The job-store tests need a real PostgreSQL: `make test` installs Debian's `postgresql` package "
        "(or run `apt-get install postgresql`)."
    )


def _as_server_user() -> list[str]:
    """The command prefix that drops root to the `postgres` user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    raise RuntimeError("running as root, and neither runuser nor setpriv exists to start PostgreSQL as `postgres`")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield `postgresql://dgate@127.0.0.1:PORT/dgate_test` for a fresh server that lives as long as the block."""
    bin_dir = find_postgres_bin()
    prefix = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="dgate-pg-"))
    data, log = root / "data", root / "server.log"
    try:
        if prefix:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
        root.chmod(0o755)
        _run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
              "--encoding=UTF8", "--no-locale", "--no-sync"], cwd=root)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS.format(socket_dir=root))
        port = _start(bin_dir, prefix, root, data, log)
        try:
            admin = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           cwd=root, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(bin_dir: Path, prefix: list[str], root: Path, data: Path, log: Path, tries: int = 3) -> int:
    """Start on a free port; another process may grab the port between probing and binding, so retry."""
    for attempt in range(tries):
        port = _free_port()
        result = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port}",
             "-w", "-t", "60", "start"],
            cwd=root, capture_output=True, text=True, timeout=90,
        )
        if result.returncode == 0:
            return port
        if attempt == tries - 1:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{server_log[-4000:]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One server for the session; tests keep apart by table name (the job stores take `table=`)."""
    with postgres_server() as url:
        yield url
