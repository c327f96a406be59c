"""The metrics of issue 10's defences, read from a real Metrics registry's exposition: the receivers'
memory budget and its refusals, refused connections, authentication failures by receiver and reason
(never a token), and the server certificate's expiry; and that a client failing authentication again
and again costs the log a few lines a minute (logging_setup.RepeatLimiter)."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from collector_ext.errors import RequestTooLargeError
from collector_ext.logging_setup import JsonFormatter, RepeatLimiter
from collector_ext.metrics import AUTH_RECEIVERS, METRIC_NAMES, TLS_METRIC_NAMES, Metrics
from collector_ext.receive.admission import AdmissionControl, AdmissionRefusedError, AdmissionSettings
from collector_ext.receive.auth import (
    AUTH_FAILURE_REASONS,
    AuthenticationError,
    Authenticator,
    TokenFile,
    TokenStore,
)
from collector_ext.tls import ReloadingTls, TlsFiles

MIB = 1024 * 1024


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def test_memory_budget_in_use_capacity_and_refusals() -> None:
    metrics = Metrics()
    admission = AdmissionControl(AdmissionSettings(max_inflight_bytes=16 * MIB, max_requests=2))
    metrics.watch_admission(admission, None)
    first = admission.admit()
    first.charge(10 * MIB)
    second = admission.admit()
    with pytest.raises(AdmissionRefusedError):
        second.charge(7 * MIB)  # does not fit beside the first: retry later
    with pytest.raises(RequestTooLargeError):
        second.charge(17 * MIB)  # could never fit
    with pytest.raises(AdmissionRefusedError):
        admission.admit()  # the request count is used up
    samples = _samples(metrics)
    assert samples[("collector_ext_inflight_bytes", ())] == 10 * MIB
    assert samples[("collector_ext_inflight_max_bytes", ())] == 16 * MIB
    assert samples[("collector_ext_inflight_requests", ())] == 2
    assert samples[("collector_ext_inflight_max_requests", ())] == 2
    assert samples[("collector_ext_admission_refused_total", ())] == 3
    assert samples[("collector_ext_connections_refused_total", (("receiver", "http"),))] == 0
    first.close()
    second.close()
    samples = _samples(metrics)
    assert samples[("collector_ext_inflight_bytes", ())] == 0
    assert samples[("collector_ext_inflight_requests", ())] == 0


def test_refused_connections_are_read_from_the_http_receiver() -> None:
    metrics = Metrics()
    receiver = SimpleNamespace(connections_refused=0)
    metrics.watch_admission(AdmissionControl(AdmissionSettings(8 * MIB, 4)), receiver)  # type: ignore[arg-type]
    receiver.connections_refused = 41
    assert _samples(metrics)[("collector_ext_connections_refused_total", (("receiver", "http"),))] == 41


def _token_file(tmp_path: Path, name: str, token: str) -> TokenFile:
    path = tmp_path / name
    path.write_text(token, encoding="utf-8")
    path.chmod(0o600)
    return TokenFile(name, path)


def test_auth_failures_are_counted_by_receiver_and_reason_without_the_token(tmp_path: Path) -> None:
    metrics = Metrics()
    token = secrets.token_hex(32)
    shared = Authenticator(TokenStore([_token_file(tmp_path, "collector-prod", token)]))
    grpc_auth = shared.for_receiver("grpc", metrics.observe_auth_failure)
    http_auth = shared.for_receiver("http", metrics.observe_auth_failure)
    wrong = secrets.token_hex(32)
    for authorization, authenticator, reason in (
        (None, grpc_auth, "missing_token"),
        (f"Basic {wrong}", grpc_auth, "not_bearer"),
        (f"Bearer {wrong}", http_auth, "invalid_token"),
        (f"Bearer {wrong}", http_auth, "invalid_token"),
    ):
        with pytest.raises(AuthenticationError) as error:
            authenticator.authenticate(authorization=authorization, certificate=None, peer="127.0.0.1:5000")
        assert error.value.reason == reason
    sender = http_auth.authenticate(authorization=f"Bearer {token}", certificate=None, peer="127.0.0.1:5001")
    assert sender.token_name == "collector-prod"
    samples = _samples(metrics)
    failures = {
        (dict(labels)["receiver"], dict(labels)["reason"]): value
        for (name, labels), value in samples.items()
        if name == "collector_ext_auth_failures_total"
    }
    # Every receiver and reason is exported from the start (zeros), so alert series exist.
    assert set(failures) == {(r, why) for r in AUTH_RECEIVERS for why in AUTH_FAILURE_REASONS}
    assert failures[("grpc", "missing_token")] == 1
    assert failures[("grpc", "not_bearer")] == 1
    assert failures[("http", "invalid_token")] == 2
    assert sum(failures.values()) == 4
    exposition = metrics.exposition().decode()
    assert token not in exposition and wrong not in exposition


def _certificate(tmp_path: Path, not_after: dt.datetime) -> TlsFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector-ext")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return TlsFiles(cert_path, key_path)


def test_certificate_expiry_is_the_seconds_left_of_each_configured_setting(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=10, hours=3)
    tls = ReloadingTls(_certificate(tmp_path, not_after))
    metrics = Metrics()
    clock = {"now": now}
    metrics.watch_certificates({"tls": tls, "metrics_tls": None}, now=lambda: clock["now"])
    samples = _samples(metrics)
    expiry = {labels: value for (name, labels), value in samples.items() if name in TLS_METRIC_NAMES}
    assert expiry == {(("setting", "tls"),): (not_after - now).total_seconds()}
    assert expiry[(("setting", "tls"),)] < 14 * 86400, "inside the alert's 14 days"
    clock["now"] = not_after + dt.timedelta(seconds=5)
    assert _samples(metrics)[("collector_ext_certificate_expiry_seconds", (("setting", "tls"),))] == -5


def test_the_new_names_are_listed_for_the_deploy_checks() -> None:
    for name in (
        "collector_ext_inflight_bytes",
        "collector_ext_inflight_max_bytes",
        "collector_ext_admission_refused_total",
        "collector_ext_connections_refused_total",
        "collector_ext_auth_failures_total",
    ):
        assert name in METRIC_NAMES


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


def _refuse(authenticator: Authenticator, authorization: str | None, times: int) -> None:
    for attempt in range(times):
        with pytest.raises(AuthenticationError):
            authenticator.authenticate(
                authorization=authorization, certificate=None, peer=f"10.0.0.7:{40000 + attempt}"
            )


def test_a_client_failing_authentication_again_and_again_costs_a_few_log_lines(tmp_path: Path) -> None:
    """Every refusal is logged through the root handler's filters with one message template, so the
    repeat limiter lets 10 a minute through whatever the reason, port or receiver; the next line after
    the minute says how many were held back. No line holds the token presented."""
    clock = _Clock()
    handler = _Lines()
    handler.addFilter(RepeatLimiter(10, clock=clock))
    root = logging.getLogger()
    saved: dict[str, Any] = {"handlers": root.handlers[:], "level": root.level}
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        metrics = Metrics()
        shared = Authenticator(TokenStore([_token_file(tmp_path, "collector-prod", secrets.token_hex(32))]))
        http_auth = shared.for_receiver("http", metrics.observe_auth_failure)
        grpc_auth = shared.for_receiver("grpc", metrics.observe_auth_failure)
        presented = secrets.token_hex(32)
        _refuse(http_auth, f"Bearer {presented}", 600)
        _refuse(grpc_auth, None, 400)
        assert len(handler.lines) == 10
        assert all(presented not in line for line in handler.lines)
        first = handler.records[0]
        assert first.levelname == "WARNING"
        assert (first.receiver, first.reason, first.peer) == ("http", "invalid_token", "10.0.0.7:40000")  # type: ignore[attr-defined]
        # The counter still counts every one of them.
        samples = _samples(metrics)
        assert (
            samples[("collector_ext_auth_failures_total", (("reason", "invalid_token"), ("receiver", "http")))] == 600
        )
        assert (
            samples[("collector_ext_auth_failures_total", (("reason", "missing_token"), ("receiver", "grpc")))] == 400
        )
        clock.now = 61.0
        _refuse(grpc_auth, None, 1)
        assert len(handler.lines) == 11
        assert handler.records[-1].suppressed_similar == 990  # type: ignore[attr-defined]
    finally:
        root.handlers[:] = saved["handlers"]
        root.setLevel(saved["level"])
