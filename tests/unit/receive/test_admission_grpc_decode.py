"""How the gRPC receiver recognises and decodes an Export message under the budget
(collector_ext.receive.otlp_grpc.message_coding / decode_message)."""

from __future__ import annotations

import gzip
import zlib

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.errors import InvalidRequestError, RequestTooLargeError
from collector_ext.receive.admission import (
    PROTOBUF_DECODE_FACTOR,
    AdmissionControl,
    AdmissionRefusedError,
    AdmissionSettings,
)
from collector_ext.receive.otlp_grpc import PAYLOAD_OVERHEAD_BYTES, decode_message, message_coding

MIB = 1024 * 1024


def _request(*bodies: str) -> bytes:
    records = [LogRecord(time_unix_nano=1, body=AnyValue(string_value=body)) for body in bodies]
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def _control(max_bytes: int = 64 * MIB) -> AdmissionControl:
    return AdmissionControl(AdmissionSettings(max_inflight_bytes=max_bytes, max_requests=4))


def test_recognises_gzip_and_zlib_headers_but_not_a_plain_request() -> None:
    plain = _request("a", "b")
    assert message_coding(plain) is None
    assert message_coding(gzip.compress(plain)) == "gzip"
    for level in (1, 6, 9):
        assert message_coding(zlib.compress(plain, level)) == "deflate"
    assert message_coding(b"") is None
    assert message_coding(b"\x78") is None


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, zlib.compress])
def test_decodes_plain_and_compressed_messages_the_same(compress: object) -> None:
    plain = _request("first", "second")
    control = _control()
    with control.admit() as reservation:
        payloads = decode_message(compress(plain), 1 * MIB, reservation, None)  # type: ignore[operator]
        assert len(payloads) == 2
        # Once decoded, the request holds only its payloads.
        assert reservation.held == sum(map(len, payloads)) + 2 * PAYLOAD_OVERHEAD_BYTES


def test_a_plain_message_that_looks_like_zlib_is_decoded_as_sent() -> None:
    # Field 1 as a varint (0x08, an unknown field to the parser) and a byte making the pair a
    # multiple of 31: a valid zlib header, though the message is not zlib.
    odd = b"\x08\x1d" + _request("x")
    assert message_coding(odd) == "deflate"
    with _control().admit() as reservation:
        assert len(decode_message(odd, 1 * MIB, reservation, None)) == 1
    with _control().admit() as reservation, pytest.raises(InvalidRequestError, match="not a valid"):
        decode_message(b"\x78\x9c" + b"\xff" * 20, 1 * MIB, reservation, None)  # neither zlib nor protobuf


def test_a_bomb_stops_at_max_message_bytes_and_the_budget_is_charged_first() -> None:
    bomb = gzip.compress(b"\0" * (20 * MIB))
    with _control().admit() as reservation, pytest.raises(RequestTooLargeError, match="max_message_bytes"):
        decode_message(bomb, 4 * MIB, reservation, None)
    small_budget = _control(max_bytes=8 * MIB)
    with small_budget.admit() as reservation, pytest.raises(RequestTooLargeError, match="max_inflight_bytes"):
        decode_message(bomb, 64 * MIB, reservation, None)


def test_decoding_waits_for_room_it_does_not_have() -> None:
    plain = _request("y" * 200_000)
    control = _control(max_bytes=4 * MIB)
    other = control.admit()
    other.charge(4 * MIB - len(plain) * PROTOBUF_DECODE_FACTOR + 1)
    with control.admit() as reservation, pytest.raises(AdmissionRefusedError, match="in use by other requests"):
        decode_message(plain, 1 * MIB, reservation, None)
    other.close()
