"""A real collector in front: OpenTelemetry SDK -> rotel-agent (OTLP in, OTLP/gRPC out) -> sidecar."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import rotel

from tests.integration.conftest import KeyPairFiles, S3Server, verify_archive_at
from tests.integration.test_s3_archive import _send_with_otel_sdk


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


def test_records_through_rotel_are_all_sealed_and_verify(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("via-collector")
    url = f"s3://{bucket}/prod"
    sent = 3000
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        grpc_port, http_port = _free_port(), _free_port()
        agent = subprocess.Popen(
            [
                os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"),
                "start",
                "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                "--exporter", "otlp",
                "--otlp-exporter-endpoint", f"http://127.0.0.1:{sidecar.port}",
                "--pid-file", str(tmp_path / "rotel.pid"),
                "--log-file", str(tmp_path / "rotel.log"),
            ]
        )  # fmt: skip
        try:
            _wait_for_port(grpc_port)
            _send_with_otel_sdk(f"127.0.0.1:{grpc_port}", sent)
            deadline = time.monotonic() + 60
            while sidecar.pipeline.stats.records_archived < sent + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        assert sidecar.pipeline.stats.records_archived == sent + 1
    report = verify_archive_at(url, [key_pair.public_key], endpoint_url=seaweedfs.endpoint_url)
    assert report.findings == ()
    assert report.records_checked == sent + 1
