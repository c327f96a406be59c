"""Loki gets every archived record after an S3 outage, however the spool's listing races its writer.

The sidecar runs as a real process (`collector-ext serve`) with a spool and small segments, under
steady OTLP load. SeaweedFS stops for about 20 s; over the same time Loki answers 503 and then 429.
Loki comes back while S3 is still down: the Loki process then reads a spool of thousands of files
(nothing is trimmed while the archive lags) while the sidecar keeps renaming new ones into it, which
is when a directory listing can show segment N+1 without N. Afterwards the test Loki holds every
archived log record exactly once and `collector-ext verify --loki-url` exits 0.

The race itself is not forced here (tests/unit/deliver/test_loki_follower.py replays it
deterministically); this test shows the whole outage ends with nothing missing from Loki.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from collector_ext.deliver.loki.client import LokiConnection
from collector_ext.deliver.loki.mapping import MappingSettings
from collector_ext.deliver.loki.process import LokiProcess
from collector_ext.deliver.loki.sender import LokiSettings
from collector_ext.embedded_s3 import EmbeddedS3
from collector_ext.pb import archive_pb2
from collector_ext.retry import RetryPolicy
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind
from tests.integration.conftest import KeyPairFiles, metric_values
from tests.integration.test_durability import (
    SidecarProcess,
    _export_raw,
    _free_port,
    _request_now,
    _settings,
    _verify,
)
from tests.loki_receiver import LokiReceiver

TENANT = "team-a"
S3_DOWN_SECONDS = 14
RECORDS_PER_REQUEST = 10  # one request, one segment file
REQUESTS_PER_SECOND = 100


@pytest.mark.slow
def test_loki_gets_every_archived_record_after_an_s3_outage(
    key_pair: KeyPairFiles, tmp_path: Path, loki: LokiReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EmbeddedS3(tmp_path / "s3") as s3:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
        monkeypatch.setenv("AWS_REGION", s3.region)
        bucket = str(s3.create_bucket("loki-outage", mode="GOVERNANCE", days=1))
        url = f"s3://{bucket}/prod"
        metrics_port = _free_port()
        settings = _settings(
            key_pair,
            url,
            s3.endpoint_url,
            tmp_path / "spool",
            spool_max_bytes=512 << 20,
            loki=loki,
            # A segment per request: the outage leaves a few thousand files in the spool.
            segment={"max_records": RECORDS_PER_REQUEST, "upload_concurrency": 8},
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
        sidecar = SidecarProcess(tmp_path, settings)
        try:
            sidecar.start()
            sidecar.wait_serving()
            acked, refused, spooled_files = _outage_under_load(sidecar, s3, loki, tmp_path / "spool")
            assert not refused, f"{refused} requests refused: the spool is large enough for the outage"
            assert spooled_files > 1000, f"the spool held only {spooled_files} files when S3 came back"

            # Loki and the archive catch up; the sidecar then reports nothing waiting for Loki.
            deadline = time.monotonic() + 30
            samples = metric_values(metrics_port)
            while time.monotonic() < deadline:
                in_loki = len(loki.entries(TENANT)) if TENANT in loki.tenants() else 0
                if (
                    in_loki >= len(acked)
                    and samples["collector_ext_pending_records"] == 0
                    and samples["collector_ext_loki_oldest_undelivered_seconds"] == 0
                ):
                    break
                time.sleep(0.5)
                samples = metric_values(metrics_port)
            assert samples["collector_ext_loki_oldest_undelivered_seconds"] == 0, samples
            assert samples["collector_ext_loki_spool_records_missing_total"] == 0
            assert samples["collector_ext_loki_push_retries_total"] >= 4, "Loki failed as the test asked"
            assert sidecar.terminate() == 0, sidecar.tail()
        finally:
            sidecar.stop_quietly()

        # verify --loki-url: every archived record is in Loki, unaltered, and Loki holds nothing else.
        stored = loki.entries(TENANT)
        copies = collections.Counter(int(e.structured_metadata["audit_seq"]) for e in stored)
        assert max(copies.values()) == 1, f"held twice: {sorted(s for s, n in copies.items() if n > 1)[:5]}"
        assert set(acked) <= {e.line for e in stored}, "every acknowledged record reached Loki"
        code, report = _verify(url, key_pair, s3.endpoint_url, "--loki-url", loki.url, "--loki-tenant", TENANT)
        assert code == 0, report


def _outage_under_load(
    sidecar: SidecarProcess, s3: EmbeddedS3, loki: LokiReceiver, spool: Path
) -> tuple[list[str], int, int]:
    """Steady load throughout; S3 down for S3_DOWN_SECONDS while Loki answers 503 twice and 429 twice
    (the sender's backoff makes that about 7 s of failing pushes, so Loki is back well before S3).
    Returns the acknowledged bodies, the number of refused requests and the number of files in the
    spool when S3 came back."""
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.port}")
    stub = logs_service_pb2_grpc.LogsServiceStub(channel)
    acked: list[str] = []
    refused = [0]
    stop = threading.Event()

    def load() -> None:
        # A collector: one batch at a time, resent until accepted.
        batch = 0
        started = time.monotonic()
        while not stop.is_set():
            bodies = [f"o{batch}-{i}" for i in range(RECORDS_PER_REQUEST)]
            while not stop.is_set():
                if _export_raw(stub, _request_now(bodies)) == grpc.StatusCode.OK:
                    acked.extend(bodies)
                    break
                refused[0] += 1
                time.sleep(0.1)
            batch += 1
            ahead = batch / REQUESTS_PER_SECOND - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=load, name="otlp-load", daemon=True)
    thread.start()
    try:
        time.sleep(2)
        loki.fail_next(503, count=2)
        loki.fail_next(429, count=2)
        s3.restart(down_for=S3_DOWN_SECONDS)
        spooled_files = len(list((spool / "segments").glob("*.cxseg")))
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=30)
        channel.close()
    return acked, refused[0], spooled_files


def test_the_loki_process_logs_json_like_the_sidecar(capfd: pytest.CaptureFixture[str]) -> None:
    """The retry warning of the Loki process is one JSON object with its fields (attempt, error),
    not Python's plain `WARNING:logger:message` line without them."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    record = LogRecord(time_unix_nano=time.time_ns(), body=AnyValue(string_value="while Loki is down"))
    payload = archive_pb2.LogPayload(log_record=record.SerializeToString()).SerializeToString()
    entries = chain_entries(ChainHead.new(bytes(16)), EntryKind.LOG_RECORD, [payload], b"k" * 8, time.time_ns())
    nothing_listens = f"http://127.0.0.1:{_free_port()}"
    process = LokiProcess(
        LokiConnection(url=nothing_listens),
        MappingSettings(),
        LokiSettings(batch_max_wait=0.0, retry=RetryPolicy(initial_delay=0.05, max_delay=0.1)),
    )

    async def run() -> None:
        await process.start()
        process.offer(entries.entries, [bytes(64)])
        deadline = time.monotonic() + 30
        while process.stats.push_retries < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await process.close(drain_timeout=0)

    asyncio.run(run())
    stderr = capfd.readouterr().err
    assert "WARNING:collector_ext" not in stderr
    retries = [
        document
        for document in (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
        if document["message"] == "Loki push failed; retrying"
    ]
    assert retries, stderr
    assert retries[0]["logger"] == "collector_ext.deliver.loki.sender"
    assert retries[0]["level"] == "WARNING"
    assert retries[0]["attempt"] == 1 and "Connect" in retries[0]["error"], retries[0]
