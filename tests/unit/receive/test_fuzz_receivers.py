"""Hypothesis over both receivers' decoding (gRPC, OTLP/HTTP protobuf and JSON; plain, gzip, deflate):
a request is refused as invalid with nothing sealed, or sealed exactly as sent; never another error.

Two properties: generated requests whose 32-bit fields may be out of range (written on the wire
by hand, out of field order) are refused exactly when a value is out of range and otherwise sealed
with the values sent; arbitrary and mutated bytes satisfy tests/fuzz_receivers.py's oracle.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.errors import InvalidRequestError
from collector_ext.pb.archive_pb2 import LogPayload
from collector_ext.seal.wire import encode_varint
from tests.fuzz_receivers import CODINGS, PATHS, check_case, compress, decode, seed_requests, to_otlp_json

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.text(max_size=8).map(lambda s: AnyValue(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(st.text(max_size=4), inner), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs]))
        ),
    ),
    max_leaves=8,
)
# 32-bit fields, sometimes beyond their range: (severity_number, dropped_attributes_count).
severities = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1))
counts = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))


@st.composite
def records(draw: st.DrawFn) -> tuple[LogRecord, int, int]:
    record = LogRecord(
        time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        severity_text=draw(st.text(max_size=6)),
        body=draw(values),
        attributes=[
            KeyValue(key=k, value=v) for k, v in draw(st.lists(st.tuples(st.text(max_size=4), values), max_size=3))
        ],
        trace_id=draw(st.sampled_from([b"", bytes(range(16))])),
        span_id=draw(st.sampled_from([b"", bytes(range(8))])),
    )
    return record, draw(severities), draw(counts)


def _in_range(severity: int, count: int) -> bool:
    return -(2**31) <= severity < 2**31 and count < 2**32


def _wire_record(record: LogRecord, severity: int, count: int) -> bytes:
    """The record with its 32-bit fields appended by hand, after the others (out of field order)."""
    extra = b""
    if severity:
        extra += b"\x10" + encode_varint(severity & (2**64 - 1))
    if count:
        extra += b"\x38" + encode_varint(count)
    return record.SerializeToString() + extra


def _ld(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def _protobuf_body(batch: list[tuple[LogRecord, int, int]]) -> bytes:
    return _ld(1, _ld(2, b"".join(_ld(2, _wire_record(*item)) for item in batch)))


def _json_body(batch: list[tuple[LogRecord, int, int]]) -> bytes:
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[r for r, _, _ in batch])])]
    )
    document = json.loads(to_otlp_json(request))
    for record_document, (_, severity, count) in zip(
        document["resourceLogs"][0]["scopeLogs"][0]["logRecords"], batch, strict=True
    ):
        record_document["severityNumber"] = severity
        record_document["droppedAttributesCount"] = str(count)
    return json.dumps(document).encode()


@FUZZ
@given(
    batch=st.lists(records(), min_size=1, max_size=4),
    path=st.sampled_from(PATHS),
    coding=st.sampled_from(CODINGS),
)
def test_requests_are_sealed_as_sent_or_refused(
    batch: list[tuple[LogRecord, int, int]], path: str, coding: str | None
) -> None:
    body = compress(_json_body(batch) if path == "http-json" else _protobuf_body(batch), coding)
    if not all(_in_range(severity, count) for _, severity, count in batch):
        with pytest.raises(InvalidRequestError, match="range"):
            decode(path, body, None if path == "grpc" else coding)
        return
    payloads = decode(path, body, None if path == "grpc" else coding)
    assert len(payloads) == len(batch)
    for payload, (record, severity, count) in zip(payloads, batch, strict=True):
        sealed = LogRecord.FromString(LogPayload.FromString(payload).log_record)
        expected = LogRecord()
        expected.CopyFrom(record)
        expected.severity_number = severity  # type: ignore[assignment]
        expected.dropped_attributes_count = count
        assert sealed.SerializeToString() == expected.SerializeToString()
    assert check_case(path, body, None if path == "grpc" else coding) == "accepted"


def _long_varint(value: int) -> bytes:
    """A non-minimal varint: the value with one more continuation byte than it needs."""
    minimal = bytearray(encode_varint(value))
    minimal[-1] |= 0x80
    return bytes(minimal) + b"\x00"


@FUZZ
@given(
    batch=st.lists(records(), min_size=1, max_size=4),
    unknown=st.integers(20, 2**29 - 1),
    transport=st.sampled_from(["grpc", "http-protobuf"]),
)
def test_other_valid_encodings_are_accepted_as_sent(
    batch: list[tuple[LogRecord, int, int]], unknown: int, transport: str
) -> None:
    """Unknown fields before the known ones and non-minimal lengths send the wire walk through its
    slow path, which must accept them: only the values decide."""
    unknown_field = encode_varint(unknown << 3) + encode_varint(unknown)
    in_range = [(record, severity % 2**31, count % 2**32) for record, severity, count in batch]
    parts = b""
    for item in in_range:
        record_bytes = unknown_field + _wire_record(*item)
        parts += b"\x12" + _long_varint(len(record_bytes)) + record_bytes
    body = _ld(1, _ld(2, parts))
    payloads = decode(transport, body, None)
    for payload, (record, severity, count) in zip(payloads, in_range, strict=True):
        expected = LogRecord()
        expected.CopyFrom(record)
        expected.severity_number = severity  # type: ignore[assignment]
        expected.dropped_attributes_count = count
        expected.MergeFromString(unknown_field)
        sealed = LogRecord.FromString(LogPayload.FromString(payload).log_record)
        assert sealed.SerializeToString() == expected.SerializeToString()


def _mutations() -> st.SearchStrategy[bytes]:
    seeds = [request.SerializeToString() for request in seed_requests()] + [to_otlp_json(r) for r in seed_requests()]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(data)))
            action = draw(st.integers(0, 2))
            if action == 0 and data:
                data[min(position, len(data) - 1)] = draw(st.integers(0, 255))
            elif action == 1:
                data[position:position] = draw(st.binary(min_size=1, max_size=6))
            else:
                del data[position : position + draw(st.integers(1, 8))]
        return bytes(data)

    return mutated()


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=200), _mutations()),
    path=st.sampled_from(PATHS),
    coding=st.sampled_from(CODINGS),
)
def test_arbitrary_bytes_are_refused_or_sealed_exactly(data: bytes, path: str, coding: str | None) -> None:
    outcome = check_case(path, compress(data, coding), None if path == "grpc" else coding)
    assert outcome in ("accepted", "refused")


def test_the_seeds_are_accepted_on_every_path() -> None:
    for request in seed_requests():
        for path in PATHS:
            body: Any = to_otlp_json(request) if path == "http-json" else request.SerializeToString()
            for coding in CODINGS:
                assert check_case(path, compress(body, coding), None if path == "grpc" else coding) == "accepted"
