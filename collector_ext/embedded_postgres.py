"""A real PostgreSQL 15 with pgaudit, started in a temporary directory on loopback: for the demo's
pgaudit line and the database source's tests, as ``embedded_s3`` is for S3.

The server runs as the unprivileged `postgres` system user when run as root (initdb and postgres
refuse root), otherwise as the current user. It logs in PostgreSQL 15's jsonlog format
through the logging collector into a directory the test can read, with pgaudit and connection
logging on, and a password-authenticated role over TCP so a failed login can be produced.

jsonlog rather than csvlog: one JSON object per line, so the collector's filelog receiver needs no
multiline rule (csvlog quotes embedded newlines, which spread a record over several lines) and the
pgaudit payload is CSV inside a JSON string instead of CSV inside CSV.

It does not install PostgreSQL: when the binaries are missing, `EmbeddedPostgres()` raises an error
that says which Debian packages to install. SQL is run with the server's own psql, so no Python
driver is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from collector_ext.errors import CollectorExtError

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PACKAGES = "postgresql-15 postgresql-15-pgaudit"
SUPERUSER = "postgres"
APP_ROLE = "audit_app"
# A throwaway cluster on loopback, removed afterwards: a fixed password is fine.
APP_PASSWORD = "correct horse"  # noqa: S105
APP_DATABASE = "shop"
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 20
SQL_TIMEOUT_SECONDS = 30

# Lines appended to postgresql.conf; README "Sources: PostgreSQL pgaudit" shows the same settings.
SERVER_SETTINGS = {
    "shared_preload_libraries": "'pgaudit'",
    "listen_addresses": "'127.0.0.1'",
    "logging_collector": "on",
    "log_destination": "'jsonlog'",
    "log_filename": "'postgresql-%Y-%m-%d_%H%M%S.log'",
    "log_file_mode": "0644",
    "log_timezone": "'UTC'",
    "log_connections": "on",
    "log_disconnections": "on",
    # Every class but MISC (VACUUM, FETCH, DISCARD, CHECKPOINT, SET: noise, not data access).
    "pgaudit.log": "'all, -misc'",
    "pgaudit.log_parameter": "on",
    # One line per relation, so SELECT and DML lines carry their table (db.collection.name).
    "pgaudit.log_relation": "on",
    "pgaudit.log_rows": "on",
    # Skip statements touching only pg_catalog (psql's own lookups).
    "pgaudit.log_catalog": "off",
}


class EmbeddedPostgresError(CollectorExtError):
    """PostgreSQL 15 with pgaudit is not installed, or the server did not do what it was asked."""


def _missing_binaries() -> list[str]:
    return [name for name in ("initdb", "pg_ctl", "postgres", "psql") if not (BIN_DIR / name).is_file()]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One PostgreSQL 15 cluster with pgaudit; use as a context manager (always stopped on exit)."""

    def __init__(self) -> None:
        missing = _missing_binaries()
        if missing:
            raise EmbeddedPostgresError(
                f"PostgreSQL 15 is not installed ({', '.join(missing)} missing under {BIN_DIR}); "
                f"install the Debian packages: apt-get install -y {PACKAGES}"
            )
        if not (Path("/usr/share/postgresql/15/extension") / "pgaudit.control").is_file():
            raise EmbeddedPostgresError(f"pgaudit for PostgreSQL 15 is not installed; apt-get install -y {PACKAGES}")
        self.root = Path(tempfile.mkdtemp(prefix="collector-ext-pg-"))
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "log"
        self.socket_dir = self.root / "socket"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._started = False

    # -- process plumbing

    def _server_command(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SUPERUSER, "--", *args]
        return list(args)

    def _run_server_tool(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._server_command(*args), capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )

    def _prepare_directories(self) -> None:
        for directory in (self.log_dir, self.socket_dir):
            directory.mkdir()
        self.root.chmod(0o755)
        self.log_dir.chmod(0o755)
        if self._as_root:
            for path in (self.root, self.log_dir, self.socket_dir):
                shutil.chown(path, SUPERUSER, SUPERUSER)

    def start(self) -> EmbeddedPostgres:
        self._prepare_directories()
        initdb = self._run_server_tool(
            str(BIN_DIR / "initdb"),
            "-D",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            timeout=120,
        )
        if initdb.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {initdb.stderr}")
        settings = dict(
            SERVER_SETTINGS,
            port=str(self.port),
            log_directory=f"'{self.log_dir}'",
            unix_socket_directories=f"'{self.socket_dir}'",
        )
        conf = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as handle:
            handle.write("\n# collector-ext\n" + conf)
        started = self._run_server_tool(
            str(BIN_DIR / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "startup.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
            timeout=START_TIMEOUT_SECONDS + 10,
        )
        self._started = True
        if started.returncode != 0:
            startup = (
                (self.root / "startup.log").read_text(errors="replace") if (self.root / "startup.log").exists() else ""
            )
            self.stop()
            raise EmbeddedPostgresError(f"PostgreSQL did not start: {started.stderr}\n{startup}")
        self.superuser_sql(
            f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}';CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE};"
        )
        self.superuser_sql("CREATE EXTENSION pgaudit;", database=APP_DATABASE)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown, bounded), killing the postmaster if it does not stop."""
        if not self._started:
            return
        self._started = False
        pid_file = self.data_dir / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        try:
            stopped = self._run_server_tool(
                str(BIN_DIR / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(STOP_TIMEOUT_SECONDS),
                "stop",
                timeout=STOP_TIMEOUT_SECONDS + 10,
            )
            clean = stopped.returncode == 0
        except subprocess.TimeoutExpired:
            clean = False
        if not clean and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    # -- SQL through psql

    def _psql(
        self, sql: str, *, host: str, user: str, database: str, password: str | None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGAPPNAME"] = "collector-ext"
        if password is not None:
            env["PGPASSWORD"] = password
        return subprocess.run(
            [
                str(BIN_DIR / "psql"),
                "--no-psqlrc",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                host,
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                database,
                "-f",
                "-",
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=env,
            timeout=SQL_TIMEOUT_SECONDS,
            check=False,
        )

    def superuser_sql(self, sql: str, *, database: str = "postgres") -> str:
        done = self._psql(sql, host=str(self.socket_dir), user=SUPERUSER, database=database, password=None)
        if done.returncode != 0:
            raise EmbeddedPostgresError(f"psql as {SUPERUSER} failed: {done.stderr}")
        return done.stdout

    def app_sql(self, sql: str, *, password: str = APP_PASSWORD) -> subprocess.CompletedProcess[str]:
        """Run SQL as the test role over TCP with password authentication; the result is not checked."""
        return self._psql(sql, host="127.0.0.1", user=APP_ROLE, database=APP_DATABASE, password=password)

    # -- the log

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.json"))

    def log_lines(self) -> list[str]:
        return [line for path in self.log_files() for line in path.read_text(encoding="utf-8").splitlines() if line]

    def wait_for_log(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15) -> list[str]:
        """The jsonlog lines once `predicate(parsed lines)` holds (the logging collector writes
        asynchronously); fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            if predicate([json.loads(line) for line in lines]):
                return lines
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"expected lines not in the PostgreSQL log after {timeout}s; have:\n" + "\n".join(lines)
                )
            time.sleep(0.1)


def running_postgres() -> Iterator[EmbeddedPostgres]:
    """A started server, stopped and removed afterwards."""
    with EmbeddedPostgres() as server:
        yield server
