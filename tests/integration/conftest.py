"""Fixtures that start real things on 127.0.0.1: the sidecar (in-process), SeaweedFS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from collector_ext.config import ArchiveConfig, SidecarConfig
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import EntryKind, decode_entry_header, entry_payload
from collector_ext.seal.keys import PublicKey, generate_key_pair, load_public_key_pem
from collector_ext.seal.segment import decode_segment
from collector_ext.service import Sidecar, open_archive, running_in_thread
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.run import VerifyOptions, check_archive


class KeyPairFiles:
    def __init__(self, directory: Path) -> None:
        pair = generate_key_pair()
        directory.mkdir(parents=True, exist_ok=True)
        self.private = directory / "signing.key"
        self.public = directory / "signing.pub"
        self.private.write_bytes(pair.private_pem)
        self.private.chmod(0o600)
        self.public.write_bytes(pair.public_pem)
        self.public_key: PublicKey = load_public_key_pem(pair.public_pem, "test")


@pytest.fixture
def key_pair(tmp_path: Path) -> KeyPairFiles:
    return KeyPairFiles(tmp_path / "keys")


def sidecar_config(key_pair: KeyPairFiles, archive_url: str, **settings: Any) -> SidecarConfig:
    archive_settings = {k[len("archive_") :]: settings.pop(k) for k in list(settings) if k.startswith("archive_")}
    settings.setdefault("metrics_listen", "127.0.0.1:0")
    settings.setdefault("http_listen", "127.0.0.1:0")
    return SidecarConfig(
        listen="127.0.0.1:0",
        signing_key=key_pair.private,
        archive=ArchiveConfig(url=archive_url, **archive_settings),
        **settings,
    )


@pytest.fixture
def run_sidecar(key_pair: KeyPairFiles) -> Callable[..., Any]:
    """run_sidecar(archive_url, **settings) -> context manager yielding a running Sidecar."""

    def start(archive_url: str, **settings: Any) -> Any:
        return running_in_thread(sidecar_config(key_pair, archive_url, **settings))

    return start


def verify_archive_at(
    archive_url: str, keys: list[PublicKey], *, endpoint_url: str | None = None, all_signatures: bool = False
) -> VerificationReport:
    async def run() -> VerificationReport:
        store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url)
        await store.open()
        try:
            return await check_archive(
                store, {k.key_id: k for k in keys}, VerifyOptions(check_all_signatures=all_signatures)
            )
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.fixture
def directory_sidecar(run_sidecar: Callable[..., Any], tmp_path: Path) -> Iterator[Sidecar]:
    with run_sidecar(str(tmp_path / "archive"), max_message_bytes=256 * 1024) as sidecar:
        yield sidecar


class S3Server:
    """A running SeaweedFS with credentials, plus a botocore client for test assertions."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.endpoint_url: str = server.endpoint_url
        self.client = server.client()

    def create_bucket(self, name: str, *, mode: str = "GOVERNANCE", days: int = 1) -> str:
        return str(self.server.create_bucket(name, mode=mode, days=days))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]

    def download(self, bucket: str, prefix: str, destination: Path) -> None:
        """What `aws s3 sync s3://bucket/prefix destination` produces."""
        for key in self.keys(bucket, prefix + "/"):
            target = destination / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[S3Server]:
    """One real SeaweedFS (S3 with Object Lock) on loopback for the whole test session."""
    import os

    from collector_ext.embedded_s3 import EmbeddedS3

    with EmbeddedS3() as server:
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
        # The sidecar and verifier take S3 credentials the AWS SDK way.
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
        os.environ["AWS_REGION"] = server.region
        try:
            yield S3Server(server)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def logs_request(*bodies: str) -> bytes:
    """An encoded ExportLogsServiceRequest with one record per body (times 1, 2, ...)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    records = [LogRecord(time_unix_nano=1 + i, body=AnyValue(string_value=b)) for i, b in enumerate(bodies)]
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def length_delimited(number: int, data: bytes) -> bytes:
    """One protobuf length-delimited field, for hand-made (and deliberately broken) messages."""
    from collector_ext.seal.wire import encode_varint

    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def wrap_record(record: bytes) -> bytes:
    """ExportLogsServiceRequest{resource_logs{scope_logs{log_records: record}}} from raw record bytes."""
    return length_delimited(1, length_delimited(2, length_delimited(2, record)))


def metric_values(port: int) -> dict[str, float]:
    """The samples of a sidecar's /metrics, keyed by name and labels as exposed."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture
def loki() -> Iterator[Any]:
    """The test Loki (tests/loki_receiver.py) on a free loopback port."""
    from tests.loki_receiver import LokiReceiver

    receiver = LokiReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@dataclass(frozen=True)
class ArchivedLogRecord:
    sequence: int
    entry: bytes
    signature: bytes
    payload: archive_pb2.LogPayload


def archived_log_records(archive: Path) -> list[ArchivedLogRecord]:
    """Every log record of a directory archive's segments, in sequence order (genesis and marks left out)."""
    found = []
    for path in archive.rglob("*.cxseg"):
        for record in decode_segment(path.read_bytes()).records:
            header = decode_entry_header(record.entry)
            if header.kind == EntryKind.LOG_RECORD:
                payload = archive_pb2.LogPayload.FromString(entry_payload(record.entry))
                found.append(ArchivedLogRecord(header.sequence, record.entry, record.signature, payload))
    return sorted(found, key=lambda r: r.sequence)


def any_value_to_python(value: AnyValue) -> Any:
    """An OTLP AnyValue as Python: maps as dicts, arrays as lists, scalars as they are, empty as None."""
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    return None if kind is None else getattr(value, kind)


@dataclass
class ServeProcess:
    """`collector-ext serve` in a child process, and the ports its "sidecar serving" line gave."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path


@contextlib.contextmanager
def serve_in_subprocess(
    config: dict[str, Any], base: Path, preexec_fn: Callable[[], None] | None = None
) -> Iterator[ServeProcess]:
    """Start `serve` on ``config`` (written to base/config.yaml, log in base/sidecar.log) and stop it
    on exit; fails the test if it does not come up within 60 s."""
    config_path = base / "config.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = base / "sidecar.log"
    command = [sys.executable, "-m", "collector_ext.cli", "serve", "--config", str(config_path)]
    # The package next to these tests, whatever the environment has installed.
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=log_file, env=environment, preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + 60
        ports: dict[str, int] = {}
        while not ports and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if '"sidecar serving"' in line:
                    served = json.loads(line)
                    ports = {"grpc": served["port"], "http": served["http_port"]}
            time.sleep(0.1)
        assert ports, "the sidecar did not start: " + log_path.read_text()
        yield ServeProcess(process, ports["grpc"], ports["http"], log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
