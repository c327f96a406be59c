"""No record content reaches the logs: a real `collector-ext serve` (at DEBUG, plaintext and TLS) is
sent a distinctive secret through every failure path of both receivers, and its whole log (stdout and
stderr) is searched for the secret as text, base64 (at every alignment) and hex.

Failure paths: bad protobuf, bad JSON, bad gzip and deflate, a body over max_message_bytes, a gzip
bomb, a Content-Length shorter than the body, an unsupported content type, refused values (out of
range, too many attributes, a key given twice), a client that leaves mid-body, a malformed request
line and header, plaintext to a TLS port and TLS garbage, and raw garbage on the gRPC port.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.seal.wire import encode_varint
from tests.integration.conftest import KeyPairFiles, serve_in_subprocess
from tests.integration.test_tls import Pki

SECRET = "Zq7-canary-4b1d9e-not-for-logs"
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MAX_MESSAGE_BYTES = 256 * 1024


def secret_forms() -> list[str]:
    raw = SECRET.encode()
    forms = {SECRET, raw.hex(), raw.hex().upper()}
    for shift in range(3):  # base64 of a buffer holding the secret, at each alignment
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        forms.add(encoded[4 : len(encoded) - 4])
        forms.add(base64.urlsafe_b64encode(b"\0" * shift + raw).decode()[4:-4])
    return sorted(forms)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path
    tls: Pki | None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _serve(base: Path, pki: Pki | None) -> Iterator[Served]:
    keys = KeyPairFiles(base / "keys")
    config: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "metrics_listen": None,
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "signing_key": str(keys.private),
        "signing_workers": "threads",
        "archive": {"url": str(base / "archive")},
        "limits": {"idle_timeout_seconds": 2, "body_timeout_seconds": 2},
        "log_level": "DEBUG",
    }
    if pki is not None:
        config["tls"] = {"cert_file": str(pki.server_cert_file), "key_file": str(pki.server_key_file)}
    with serve_in_subprocess(config, base) as serve:
        yield Served(serve.process, serve.grpc_port, serve.http_port, serve.log_path, pki)


@pytest.fixture(scope="module", params=["plaintext", "tls"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp(f"no-content-{request.param}")
    pki = Pki(base / "pki") if request.param == "tls" else None
    yield from _serve(base, pki)


# --- clients ------------------------------------------------------------------------------------------


def _client_context(served: Served) -> ssl.SSLContext | None:
    if served.tls is None:
        return None
    context = ssl.create_default_context(cafile=str(served.tls.ca_file))
    return context


def _connect(served: Served, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    context = _client_context(served)
    if context is not None:
        return context.wrap_socket(sock, server_hostname="localhost")
    return sock


def _raw_exchange(served: Served, data: bytes, *, port: int | None = None, tls: bool = True) -> None:
    """Send bytes, read whatever comes back until the server closes or 3 s pass."""
    port = port or served.http_port
    sock = _connect(served, port) if tls else socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.settimeout(3)
        sock.sendall(data)
        while sock.recv(65536):
            pass
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()


def _post(served: Served, body: bytes, headers: dict[str, str]) -> int:
    context = _client_context(served)
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection("localhost", served.http_port, timeout=30, context=context)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=30)
    )
    try:
        connection.request("POST", "/v1/logs", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _grpc(served: Served, message: bytes, compression: grpc.Compression | None = None) -> grpc.StatusCode:
    target = f"localhost:{served.grpc_port}"
    options = [("grpc.max_send_message_length", -1)]
    if served.tls is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=served.tls.ca_pem)
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        try:
            export(message, timeout=10, compression=compression)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


# --- bodies carrying the secret ---------------------------------------------------------------------


def _ld(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def _in_request(record: bytes) -> bytes:
    return _ld(1, _ld(2, _ld(2, record)))


SECRET_BYTES = SECRET.encode()
SECRET_TEXT = _ld(3, SECRET_BYTES)  # severity_text
BAD_PROTOBUF = _in_request(SECRET_TEXT) + b"\x0a\x7f" + SECRET_BYTES  # a length running past the end
OUT_OF_RANGE = _in_request(SECRET_TEXT + b"\x10" + encode_varint(2**40))
TWICE = _in_request(SECRET_TEXT + SECRET_TEXT)
INVALID_UTF8 = _in_request(_ld(3, SECRET_BYTES + b"\xff\xfe"))
TOO_MANY = ExportLogsServiceRequest(
    resource_logs=[
        ResourceLogs(
            scope_logs=[
                ScopeLogs(
                    log_records=[
                        LogRecord(
                            attributes=[
                                KeyValue(key=f"{SECRET}{i}", value=AnyValue(string_value=SECRET)) for i in range(1100)
                            ]
                        )
                    ]
                )
            ]
        )
    ]
).SerializeToString()
TOO_LARGE = _in_request(_ld(3, SECRET_BYTES * (MAX_MESSAGE_BYTES // len(SECRET_BYTES) + 10)))
BAD_JSON_BODIES = [
    ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityText": "' + SECRET + '"').encode(),  # cut off
    ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": "' + SECRET + '"}]}]}]}').encode(),
    ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"' + SECRET + '": 1, "' + SECRET + '": 2}]}]}]}').encode(),
    ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"intValue": "' + SECRET + '"}}]}]}]}').encode(),
    ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "' + SECRET + '"}]}]}]}').encode(),
    SECRET_BYTES + b"\xff{",
]


def _http_failures(served: Served) -> None:
    protobuf = {"Content-Type": "application/x-protobuf"}
    json_type = {"Content-Type": "application/json"}
    for body in (BAD_PROTOBUF, OUT_OF_RANGE, TWICE, INVALID_UTF8, TOO_MANY):
        assert _post(served, body, protobuf) == 400
    for body in BAD_JSON_BODIES:
        assert _post(served, body, json_type) == 400
    assert _post(served, SECRET_BYTES * 4, {**protobuf, "Content-Encoding": "gzip"}) == 400
    assert _post(served, SECRET_BYTES * 4, {**protobuf, "Content-Encoding": "deflate"}) == 400
    assert _post(served, gzip.compress(OUT_OF_RANGE)[:-8], {**protobuf, "Content-Encoding": "gzip"}) == 400
    assert _post(served, zlib.compress(TWICE), {**protobuf, "Content-Encoding": "deflate"}) == 400
    assert _post(served, TOO_LARGE, protobuf) == 413
    assert _post(served, gzip.compress(TOO_LARGE), {**protobuf, "Content-Encoding": "gzip"}) == 413
    assert _post(served, SECRET_BYTES, {"Content-Type": "text/" + SECRET}) == 415
    assert _post(served, SECRET_BYTES, {**protobuf, "Content-Encoding": "br-" + SECRET}) == 415
    # A Content-Length shorter than the body: the rest is read as a next request.
    head = b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 4\r\n\r\n"
    _raw_exchange(served, head + b"\x0a\x02\x12\x00" + SECRET_BYTES * 64 + b"\r\n\r\n")
    # A client that leaves mid-body.
    long_head = head.replace(b"Content-Length: 4", b"Content-Length: 100000")
    sock = _connect(served, served.http_port)
    sock.sendall(long_head + _in_request(SECRET_TEXT)[:60])
    sock.close()
    # A malformed request line, a malformed header, a path carrying the secret.
    _raw_exchange(served, b"P\x00ST /" + SECRET_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    _raw_exchange(served, b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n" + SECRET_BYTES + b"\x01: y\r\n\r\n")
    _raw_exchange(served, b"GET /" + SECRET_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    _raw_exchange(
        served, b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz" + SECRET_BYTES + b"\r\n"
    )
    if served.tls is not None:
        # Plaintext and TLS-shaped garbage at the TLS port.
        _raw_exchange(served, head + SECRET_BYTES, tls=False)
        _raw_exchange(served, b"\x16\x03\x01\x00\x40" + SECRET_BYTES * 4, tls=False)


def _grpc_failures(served: Served) -> None:
    for message in (BAD_PROTOBUF, OUT_OF_RANGE, TWICE, INVALID_UTF8, TOO_MANY):
        assert _grpc(served, message) is grpc.StatusCode.INVALID_ARGUMENT
    assert _grpc(served, gzip.compress(TWICE)) is grpc.StatusCode.INVALID_ARGUMENT
    assert _grpc(served, TOO_LARGE) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _grpc(served, TOO_LARGE, grpc.Compression.Gzip) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Raw garbage, and an HTTP/2 preface followed by garbage frames.
    _raw_exchange(served, SECRET_BYTES * 8, port=served.grpc_port)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    _raw_exchange(served, preface + b"\x00\x00\x40\x01\x04\x00\x00\x00\x01" + SECRET_BYTES * 4, port=served.grpc_port)
    if served.tls is not None:
        _raw_exchange(served, b"\x16\x03\x01\x00\x40" + SECRET_BYTES * 4, port=served.grpc_port, tls=False)
        _raw_exchange(served, preface + SECRET_BYTES, port=served.grpc_port, tls=False)


def test_no_secret_reaches_the_logs_through_any_failure_path(served: Served) -> None:
    _http_failures(served)
    _grpc_failures(served)
    # Valid traffic still works, and the log is not empty: the search below looks at real output.
    assert (
        _post(served, ExportLogsServiceRequest().SerializeToString(), {"Content-Type": "application/x-protobuf"}) == 200
    )
    assert _grpc(served, b"") is grpc.StatusCode.OK
    time.sleep(1.0)  # let the server log what it logs after a connection ends
    text = served.log_text()
    assert '"sidecar serving"' in text
    leaked = [form for form in secret_forms() if form in text]
    assert not leaked, [line for line in text.splitlines() if any(form in line for form in leaked)][:5]
    assert served.process.poll() is None
