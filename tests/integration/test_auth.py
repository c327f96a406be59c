"""Authentication and the sealed sender, end to end: the OpenTelemetry SDK's OTLP exporters (gRPC and
HTTP) with a bearer token or a client certificate against a running sidecar; the sender read back
from the archive, the verifier still VERIFIED, refusals sealing nothing; token files and certificate
files replaced under the running sidecar; /metrics over TLS behind a token; the sender in Loki's
structured metadata and in the period report."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from collector_ext.seal.sender import Sender, decode_sender
from tests.integration.conftest import KeyPairFiles, archived_log_records, verify_archive_at

TOKEN_OLD = "old-" + "1" * 40
TOKEN_NEW = "new-" + "2" * 40
TOKEN_ROTATED = "rot-" + "3" * 40
SPIFFE_ID = "spiffe://example.org/ns/observability/sa/otel-collector"
Transport = str  # "grpc" | "http"


# --- a throwaway PKI --------------------------------------------------------------------------------


class Pki:
    """A CA issuing a server certificate for 127.0.0.1 and client certificates, written as PEM files."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = self._write("ca.crt", self.ca_pem)
        self.server = self.issue("server", "sidecar", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], server=True)

    def issue(self, file_name: str, common_name: str, sans: list[x509.GeneralName], *, server: bool = False) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        return Leaf(
            self._write(f"{file_name}.crt", cert_pem),
            self._write(f"{file_name}.key", key_pem),
            cert_pem,
            key_pem,
            certificate.public_bytes(serialization.Encoding.DER),
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        return path


class Leaf:
    def __init__(self, cert_file: Path, key_file: Path, cert_pem: bytes, key_pem: bytes, der: bytes) -> None:
        self.cert_file, self.key_file, self.cert_pem, self.key_pem, self.der = (
            cert_file,
            key_file,
            cert_pem,
            key_pem,
            der,
        )


def _token_file(directory: Path, name: str, token: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    temporary = directory / f".{name}.new"
    temporary.write_text(token + "\n")
    temporary.chmod(0o600)
    os.replace(temporary, path)  # as a Kubernetes secret update swaps files: never half-written
    return path


# --- the SDK exporters ------------------------------------------------------------------------------


class RecordingExporter(LogRecordExporter):
    """The SDK exporter under test, remembering each export's result."""

    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.results: list[LogRecordExportResult] = []

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _exporter(
    transport: Transport,
    port: int,
    *,
    token: str | None = None,
    ca: Pki | None = None,
    client: Leaf | None = None,
) -> LogRecordExporter:
    """The SDK's OTLP exporter as a collector-side user configures it: a header, and TLS files."""
    if transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        credentials = None
        if ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.ca_pem,
                private_key=client.key_pem if client else None,
                certificate_chain=client.cert_pem if client else None,
            )
        return GrpcExporter(
            endpoint=f"127.0.0.1:{port}",
            insecure=ca is None,
            credentials=credentials,
            headers={"authorization": f"Bearer {token}"} if token else None,
            timeout=5,
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

    return HttpExporter(
        endpoint=f"{'https' if ca else 'http'}://127.0.0.1:{port}/v1/logs",
        certificate_file=str(ca.ca_file) if ca else None,
        client_certificate_file=str(client.cert_file) if client else None,
        client_key_file=str(client.key_file) if client else None,
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=5,
    )


def _send(exporter: LogRecordExporter, bodies: Sequence[str]) -> list[LogRecordExportResult]:
    recording = RecordingExporter(exporter)
    provider = LoggerProvider(resource=Resource.create({"service.name": "ai-workflow"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(recording))
    logger = provider.get_logger("audit")
    for body in bodies:
        logger.emit(body=body, attributes={"user.id": "alice"}, event_name="gen_ai.chat")
    provider.shutdown()
    return recording.results


def _port(sidecar: Any, transport: Transport) -> int:
    return int(sidecar.port if transport == "grpc" else sidecar.http_port)


def _senders(archive: Path) -> dict[str, Sender]:
    """Body -> sealed sender of every archived log record."""
    found = {}
    for record in archived_log_records(archive):
        assert record.payload.HasField("sender"), "every record the sidecar seals names its sender"
        body = LogRecord.FromString(record.payload.log_record).body.string_value
        found[body] = decode_sender(record.payload.sender.SerializeToString())
    return found


def _sealed(sidecar: Any) -> int:
    return int(sidecar.pipeline.stats.records_sealed)


OK = LogRecordExportResult.SUCCESS
FAILED = LogRecordExportResult.FAILURE


# --- bearer tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_bearer_tokens_name_the_sender_and_refusals_seal_nothing(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles, transport: Transport
) -> None:
    tokens = tmp_path / "tokens"
    old_file = _token_file(tokens, "old", TOKEN_OLD)
    _token_file(tokens, "new", TOKEN_NEW)
    auth = {"tokens": [{"name": "collector-old", "file": old_file}, {"name": "collector-new", "file": tokens / "new"}]}
    archive = tmp_path / "archive"
    with run_sidecar(str(archive), auth=auth) as sidecar:
        port = _port(sidecar, transport)
        assert _send(_exporter(transport, port, token=TOKEN_NEW), ["with new 0", "with new 1"]) == [OK, OK]
        assert _send(_exporter(transport, port, token=TOKEN_OLD), ["with old"]) == [OK]
        sealed = _sealed(sidecar)
        assert _send(_exporter(transport, port, token=TOKEN_NEW[:-1] + "x"), ["wrong token"]) == [FAILED]
        assert _send(_exporter(transport, port), ["no token"]) == [FAILED]
        assert _sealed(sidecar) == sealed, "a refused request seals nothing"

        # Rotation without a restart: the file behind collector-old gets a new token.
        _token_file(tokens, "old", TOKEN_ROTATED)
        time.sleep(1.2)  # the store looks at changed files at most once a second
        assert _send(_exporter(transport, port, token=TOKEN_OLD), ["old token after rotation"]) == [FAILED]
        assert _send(_exporter(transport, port, token=TOKEN_ROTATED), ["rotated"]) == [OK]

    senders = _senders(archive)
    assert set(senders) == {"with new 0", "with new 1", "with old", "rotated"}
    assert {senders[b].token_name for b in ("with new 0", "with new 1")} == {"collector-new"}
    assert senders["with old"].token_name == senders["rotated"].token_name == "collector-old"
    for sender in senders.values():
        assert sender.peer.startswith("127.0.0.1:") and int(sender.peer.rsplit(":", 1)[1]) > 0
        assert sender.certificate_subject is None and sender.certificate_sha256 == b""
    report = verify_archive_at(str(archive), [key_pair.public_key], all_signatures=True)
    assert report.clean, report.findings
    assert report.records_checked == 1 + 4


# --- client certificates ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _exporter_trusts_its_certificate_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests (under the SDK's HTTP exporter) lets these variables override the exporter's
    # certificate_file; on a machine that sets them the exporter would distrust the test CA.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "collector-ext test CA")


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_client_certificates_on_the_allow_list_are_sealed_others_refused(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles, pki: Pki, transport: Transport
) -> None:
    collector = pki.issue("collector", "otel-collector", [x509.UniformResourceIdentifier(SPIFFE_ID)])
    intruder = pki.issue("intruder", "intruder", [x509.DNSName("intruder.example.org")])
    tls = {
        "cert_file": pki.server.cert_file,
        "key_file": pki.server.key_file,
        "client_ca_file": pki.ca_file,
        "allowed_clients": [f"URI:{SPIFFE_ID}"],
    }
    token_file = _token_file(tmp_path / "tokens", "t", TOKEN_NEW)
    archive = tmp_path / "archive"
    with run_sidecar(str(archive), tls=tls, auth={"tokens": [{"name": "prod", "file": token_file}]}) as sidecar:
        port = _port(sidecar, transport)
        assert _send(_exporter(transport, port, token=TOKEN_NEW, ca=pki, client=collector), ["allowed"]) == [OK]
        sealed = _sealed(sidecar)
        # A certificate from the same CA, not on the allow-list: 403 / PERMISSION_DENIED.
        assert _send(_exporter(transport, port, token=TOKEN_NEW, ca=pki, client=intruder), ["intruder"]) == [FAILED]
        # The right certificate without the token.
        assert _send(_exporter(transport, port, ca=pki, client=collector), ["certificate only"]) == [FAILED]
        assert _sealed(sidecar) == sealed
        if transport == "http":
            assert _https_status(port, pki, intruder, TOKEN_NEW) == 403
            assert _https_status(port, pki, collector, None) == 401

    senders = _senders(archive)
    assert list(senders) == ["allowed"]
    sender = senders["allowed"]
    assert sender.token_name == "prod"
    assert sender.certificate_subject == "CN=otel-collector,O=Example Corp"
    assert sender.certificate_sha256 == hashlib.sha256(collector.der).digest()
    assert sender.peer.startswith("127.0.0.1:")
    report = verify_archive_at(str(archive), [key_pair.public_key], all_signatures=True)
    assert report.clean, report.findings


def _client_context(ca: Pki, client: Leaf | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def _https_status(port: int, ca: Pki, client: Leaf | None, token: str | None, path: str = "/v1/logs") -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=_client_context(ca, client))
    headers = {"Content-Type": "application/x-protobuf"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        if path == "/v1/logs":
            connection.request("POST", path, body=b"", headers=headers)
        else:
            connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status == 401:
            assert response.getheader("WWW-Authenticate") == "Bearer"
        return response.status
    finally:
        connection.close()


def _plain_http_get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


# --- certificate rotation ---------------------------------------------------------------------------


def _grpc_handshake_ok(port: int, ca: Pki, client: Leaf) -> bool:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.ca_pem, private_key=client.key_pem, certificate_chain=client.cert_pem
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=3)
        except grpc.FutureTimeoutError:
            return False
        return True


def _served_certificate(port: int, ca: Pki, client: Leaf) -> bytes | None:
    try:
        with (
            ssl.create_connection(("127.0.0.1", port), timeout=5) as raw,
            _client_context(ca, client).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return None


def _install(target: Pki, source: Pki, client_ca: Pki) -> None:
    """Replace the sidecar's certificate, key and client CA files the way a secret update does."""
    for name, data in (
        ("server.key", source.server.key_pem),
        ("server.crt", source.server.cert_pem),
        ("ca.crt", client_ca.ca_pem),
    ):
        temporary = target.directory / f".{name}.new"
        temporary.write_bytes(data)
        temporary.chmod(0o600)
        os.replace(temporary, target.directory / name)


def test_certificates_rotate_under_a_running_sidecar(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    """Server certificate, key and client CA replaced on disk while serving: new handshakes on both
    receivers use the new files within seconds; a half-done rotation keeps the old ones."""
    first = Pki(tmp_path / "first", "first CA")
    second = Pki(tmp_path / "second", "second CA")
    live = Pki(tmp_path / "live", "placeholder")  # the files the sidecar reads
    _install(live, first, first)
    first_client = first.issue("client", "collector-first", [])
    second_client = second.issue("client", "collector-second", [])
    tls = {"cert_file": live.server.cert_file, "key_file": live.server.key_file, "client_ca_file": live.ca_file}
    archive = tmp_path / "archive"
    with run_sidecar(str(archive), tls=tls) as sidecar:
        assert _served_certificate(sidecar.http_port, first, first_client) == first.server.der
        assert _grpc_handshake_ok(sidecar.port, first, first_client)
        assert _send(_exporter("grpc", sidecar.port, ca=first, client=first_client), ["before"]) == [OK]

        # Half a rotation: a new certificate beside the old key. Not taken; the old pair keeps serving.
        temporary = live.directory / ".server.crt.new"
        temporary.write_bytes(second.server.cert_pem)
        os.replace(temporary, live.server.cert_file)
        time.sleep(1.2)
        assert _served_certificate(sidecar.http_port, first, first_client) == first.server.der
        assert _grpc_handshake_ok(sidecar.port, first, first_client)

        _install(live, second, second)
        deadline = time.monotonic() + 10
        while _served_certificate(sidecar.http_port, second, second_client) != second.server.der:
            assert time.monotonic() < deadline, "the new certificate was never served over HTTP"
            time.sleep(0.2)
        while not _grpc_handshake_ok(sidecar.port, second, second_client):
            assert time.monotonic() < deadline, "the new certificate was never served over gRPC"
            time.sleep(0.2)
        # The old CA's client and the old server certificate are gone from new handshakes.
        assert _served_certificate(sidecar.http_port, first, first_client) is None
        assert not _grpc_handshake_ok(sidecar.port, first, first_client)
        assert _send(_exporter("grpc", sidecar.port, ca=second, client=second_client), ["after grpc"]) == [OK]
        assert _send(_exporter("http", sidecar.http_port, ca=second, client=second_client), ["after http"]) == [OK]

    senders = _senders(archive)
    assert senders["before"].certificate_subject == "CN=collector-first,O=Example Corp"
    assert senders["after grpc"].certificate_subject == senders["after http"].certificate_subject
    assert senders["after http"].certificate_subject == "CN=collector-second,O=Example Corp"
    assert verify_archive_at(str(archive), [key_pair.public_key]).clean


# --- /metrics ---------------------------------------------------------------------------------------


def test_metrics_over_tls_behind_a_token_and_an_allow_list(
    run_sidecar: Callable[..., Any], tmp_path: Path, pki: Pki
) -> None:
    prometheus = pki.issue("prometheus", "prometheus", [x509.DNSName("prometheus.monitoring.svc")])
    other = pki.issue("other", "collector", [x509.DNSName("collector.example.org")])
    metrics_tls = {
        "cert_file": pki.server.cert_file,
        "key_file": pki.server.key_file,
        "client_ca_file": pki.ca_file,
        "allowed_clients": ["DNS:prometheus.monitoring.svc"],
    }
    scrape_token = _token_file(tmp_path / "tokens", "scrape", TOKEN_NEW)
    with run_sidecar(
        str(tmp_path / "archive"),
        metrics_tls=metrics_tls,
        auth={"metrics_tokens": [{"name": "prometheus", "file": scrape_token}]},
    ) as sidecar:
        port = sidecar.metrics_port
        assert _https_status(port, pki, prometheus, TOKEN_NEW, "/metrics") == 200
        assert _https_status(port, pki, prometheus, None, "/metrics") == 401
        assert _https_status(port, pki, prometheus, TOKEN_OLD, "/metrics") == 401
        assert _https_status(port, pki, other, TOKEN_NEW, "/metrics") == 403
        with pytest.raises((ssl.SSLError, OSError)):
            _https_status(port, pki, None, TOKEN_NEW, "/metrics")  # no client certificate: no handshake
        with pytest.raises((http.client.HTTPException, OSError)):
            _plain_http_get(port, "/metrics")
        # The OTLP receivers are not affected by the metrics settings.
        assert _send(_exporter("grpc", sidecar.port), ["plain otlp"]) == [OK]


# --- where people see the sender --------------------------------------------------------------------


def test_the_sender_reaches_loki_and_the_report(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles, loki: Any
) -> None:
    token_file = _token_file(tmp_path / "tokens", "t", TOKEN_NEW)
    archive = tmp_path / "archive"
    with run_sidecar(
        str(archive),
        auth={"tokens": [{"name": "collector-prod", "file": token_file}]},
        loki={"url": loki.url, "tenant": "team-a", "batch_max_wait_seconds": 0.05},
    ) as sidecar:
        bodies = [f"inference {i}" for i in range(5)]
        assert _send(_exporter("http", sidecar.http_port, token=TOKEN_NEW), bodies) == [OK] * 5
        deadline = time.monotonic() + 10
        while sidecar.loki is not None and sidecar.loki.stats.entries_pushed < 5:
            assert time.monotonic() < deadline, "Loki never received the records"
            time.sleep(0.05)

    senders = _senders(archive)
    expected = {body: senders[body].describe() for body in bodies}
    assert all(text.startswith("token:collector-prod from 127.0.0.1:") for text in expected.values())
    entries = loki.entries(tenant="team-a")
    assert {e.line: e.structured_metadata["audit_sender"] for e in entries} == expected

    # verify --loki-url compares the sender in Loki with the sealed one, like the seal fields.
    verify = [
        sys.executable, "-m", "collector_ext.cli", "verify", "--archive", str(archive),
        "--public-key", str(key_pair.public), "--loki-url", loki.url, "--loki-tenant", "team-a", "--since", "2h",
        "--json",
    ]  # fmt: skip
    clean = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    forged = entries[2]
    metadata = dict(forged.structured_metadata, audit_sender="token:someone-else from 10.9.9.9:1")
    assert loki.set_metadata(forged.stream, forged.ts, metadata, tenant="team-a") == 1
    altered = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert altered.returncode == 1, altered.stdout + altered.stderr
    [finding] = json.loads(altered.stdout)["findings"]
    assert finding["kind"] == "loki-altered" and "audit_sender" in finding["message"]
    assert finding["first_sequence"] == int(forged.structured_metadata["audit_seq"])

    out = tmp_path / "report.csv"
    command = [
        sys.executable, "-m", "collector_ext.cli", "report", "--archive", str(archive),
        "--public-key", str(key_pair.public), "--since", "2020-01-01", "--until", "2100-01-01T00:00:00Z",
        "--format", "csv", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = list(csv.DictReader(line for line in lines if not line.startswith(("#", '"#'))))
    assert {r["body"]: r["sender"] for r in rows} == expected
    assert {r["status"] for r in rows} == {"verified"}
