"""The Sender message: its canonical encoding, its parse, and field 6 of LogPayload."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.sender import Sender, decode_sender, without_sender
from tests.archive_builder import build_archive, restart_mark, verify_objects

FULL = Sender(
    peer="[::1]:53422",
    token_name="collector-prod",
    certificate_subject="CN=collector,O=Example",
    certificate_sha256=bytes(range(32)),
)


def test_encoding_is_the_canonical_protobuf_of_the_schema() -> None:
    message = archive_pb2.Sender(
        peer=FULL.peer,
        token_name="collector-prod",
        certificate_subject="CN=collector,O=Example",
        certificate_sha256=bytes(range(32)),
    )
    assert FULL.encode() == message.SerializeToString(deterministic=True)
    assert decode_sender(FULL.encode()) == FULL


def test_encoding_to_the_byte() -> None:
    sender = Sender(peer="127.0.0.1:1", token_name="a")
    # 0x0a len "127.0.0.1:1", 0x12 len "a"; fields 3 and 4 omitted when empty.
    assert sender.encode() == b"\x0a\x0b127.0.0.1:1\x12\x01a"
    assert Sender(peer="").encode() == b""


def test_describe_names_the_parts_that_are_set() -> None:
    assert FULL.describe() == "token:collector-prod cert:CN=collector,O=Example from [::1]:53422"
    assert Sender(peer="127.0.0.1:9").describe() == "from 127.0.0.1:9"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"peer": "x" * 300}, "peer is at most"),
        ({"peer": "p", "token_name": ""}, "token name has"),
        ({"peer": "p", "certificate_sha256": b"short"}, "32 bytes"),
        ({"peer": "p", "certificate_subject": "CN=" + "x" * 5000}, "subject is at most"),
    ],
)
def test_out_of_bounds_fields_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sender(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x12\x02\xff\xfe", b"\x22\x03abc"])
def test_malformed_sender_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedObjectError):
        decode_sender(data)


def test_unknown_fields_are_skipped() -> None:
    assert decode_sender(b"\x0a\x01p\x28\x07\x3a\x00") == Sender(peer="p")


def _request() -> ExportLogsServiceRequest:
    records = [LogRecord(body=AnyValue(string_value=f"r{i}")) for i in range(3)]
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])])


def test_every_payload_of_a_request_ends_with_the_sender() -> None:
    plain = log_payloads(_request())
    sealed = log_payloads(_request(), FULL)
    encoded = FULL.encode()
    suffix = b"\x32" + bytes([len(encoded)]) + encoded
    assert sealed == [payload + suffix for payload in plain]
    parsed = archive_pb2.LogPayload.FromString(sealed[1])
    assert LogRecord.FromString(parsed.log_record).body.string_value == "r1"
    assert decode_sender(parsed.sender.SerializeToString()) == FULL


def test_a_payload_without_a_sender_is_unchanged() -> None:
    assert log_payloads(_request(), None) == log_payloads(_request())
    assert not archive_pb2.LogPayload.FromString(log_payloads(_request())[0]).HasField("sender")


def test_without_sender_removes_field_six_only() -> None:
    [plain] = log_payloads(_request())[:1]
    [with_sender] = log_payloads(_request(), FULL)[:1]
    assert with_sender != plain
    assert without_sender(with_sender) == plain
    assert without_sender(plain) == plain
    # A record whose bytes contain 0x32 is not mistaken for a sender field.
    tricky = log_payloads(
        ExportLogsServiceRequest(
            resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(severity_text="2" * 50)])])]
        ),
        Sender(peer="127.0.0.1:1"),
    )[0]
    assert without_sender(tricky) == tricky[: -len(Sender(peer="127.0.0.1:1").encode()) - 2]
    assert without_sender(b"\x08\x01") == b"\x08\x01"  # not LogPayload's shape: unchanged


def test_a_resend_on_another_connection_is_recognised(signer: Ed25519Signer) -> None:
    # Crash after seq 29; the collector resends 25-29 on a new connection (another client port).
    def payloads(sequence: int) -> bytes:
        original = {31 + i: 25 + i for i in range(5)}.get(sequence, sequence)
        record = LogRecord(body=AnyValue(string_value=f"record {original}"))
        request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])])
        return log_payloads(request, Sender(peer=f"127.0.0.1:{2000 if sequence > 30 else 1000}"))[0]

    archive = build_archive(signer, segments=6, special={30: restart_mark()}, payloads=payloads)
    report = verify_objects(archive.objects, [signer.public_key])
    assert [(f.kind.value, f.first_sequence, f.last_sequence) for f in report.findings] == [
        ("restart", 30, None),
        ("resent-records", 31, 35),
    ]
    assert report.clean
