"""Never lose an acknowledged record: the sidecar as a real process (`collector-ext serve`) with a
spool, killed with SIGKILL under load from the OpenTelemetry SDK, with SeaweedFS stopped under it,
with Loki down and throttling, and with its local state deleted between runs. Every test checks the
archive afterwards with the real verifier."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from collector_ext.embedded_s3 import EmbeddedS3
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import EntryKind, decode_entry_header, entry_payload
from collector_ext.seal.layout import parse_segment_key
from collector_ext.seal.segment import decode_segment
from tests.integration.conftest import KeyPairFiles, S3Server, logs_request
from tests.loki_receiver import LokiReceiver

CLI = [sys.executable, "-m", "collector_ext.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """`collector-ext serve --config FILE` as a child process, on a fixed port across restarts."""

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.port = _free_port()
        self.config = directory / "sidecar.yaml"
        self.log = directory / "sidecar.log"
        settings = {"listen": f"127.0.0.1:{self.port}", "http_listen": None, "metrics_listen": None, **settings}
        self.config.write_text(yaml.safe_dump(json.loads(json.dumps(settings, default=str))))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                [*CLI, "serve", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"sidecar exited with {self.process.returncode}:\n{self.tail()}")
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        finally:
            channel.close()
        raise AssertionError(f"sidecar not SERVING within {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 90) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Any]:
    made: list[SidecarProcess] = []

    def make(settings: dict[str, Any]) -> SidecarProcess:
        sidecar = SidecarProcess(tmp_path, settings)
        made.append(sidecar)
        return sidecar

    yield make
    for sidecar in made:
        sidecar.stop_quietly()


def _settings(
    key_pair: KeyPairFiles,
    url: str,
    endpoint: str,
    spool: Path,
    *,
    spool_max_bytes: int = 1024 * 1024 * 1024,
    loki: LokiReceiver | None = None,
    **more: Any,
) -> dict[str, Any]:
    if loki is not None:
        more["loki"] = {"url": loki.url, "tenant": "team-a", "batch_max_wait_seconds": 0.05}
    return {
        "signing_key": str(key_pair.private),
        "archive": {"url": url, "endpoint_url": endpoint, "retention_days": 1},
        "spool": {"directory": str(spool), "max_bytes": spool_max_bytes},
        "writer_id": "durability-test",
        "checkpoint_min_spacing_seconds": 0.2,
        "checkpoint_interval_seconds": 2,
        "log_level": "WARNING",
        **more,
    }


def _archived_entries(s3: S3Server, bucket: str, prefix: str) -> list[tuple[str, int, int, bytes]]:
    """(chain hex, sequence, kind, payload) of every archived entry."""
    found = []
    for key in s3.keys(bucket, prefix + "/"):
        if parse_segment_key(key) is None:
            continue
        data = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for record in decode_segment(data).records:
            header = decode_entry_header(record.entry)
            found.append((header.chain_id.hex(), header.sequence, header.kind, entry_payload(record.entry)))
    return found


def _archived_bodies(entries: Sequence[tuple[str, int, int, bytes]]) -> list[str]:
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from collector_ext.pb.archive_pb2 import LogPayload

    bodies = []
    for _chain, _seq, kind, payload in entries:
        if kind == EntryKind.LOG_RECORD:
            record = LogRecord.FromString(LogPayload.FromString(payload).log_record)
            bodies.append(record.body.string_value)
    return bodies


def _verify(url: str, key_pair: KeyPairFiles, endpoint: str, *more: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [
            *CLI,
            "verify",
            "--archive",
            url,
            "--public-key",
            str(key_pair.public),
            "--endpoint-url",
            endpoint,
            "--json",
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {"stderr": result.stderr}


class RecordingExporter:
    """The application side: the SDK's OTLP/gRPC exporter (with its own retries) behind a loop that,
    like a collector's sending queue, resends a batch until the sidecar accepts it. Remembers every
    body the sidecar acknowledged."""

    def __init__(self, endpoint: str, stop: threading.Event) -> None:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        self._inner = OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=5)
        self._stop = stop
        self.acked: list[str] = []
        self.sent: set[str] = set()  # every body handed to the sidecar, acknowledged or not
        self.failed_attempts = 0

    def export(self, batch: Sequence[Any]) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        bodies = [str(item.log_record.body) for item in batch]
        self.sent.update(bodies)
        while not self._stop.is_set():
            try:
                result = self._inner.export(batch)
            except Exception:  # the exporter may raise on a dead connection; a collector retries
                result = LogRecordExportResult.FAILURE
            if result == LogRecordExportResult.SUCCESS:
                self.acked.extend(bodies)
                return result
            self.failed_attempts += 1
            time.sleep(0.05)
        return LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self._inner.shutdown()


def _sdk_load(port: int, stop: threading.Event, rate: float) -> tuple[RecordingExporter, threading.Thread, Any]:
    """An application logging ``rate`` records/s through the SDK until ``stop`` is set."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    exporter = RecordingExporter(f"127.0.0.1:{port}", stop)
    provider = LoggerProvider(resource=Resource.create({"service.name": "durability"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter,  # type: ignore[arg-type]
            max_export_batch_size=200,
            schedule_delay_millis=50,
            max_queue_size=1_000_000,
        )
    )
    logger = provider.get_logger("audit")

    def emit() -> None:
        sent = 0
        started = time.monotonic()
        while not stop.is_set():
            logger.emit(body=f"record-{sent}")
            sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=emit, name="sdk-load", daemon=True)
    thread.start()
    return exporter, thread, provider


def test_crash_loop_loses_no_acknowledged_record(
    seaweedfs: S3Server, key_pair: KeyPairFiles, sidecar_process: Any, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("crash-loop")
    url = f"s3://{bucket}/prod"
    sidecar = sidecar_process(_settings(key_pair, url, seaweedfs.endpoint_url, tmp_path / "spool"))
    stop = threading.Event()
    rng = random.Random(20261127)
    sidecar.start()
    sidecar.wait_serving()
    exporter, thread, provider = _sdk_load(sidecar.port, stop, rate=1500)
    kills = 0
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.3, 2.0))
            sidecar.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            sidecar.start()
            sidecar.wait_serving()
        time.sleep(1.0)
        stop.set()
        thread.join(timeout=10)
        provider.shutdown()
        assert sidecar.terminate() == 0, sidecar.tail()
    finally:
        stop.set()

    assert kills == 10
    acked = exporter.acked
    assert len(acked) > 2000, "the load never got going"
    entries = _archived_entries(seaweedfs, bucket, "prod")
    chains = {e[0] for e in entries}
    assert len(chains) == 1, "a spool that survives keeps one chain"
    sequences = sorted(e[1] for e in entries)
    assert sequences == list(range(len(sequences))), "no fork, no gap"
    bodies = _archived_bodies(entries)
    missing = set(acked) - set(bodies)
    assert not missing, f"{len(missing)} acknowledged records are not in the archive, e.g. {sorted(missing)[:5]}"
    assert set(bodies) <= exporter.sent, "the archive holds only what the application sent"
    # Documented resend policy: a copy is a separate sealed entry; copies only come from resends.
    duplicates = len(bodies) - len(set(bodies))
    marks = [archive_pb2.RestartPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.RESTART]
    assert len(marks) == 10
    assert not any(m.previous_run_clean for m in marks)
    code, report = _verify(url, key_pair, seaweedfs.endpoint_url, "--report-resends")
    assert code == 0, report
    kinds = [f["kind"] for f in report["findings"]]
    assert kinds.count("restart") == 10
    # Verify finds exactly the copies the resend policy allows: each is a whole record sealed twice.
    reported = sum(int(f["message"].split()[0]) for f in report["findings"] if f["kind"] == "resent-records")
    assert reported == duplicates, [f for f in report["findings"] if f["kind"] == "resent-records"]
    print(f"crash loop: {len(acked)} acked, {len(bodies)} archived, {duplicates} resent copies, 10 kills")


def _request_now(bodies: Sequence[str]) -> bytes:
    """An ExportLogsServiceRequest with one record per body, stamped now (Loki refuses old entries)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    now = time.time_ns()
    records = [LogRecord(time_unix_nano=now + i, body=AnyValue(string_value=b)) for i, b in enumerate(bodies)]
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="outage"))])
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def _export_raw(stub: Any, request: bytes) -> grpc.StatusCode:
    try:
        stub.Export(logs_service_pb2.ExportLogsServiceRequest.FromString(request), timeout=15)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]


def test_s3_outage_with_loki_down_and_throttling(
    key_pair: KeyPairFiles, sidecar_process: Any, tmp_path: Path, loki: LokiReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS stopped for 30 s under load while Loki refuses connections, then throttles (429):
    acks go on while the spool has room, then UNAVAILABLE; afterwards everything is archived and in
    Loki, and verify exits 0."""
    with EmbeddedS3(tmp_path / "s3") as s3:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
        monkeypatch.setenv("AWS_REGION", s3.region)
        bucket = str(s3.create_bucket("outage", mode="GOVERNANCE", days=1))
        url = f"s3://{bucket}/prod"
        settings = _settings(
            key_pair,
            url,
            s3.endpoint_url,
            tmp_path / "spool",
            spool_max_bytes=3 << 20,
            loki=loki,
            ack_timeout_seconds=2,
        )
        sidecar = sidecar_process(settings)
        sidecar.start()
        sidecar.wait_serving()
        channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.port}")
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        acked: list[str] = []
        statuses: list[tuple[float, grpc.StatusCode]] = []
        stop = threading.Event()
        outage_started = [0.0]

        def load() -> None:
            # A collector: one batch at a time, resent until accepted.
            batch = 0
            while not stop.is_set():
                bodies = [f"b{batch}-r{i}-" + "x" * 200 for i in range(100)]
                while not stop.is_set():
                    code = _export_raw(stub, _request_now(bodies))
                    statuses.append((time.monotonic(), code))
                    if code == grpc.StatusCode.OK:
                        acked.extend(bodies)
                        break
                    time.sleep(0.2)
                batch += 1
                time.sleep(0.01)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(2)
        loki.set_down("refuse")
        outage_started[0] = time.monotonic()
        s3.restart(down_for=30)
        loki.set_down("up")
        loki.force_rate_limit = True
        time.sleep(3)
        loki.force_rate_limit = False
        time.sleep(3)
        stop.set()
        thread.join(timeout=30)
        channel.close()
        assert sidecar.terminate() == 0, sidecar.tail()

        during = [code for at, code in statuses if outage_started[0] < at < outage_started[0] + 30]
        assert grpc.StatusCode.OK in during, "acks continue while the spool has room"
        assert grpc.StatusCode.UNAVAILABLE in during, "then the full spool refuses with UNAVAILABLE"
        first_refusal = next(i for i, c in enumerate(during) if c == grpc.StatusCode.UNAVAILABLE)
        assert grpc.StatusCode.OK in during[:first_refusal]

        # The spool kept what Loki has not had yet; start again (S3 and Loki healthy) to drain it.
        sidecar.start()
        sidecar.wait_serving()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pushed = {e.line for e in loki.entries("team-a")}
            if all(any(b in line for line in pushed) for b in acked[-5:]) and len(pushed) >= len(set(acked)):
                break
            time.sleep(0.5)
        assert sidecar.terminate() == 0, sidecar.tail()

        entries = _archived_entries(S3Server(s3), bucket, "prod")
        bodies = _archived_bodies(entries)
        assert not set(acked) - set(bodies), "every acknowledged record is archived"
        loki_lines = "\n".join(e.line for e in loki.entries("team-a"))
        not_in_loki = [b for b in set(acked) if b not in loki_lines]
        assert not not_in_loki, f"{len(not_in_loki)} acknowledged records never reached Loki"
        code, report = _verify(url, key_pair, s3.endpoint_url)
        assert code == 0, report


def test_lost_local_state_supersedes_and_verify_explains(
    seaweedfs: S3Server, key_pair: KeyPairFiles, sidecar_process: Any, tmp_path: Path
) -> None:
    """Graceful SIGTERM writes a final checkpoint and a clean restart mark follows; deleting the
    spool between runs makes the next run start a chain that names the one it supersedes."""
    bucket = seaweedfs.create_bucket("lost-state")
    url = f"s3://{bucket}/prod"
    spool = tmp_path / "spool"
    sidecar = sidecar_process(_settings(key_pair, url, seaweedfs.endpoint_url, spool))
    for run, then in enumerate(["restart", "delete", "done"]):
        sidecar.start()
        sidecar.wait_serving()
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)
            for batch in range(5):
                assert _export_raw(stub, logs_request(*[f"run{run}-{batch}-{i}" for i in range(50)])) == (
                    grpc.StatusCode.OK
                )
        assert sidecar.terminate() == 0, sidecar.tail()
        if then == "delete":
            shutil.rmtree(spool)

    entries = _archived_entries(seaweedfs, bucket, "prod")
    chains = sorted({e[0] for e in entries})
    assert len(chains) == 2
    marks = [archive_pb2.RestartPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.RESTART]
    assert [m.previous_run_clean for m in marks] == [True]
    geneses = {e[0]: archive_pb2.GenesisPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.GENESIS}
    (old,) = [c for c, g in geneses.items() if not g.supersedes_chain_id]
    (new,) = [c for c, g in geneses.items() if g.supersedes_chain_id]
    assert geneses[new].supersedes_chain_id.hex() == old
    assert geneses[new].superseded_last_sequence == max(e[1] for e in entries if e[0] == old)
    assert len(_archived_bodies(entries)) == 3 * 5 * 50
    code, report = _verify(url, key_pair, seaweedfs.endpoint_url)
    assert code == 0, report
    kinds = [f["kind"] for f in report["findings"]]
    assert "superseded-chain" in kinds
    assert "restart" in kinds
    # The graceful stops left nothing uncovered: a final checkpoint covers each chain to its end.
    assert all(f["severity"] not in ("warning",) for f in report["findings"]), report["findings"]


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so the spool really runs out of space (needs the right to mount)."""
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_spool_disk_full_refuses_cleanly_and_recovers(
    seaweedfs: S3Server,
    key_pair: KeyPairFiles,
    sidecar_process: Any,
    small_filesystem: Path,
    loki: LokiReceiver,
) -> None:
    """Loki down keeps the spool from shrinking until its 4 MiB filesystem is full: Export answers
    UNAVAILABLE and the log names the cause; nothing spooled is damaged. When Loki returns, the
    spool drains, space comes back, requests are accepted again, and every acknowledged record is in
    the archive and in Loki."""
    bucket = seaweedfs.create_bucket("disk-full")
    url = f"s3://{bucket}/prod"
    # spool.max_bytes larger than the filesystem: the disk fills first.
    spool = small_filesystem / "spool"
    settings = _settings(key_pair, url, seaweedfs.endpoint_url, spool, spool_max_bytes=64 << 20, loki=loki)
    sidecar = sidecar_process({**settings, "ack_timeout_seconds": 2})
    loki.set_down("refuse")
    sidecar.start()
    sidecar.wait_serving()
    acked: list[str] = []
    codes: list[grpc.StatusCode] = []
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        batch = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and codes.count(grpc.StatusCode.UNAVAILABLE) < 3:
            bodies = [f"full-{batch}-{i}-" + "y" * 300 for i in range(200)]
            code = _export_raw(stub, _request_now(bodies))
            codes.append(code)
            if code == grpc.StatusCode.OK:
                acked.extend(bodies)
            batch += 1
        assert codes.count(grpc.StatusCode.UNAVAILABLE) >= 3, "the full disk never refused a request"
        log_text = sidecar.log.read_text()
        assert "spool write failed; retrying (disk full)" in log_text
        assert "no space left" in log_text

        loki.set_down("up")
        recovered = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            bodies = [f"after-{batch}-{i}" for i in range(50)]
            if _export_raw(stub, _request_now(bodies)) == grpc.StatusCode.OK:
                acked.extend(bodies)
                recovered = True
                break
            batch += 1
            time.sleep(0.5)
        assert recovered, f"no request accepted after space returned:\n{sidecar.tail()}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len({e.line for e in loki.entries("team-a")}) < len(set(acked)):
        time.sleep(0.5)
    assert sidecar.terminate() == 0, sidecar.tail()

    bodies = _archived_bodies(_archived_entries(seaweedfs, bucket, "prod"))
    assert not set(acked) - set(bodies), "every acknowledged record is archived"
    in_loki = {e.line for e in loki.entries("team-a")}
    assert not {b for b in acked if b not in in_loki}, "every acknowledged record reached Loki"
    code, report = _verify(url, key_pair, seaweedfs.endpoint_url)
    assert code == 0, report
