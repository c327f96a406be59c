"""parse_protobuf_request: what the protobuf decoder would keep changed is refused, naming the field
and its position; every other wire form (field order, non-minimal varints, unknown fields, negative
enums) is accepted and decodes to exactly what was sent."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.errors import InvalidRequestError
from collector_ext.receive.otlp_protobuf import first_changed_value, parse_protobuf_request
from collector_ext.seal.wire import encode_varint

RECORD = "resource_logs[0].scope_logs[0].log_records[0]"


def varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value & ((1 << 64) - 1))


def ld(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def in_request(record: bytes) -> bytes:
    """A request holding one resource, one scope and the given record bytes."""
    return ld(1, ld(2, ld(2, record)))


def refused(body: bytes) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        parse_protobuf_request(body)
    return str(caught.value)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (varint_field(2, 1 << 40), "severity_number"),  # would be sealed as 0
        (varint_field(2, 1 << 31), "severity_number"),  # would be sealed as -2^31
        (varint_field(2, -(1 << 31) - 1), "severity_number"),  # would be sealed as 2^31 - 1
        (varint_field(2, (1 << 32) - 1), "severity_number"),  # a uint32 form: would be -1
        (varint_field(7, 1 << 32), "dropped_attributes_count"),  # would be sealed as 0
        (ld(6, varint_field(3, 1 << 33)), "attributes[0].key_strindex"),
        (ld(5, varint_field(8, 1 << 35)), "body.string_value_strindex"),
    ],
)
def test_a_32_bit_field_out_of_its_range_is_refused(record: bytes, field: str) -> None:
    text = refused(in_request(record))
    assert f"{RECORD}.{field} is outside the 32-bit range" in text
    assert "nothing was sealed" in text


def test_resource_and_scope_counts_out_of_range_are_refused() -> None:
    body = ld(1, ld(1, varint_field(2, 1 << 32)) + ld(2, ld(1, varint_field(4, 1 << 32))))
    assert "resource_logs[0].resource.dropped_attributes_count" in refused(body)


def test_a_varint_with_bits_beyond_the_64th_is_refused() -> None:
    record = ld(5, b"\x18" + b"\xff" * 9 + b"\x7f")  # int_value: ten bytes, the last holding 7 bits
    assert f"{RECORD}.body.int_value is a varint with more than 64 bits" in refused(in_request(record))


def test_a_field_sent_twice_is_refused() -> None:
    text = refused(in_request(ld(3, b"first") + ld(3, b"second")))
    assert f"{RECORD}.severity_text appears more than once" in text
    assert "first" not in text and "second" not in text


def test_a_message_field_sent_twice_is_refused() -> None:
    text = refused(in_request(ld(5, ld(1, b"a")) + ld(5, ld(1, b"b"))))
    assert f"{RECORD}.body appears more than once" in text


def test_two_members_of_a_oneof_are_refused() -> None:
    text = refused(in_request(ld(5, ld(1, b"text") + varint_field(3, 5))))
    assert f"{RECORD}.body sets both string_value and int_value" in text


@pytest.mark.parametrize(
    ("record", "check"),
    [
        # Fields in declaration order (observed time, field 11, before severity, field 2).
        (b"\x59" + (7).to_bytes(8, "little") + varint_field(2, 9), lambda r: r.severity_number == 9),
        # A non-minimal varint: 9 written in three bytes.
        (b"\x10\x89\x80\x00", lambda r: r.severity_number == 9),
        # A negative enum, sign-extended to ten bytes as encoders write it.
        (varint_field(2, -1), lambda r: r.severity_number == -1),
        # The largest uint32 count.
        (varint_field(7, (1 << 32) - 1), lambda r: r.dropped_attributes_count == (1 << 32) - 1),
        # An unknown field between known ones: kept as sent.
        (varint_field(3000, 1 << 60) + varint_field(2, 9), lambda r: r.severity_number == 9),
        # A known field with another wire type is kept as an unknown field, byte for byte.
        (ld(2, b"xx"), lambda r: r.severity_number == 0 and b"\x12\x02xx" in r.SerializeToString()),
        # Repeated fields may repeat.
        (ld(6, ld(1, b"a")) + ld(6, ld(1, b"b")), lambda r: [kv.key for kv in r.attributes] == ["a", "b"]),
    ],
)
def test_other_wire_forms_decode_to_what_was_sent(record: bytes, check: object) -> None:
    parsed = parse_protobuf_request(in_request(record))
    assert callable(check)
    assert check(parsed.resource_logs[0].scope_logs[0].log_records[0])


def test_canonical_requests_take_the_fast_path() -> None:
    message = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(severity_number=-7, attributes=[KeyValue(key="k", value=AnyValue(int_value=-1))])
                        ]
                    )
                ]
            )
        ]
    )
    body = message.SerializeToString()
    assert parse_protobuf_request(body) == message
    assert first_changed_value(body) is None


def test_corrupt_bytes_are_refused_without_quoting_them() -> None:
    text = refused(b"\x0a\x05secret-bytes")
    assert "secret" not in text
    assert "not a valid ExportLogsServiceRequest" in text
