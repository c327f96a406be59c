"""Pricing a request's decoding from its bytes (collector_ext.receive.wire_cost)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.receive.admission import JSON_DECODE_FACTOR, PROTOBUF_DECODE_FACTOR
from collector_ext.receive.wire_cost import (
    ELEMENT_COST,
    JSON_OBJECT_COST,
    RECORD_COST,
    REPEATED_STRING_COST,
    count_element_tags,
    count_log_records,
    json_decode_cost,
    protobuf_decode_cost,
)
from collector_ext.seal.wire import encode_varint


def _request(records_per_scope: list[int], *, body: str = "") -> bytes:
    scopes = [
        ScopeLogs(
            log_records=[LogRecord(body=AnyValue(string_value=body)) if body else LogRecord() for _ in range(count)]
        )
        for count in records_per_scope
    ]
    resource = ResourceLogs(scope_logs=scopes)
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="x")))
    return ExportLogsServiceRequest(resource_logs=[resource, ResourceLogs(scope_logs=scopes[:1])]).SerializeToString()


def test_counts_the_records_of_every_scope_of_every_resource() -> None:
    body = _request([3, 0, 5], body="hello")
    assert count_log_records(body, 10**9) == 3 + 5 + 3


def test_counting_stops_past_the_limit() -> None:
    body = _request([100_000])
    assert count_log_records(body, 1000) == 1001


def test_a_malformed_body_is_counted_as_far_as_it_reads() -> None:
    body = _request([4])
    assert count_log_records(body[:-3], 10**9) <= 8
    assert count_log_records(b"\xff\xff\xff", 10**9) == 0
    assert count_log_records(b"", 10**9) == 0


def test_empty_records_are_priced_by_their_number_not_their_size() -> None:
    flood = _request([50_000])
    typical = _request([50], body="x" * 1000)
    assert protobuf_decode_cost(flood, 10**12) >= RECORD_COST * 100_000 > 50 * len(flood)  # two resources
    assert protobuf_decode_cost(typical, 10**12) < (PROTOBUF_DECODE_FACTOR + 1) * len(typical)


def test_a_price_past_the_limit_is_reported_without_reading_everything() -> None:
    flood = _request([200_000])
    assert protobuf_decode_cost(flood, 1_000_000) > 1_000_000


def test_json_is_priced_per_byte_and_per_object() -> None:
    body = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + b",".join([b"{}"] * 1000) + b"]}]}]}"
    assert json_decode_cost(body) == JSON_DECODE_FACTOR * len(body) + JSON_OBJECT_COST * 1003


def _single_record(record: bytes) -> bytes:
    """A request of one resource, one scope and one record whose encoding is ``record``."""

    def field(tag: int, data: bytes) -> bytes:
        return bytes([tag]) + encode_varint(len(data)) + data

    return field(0x0A, field(0x12, field(0x12, record)))


@pytest.mark.parametrize(
    ("element", "parsed_bytes"),
    [
        (b"\x32\x00", 56),  # an empty attribute
        (b"\x32\x03\x0a\x01a", 52),  # an attribute with a one-letter key
        (b"\x2a\x00", 48),  # an empty body value
    ],
)
def test_tiny_elements_inside_a_record_are_priced_at_least_what_they_parse_to(
    element: bytes, parsed_bytes: int
) -> None:
    # parsed_bytes: measured RSS growth per element with upb (see the module text).
    count = 100_000
    body = _single_record(element * count)
    assert protobuf_decode_cost(body, 10**12) >= parsed_bytes * count


def test_empty_strings_of_a_repeated_field_are_priced_at_least_what_they_parse_to() -> None:
    entity = b"\x22\x00" * 100_000  # EntityRef.description_keys
    resource = b"\x1a" + encode_varint(len(entity)) + entity
    body = b"\x0a" + encode_varint(len(resource) + 1 + len(encode_varint(len(resource)))) + b"\x0a"
    body += encode_varint(len(resource)) + resource
    assert protobuf_decode_cost(body, 10**12) >= 33 * 100_000


def test_element_tags_are_counted_over_the_whole_body() -> None:
    assert count_element_tags(b"\x0a\x12\x1a\x2a\x32\x22\x3a") == 5


def test_tags_are_counted_across_slices_as_one_count_per_tag_would() -> None:
    """The count goes a slice at a time; bytes on both sides of every slice edge are counted."""
    body = random.Random(7).randbytes(3 * 64 * 1024 + 11)
    expected = sum(body.count(bytes([tag])) for tag in (0x0A, 0x12, 0x1A, 0x2A, 0x32))
    assert count_element_tags(body) == expected
    priced_by_size = PROTOBUF_DECODE_FACTOR * len(body)
    elements = ELEMENT_COST * expected + REPEATED_STRING_COST * body.count(b"\x22")
    assert protobuf_decode_cost(body, 0) == priced_by_size + elements  # over the limit: no record walk


def _reference_count(body: bytes, stop: int) -> int:
    """The record count as a plain field-by-field walk of the three levels finds it."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = body[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift > 63:
                raise ValueError

    def level(pos: int, end: int, number: int) -> tuple[list[tuple[int, int]], bool]:
        """The (start, end) of each field ``number``, and whether malformed bytes ended the walk."""
        found = []
        try:
            while pos < end:
                key, pos = varint(pos)
                if key & 7 == 2:
                    length, pos = varint(pos)
                    if key >> 3 == number:
                        found.append((pos, min(pos + length, end)))
                    pos += length
                elif key & 7 == 0:
                    pos = varint(pos)[1]
                elif key & 7 in (1, 5):
                    pos += 8 if key & 7 == 1 else 4
                else:
                    raise ValueError
        except (ValueError, IndexError):
            return found, True
        return found, False

    count = 0
    resources, _ = level(0, len(body), 1)
    for resource in resources:
        scopes, scope_broken = level(*resource, 2)
        for scope in scopes:
            records, record_broken = level(*scope, 2)
            for _ in records:
                count += 1
                if count > stop:
                    return count
            if record_broken:
                return count
        if scope_broken:
            return count
    return count


def test_the_record_count_matches_a_field_by_field_walk_on_damaged_bodies() -> None:
    rng = random.Random(11)
    valid = _request([7, 0, 40], body="hello world")
    bodies = [valid, valid[: len(valid) // 2]]
    for _ in range(400):
        damaged = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        bodies.append(bytes(damaged[: rng.randint(1, len(damaged))]))
    for body in bodies:
        for stop in (5, 10**9):
            assert count_log_records(body, stop) == _reference_count(body, stop), body.hex()
