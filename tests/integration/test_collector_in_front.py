"""End to end through a real collector: an application on the OpenTelemetry SDK -> rotel-agent (OTLP in,
OTLP out over gRPC or HTTP) -> the sidecar -> SeaweedFS with Object Lock and the test Loki. Every record
arrives in both, `verify --loki-url` exits 0, and the metrics endpoint counts what was sent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rotel

from tests.integration.conftest import KeyPairFiles, S3Server, metric_values
from tests.loki_receiver import LokiReceiver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _send(protocol: str, endpoint: str, count: int) -> None:
    """The application: the SDK's own OTLP exporter (gRPC or HTTP) with batching and retries."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

        exporter = HttpExporter(endpoint=f"http://{endpoint}/v1/logs")
    provider = LoggerProvider(resource=Resource.create({"service.name": "ai-workflow"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_export_batch_size=256, max_queue_size=2 * count)
    )
    logger = provider.get_logger("audit")
    for i in range(count):
        logger.emit(body=f"inference {i}", attributes={"user.id": f"user-{i % 7}"}, event_name="inference")
    assert provider.force_flush(timeout_millis=60_000)
    provider.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_record_through_a_real_collector_arrives_verifies_and_is_counted(
    protocol: str,
    seaweedfs: S3Server,
    run_sidecar: Any,
    key_pair: KeyPairFiles,
    loki: LokiReceiver,
    tmp_path: Path,
) -> None:
    bucket = seaweedfs.create_bucket(f"via-collector-{protocol}")
    url = f"s3://{bucket}/prod"
    sent = 3000
    loki_settings = {"url": loki.url, "tenant": "team-a", "batch_max_wait_seconds": 0.05}
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url, loki=loki_settings) as sidecar:
        grpc_port, http_port = _free_port(), _free_port()
        sidecar_endpoint = (
            f"http://127.0.0.1:{sidecar.port}" if protocol == "grpc" else f"http://127.0.0.1:{sidecar.http_port}"
        )
        agent = subprocess.Popen(
            [
                os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"),
                "start",
                "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                "--exporter", "otlp",
                "--otlp-exporter-protocol", protocol,
                "--otlp-exporter-endpoint", sidecar_endpoint,
                "--pid-file", str(tmp_path / "rotel.pid"),
                "--log-file", str(tmp_path / "rotel.log"),
            ]
        )  # fmt: skip
        try:
            _wait_for_port(grpc_port if protocol == "grpc" else http_port)
            _send(protocol, f"127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}", sent)
            deadline = time.monotonic() + 60
            while sidecar.loki is not None and sidecar.loki.stats.entries_pushed < sent:
                assert time.monotonic() < deadline, "records did not all arrive"
                time.sleep(0.05)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        values = metric_values(sidecar.metrics_port)
        assert values[f'collector_ext_records_received_total{{transport="{protocol}"}}'] == sent
        assert values["collector_ext_records_sealed_total"] == sent + 1  # + the genesis entry
        assert values["collector_ext_records_archived_total"] == sent + 1
        assert values["collector_ext_loki_entries_pushed_total"] == sent
        assert values[f'collector_ext_export_requests_total{{outcome="ok",transport="{protocol}"}}'] >= 1
        assert values[f'collector_ext_export_requests_total{{outcome="invalid",transport="{protocol}"}}'] == 0
    assert len(loki.entries(tenant="team-a")) == sent

    verify = subprocess.run(
        [
            sys.executable, "-m", "collector_ext.cli", "verify", "--archive", url,
            "--endpoint-url", seaweedfs.endpoint_url, "--public-key", str(key_pair.public),
            "--loki-url", loki.url, "--loki-tenant", "team-a", "--since", "1h", "--json",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["verified"] is True
    assert report["totals"]["entries"] == sent + 1
    assert report["findings"] == []
