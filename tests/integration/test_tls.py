"""TLS with client certificates on both receivers (gRPC and OTLP/HTTP), with a throwaway CA."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.logging_setup import JsonFormatter
from collector_ext.receive.otlp_grpc import EXPORT_METHOD
from collector_ext.service import Sidecar
from tests.integration.conftest import KeyPairFiles, verify_archive_at

REQUEST = ExportLogsServiceRequest(
    resource_logs=[
        ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(body=AnyValue(string_value="over tls"))] * 2)])
    ]
).SerializeToString()


class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector-ext test CA")])
        ca_cert = (
            self._builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = self._write("ca.crt", self.ca_pem)
        self.server_key_pem, server_cert = self._leaf(
            ca_key,
            ca_cert,
            "sidecar",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        )
        self.server_cert_pem = server_cert
        self.server_key_file = self._write("server.key", self.server_key_pem)
        self.server_cert_file = self._write("server.crt", server_cert)
        self.client_key_pem, self.client_cert_pem = self._leaf(
            ca_key, ca_cert, "collector", ExtendedKeyUsageOID.CLIENT_AUTH, None
        )
        self.client_key_file = self._write("client.key", self.client_key_pem)
        self.client_cert_file = self._write("client.crt", self.client_cert_pem)

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def _leaf(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        name: str,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName] | None,
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "tls")


@pytest.fixture
def tls_sidecar(
    run_sidecar: Callable[..., Any], pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Sidecar]:
    caplog.set_level(logging.DEBUG)
    tls = {"cert_file": pki.server_cert_file, "key_file": pki.server_key_file, "client_ca_file": pki.ca_file}
    with run_sidecar(str(tmp_path / "archive"), tls=tls) as sidecar:
        yield sidecar


def _grpc_export(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError | None:
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        try:
            export(REQUEST, timeout=5)
        except grpc.RpcError as exc:
            return exc
    return None


def _https_post(port: int, context: ssl.SSLContext | None) -> int:
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        connection.request("POST", "/v1/logs", body=REQUEST, headers={"Content-Type": "application/x-protobuf"})
        return connection.getresponse().status
    finally:
        connection.close()


def _client_context(pki: Pki, *, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if with_client_cert:
        context.load_cert_chain(pki.client_cert_file, pki.client_key_file)
    return context


def _key_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def test_grpc_requires_a_client_certificate(tls_sidecar: Sidecar, pki: Pki) -> None:
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem, private_key=pki.client_key_pem, certificate_chain=pki.client_cert_pem
    )
    assert _grpc_export(tls_sidecar.port, with_cert) is None
    assert tls_sidecar.pipeline.stats.records_archived == 1 + 2

    error = _grpc_export(tls_sidecar.port, grpc.ssl_channel_credentials(root_certificates=pki.ca_pem))
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    error = _grpc_export(tls_sidecar.port, None)  # plaintext
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    other_ca = Pki(pki.directory / "other")  # a server certificate the client does not trust
    error = _grpc_export(
        tls_sidecar.port,
        grpc.ssl_channel_credentials(
            root_certificates=other_ca.ca_pem, private_key=pki.client_key_pem, certificate_chain=pki.client_cert_pem
        ),
    )
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    assert tls_sidecar.pipeline.stats.records_sealed == 1 + 2


def test_http_requires_a_client_certificate(tls_sidecar: Sidecar, pki: Pki) -> None:
    assert _https_post(tls_sidecar.http_port, _client_context(pki, with_client_cert=True)) == 200
    assert tls_sidecar.pipeline.stats.records_archived == 1 + 2

    with pytest.raises((OSError, http.client.HTTPException)):  # the server refuses the handshake
        _https_post(tls_sidecar.http_port, _client_context(pki, with_client_cert=False))
    with pytest.raises((OSError, http.client.HTTPException)):  # plaintext HTTP to a TLS port
        _https_post(tls_sidecar.http_port, None)
    other = _client_context(Pki(pki.directory / "other"), with_client_cert=False)
    other.load_cert_chain(pki.client_cert_file, pki.client_key_file)
    with pytest.raises(ssl.SSLCertVerificationError):  # the client does not trust the server
        _https_post(tls_sidecar.http_port, other)
    assert tls_sidecar.pipeline.stats.records_sealed == 1 + 2


def test_records_over_tls_verify_and_keys_stay_out_of_the_logs(
    run_sidecar: Callable[..., Any],
    pki: Pki,
    tmp_path: Path,
    key_pair: KeyPairFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tls = {"cert_file": pki.server_cert_file, "key_file": pki.server_key_file, "client_ca_file": pki.ca_file}
    with run_sidecar(str(tmp_path / "archive"), tls=tls) as sidecar:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca_pem, private_key=pki.client_key_pem, certificate_chain=pki.client_cert_pem
        )
        assert _grpc_export(sidecar.port, credentials) is None
        assert _https_post(sidecar.http_port, _client_context(pki, with_client_cert=True)) == 200
        _grpc_export(sidecar.port, None)
        with pytest.raises((OSError, http.client.HTTPException)):
            _https_post(sidecar.http_port, _client_context(pki, with_client_cert=False))
        http_port = sidecar.http_port
    report = verify_archive_at(str(tmp_path / "archive"), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == 1 + 4

    serving = [r for r in caplog.records if r.getMessage() == "sidecar serving"]
    assert serving and serving[0].__dict__["http_port"] == http_port  # the capture did see the sidecar
    formatter = JsonFormatter()
    logged = caplog.text + "\n".join(formatter.format(record) for record in caplog.records)
    for secret in (pki.server_key_pem, pki.client_key_pem, key_pair.private.read_bytes()):
        for line in _key_lines(secret):
            assert line not in logged
