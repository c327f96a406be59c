"""The defence metrics of a running sidecar (service.py's wiring): authentication failures counted per
receiver and reason on both OTLP receivers, over TLS, with no token in the exposition; the served
certificate's expiry; the memory budget's size. The values themselves are unit-tested in
tests/unit/test_metrics_limits_auth.py."""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from tests.integration.conftest import logs_request, metric_values
from tests.integration.test_auth import Pki

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
TOKEN = "right-" + "7" * 40
WRONG = "wrong-" + "8" * 40
BUDGET = 64 * 1024 * 1024


def _grpc_export(port: int, pki: Pki, authorization: str | None) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        export = channel.unary_unary(EXPORT)
        metadata = (("authorization", authorization),) if authorization else None
        try:
            export(logs_request("counted"), metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.OK


def _https_export(port: int, pki: Pki, authorization: str | None) -> int:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Content-Type": "application/x-protobuf"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        connection.request("POST", "/v1/logs", body=logs_request("counted"), headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_running_sidecar_counts_refusals_per_receiver_and_reports_its_certificate(
    run_sidecar: Callable[..., Any], tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki", "defence metrics CA")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    token_file.chmod(0o600)
    tls = {"cert_file": pki.server.cert_file, "key_file": pki.server.key_file}
    with run_sidecar(
        str(tmp_path / "archive"),
        tls=tls,
        auth={"tokens": [{"name": "collector", "file": token_file}]},
        limits={"max_inflight_bytes": BUDGET},
    ) as sidecar:
        assert _grpc_export(sidecar.port, pki, f"Bearer {WRONG}") == grpc.StatusCode.UNAUTHENTICATED
        assert _grpc_export(sidecar.port, pki, f"Bearer {WRONG}") == grpc.StatusCode.UNAUTHENTICATED
        assert _grpc_export(sidecar.port, pki, f"Bearer {TOKEN}") == grpc.StatusCode.OK
        assert _https_export(sidecar.http_port, pki, None) == 401
        assert _https_export(sidecar.http_port, pki, f"Bearer {TOKEN}") == 200
        values = metric_values(sidecar.metrics_port)
    failures = {name: value for name, value in values.items() if name.startswith("collector_ext_auth_failures_total")}
    assert failures['collector_ext_auth_failures_total{reason="invalid_token",receiver="grpc"}'] == 2
    assert failures['collector_ext_auth_failures_total{reason="missing_token",receiver="http"}'] == 1
    assert sum(failures.values()) == 3
    assert not any(TOKEN in name or WRONG in name for name in values)
    certificate = x509.load_pem_x509_certificate(pki.server.cert_file.read_bytes())
    left = (certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert abs(values['collector_ext_certificate_expiry_seconds{setting="tls"}'] - left) < 60
    assert not any(name.startswith('collector_ext_certificate_expiry_seconds{setting="metrics_tls"') for name in values)
    assert values["collector_ext_inflight_max_bytes"] == BUDGET
    assert values["collector_ext_inflight_bytes"] == 0
    assert values["collector_ext_admission_refused_total"] == 0
