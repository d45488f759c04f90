"""What tests need from outside Python, found or started here - never assumed.

- PostgreSQL: the server named by SEGFLOW_TEST_POSTGRES_URL (an admin URL on which the tests may create and drop
  databases), else a throwaway server started from the PostgreSQL binaries when they are installed (initdb,
  pg_ctl; as root, run as the `postgres` system user), else the test is skipped with the reason.
- Programs from the system (Chromium and its driver, docker-compose): used when installed, else skipped with the
  reason and the command that installs them (`make system-deps`).

`need()` is the one way a test says "I cannot run here": under SEGFLOW_TEST_STRICT=1 (set by .ci/run, where every
service is present) it fails instead of skipping, and the conftest hook turns any other skip into a failure too.
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
from dataclasses import dataclass
from pathlib import Path

import pytest

STRICT_ENV = "SEGFLOW_TEST_STRICT"
POSTGRES_URL_ENV = "SEGFLOW_TEST_POSTGRES_URL"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes")


def need(condition: object, reason: str) -> None:
    """Skip (or, under SEGFLOW_TEST_STRICT, fail) with `reason` unless `condition` holds."""
    if condition:
        return
    if strict():
        pytest.fail(f"{reason} ({STRICT_ENV} is set: nothing may skip)", pytrace=False)
    pytest.skip(reason)


def program(name: str, *fallbacks: str) -> str:
    """The path of a system program, or a skip naming how to install it."""
    for candidate in (shutil.which(name), *fallbacks):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    need(False, f"{name} is not installed (`make system-deps` installs it)")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server tests may create databases on."""

    host: str
    port: int
    user: str
    password: str = ""

    def url(self, database: str = "postgres") -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{database}"

    def dbt_env(self, database: str) -> dict[str, str]:
        """The variables dbt_project/profiles.yml's postgres target reads."""
        return {
            "SEGFLOW_PG_HOST": self.host,
            "SEGFLOW_PG_PORT": str(self.port),
            "SEGFLOW_PG_USER": self.user,
            "SEGFLOW_PG_PASSWORD": self.password,
            "SEGFLOW_PG_DATABASE": database,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) + sorted(
        glob.glob(f"/usr/local/pgsql/bin/{name}")
    )
    return candidates[-1] if candidates else None


class ThrowawayPostgres:
    """initdb + pg_ctl in a temporary folder, on a free port of 127.0.0.1, trust authentication; removed on stop."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        self.folder: Path | None = None
        self.port = _free_port()
        self.run_as: list[str] = []

    def available(self) -> str | None:
        """None if a server can be started here, else why not."""
        if not (self.initdb and self.pg_ctl):
            return (
                "no PostgreSQL: set SEGFLOW_TEST_POSTGRES_URL to a server's admin URL or install the PostgreSQL "
                "server binaries (initdb, pg_ctl)"
            )
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its system user
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "PostgreSQL will not run as root and there is no 'postgres' user to run it as"
            runuser = shutil.which("runuser")
            if not runuser:
                return "PostgreSQL will not run as root and runuser is missing"
            self.run_as = [runuser, "-u", "postgres", "--"]
        return None

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, *argv], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PostgresServer:
        self.folder = Path(tempfile.mkdtemp(prefix="segflow-pg-"))
        if self.run_as:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        data, sockets = self.folder / "data", self.folder
        done = self._run(str(self.initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        options = (
            f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        done = self._run(
            str(self.pg_ctl),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            log = (
                (self.folder / "server.log").read_text(errors="replace")[-2000:]
                if (self.folder / "server.log").exists()
                else ""
            )
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-2000:]} {log}")
        return PostgresServer("127.0.0.1", self.port, "postgres")

    def stop(self) -> None:
        if self.folder is None:
            return
        self._run(str(self.pg_ctl), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


def server_from_url(url: str) -> PostgresServer:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return PostgresServer(
        parsed.host or "127.0.0.1", parsed.port or 5432, parsed.username or "postgres", parsed.password or ""
    )


def wait_for(server: PostgresServer, timeout: float = 30) -> None:
    from sqlalchemy import create_engine, text

    deadline = time.monotonic() + timeout
    while True:
        engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            engine.dispose()
