"""A sealed log record's fields, as a report shows them, read from the stored entry bytes.

The event time is read first and cheaply (a record's ``time_unix_nano`` is normally the first field of
its encoding), so the many records outside a report's period cost little more than verifying them;
only records inside it are parsed whole. Pure: bytes in, values out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind
from collector_ext.seal.sender import describe_sender_message

_TIME_TAG = 0x09  # LogRecord.time_unix_nano: field 1, fixed64
_OBSERVED_TAG = 0x59  # LogRecord.observed_time_unix_nano: field 11, fixed64


@dataclass(frozen=True, slots=True)
class RecordFields:
    """What a report needs of one record."""

    time_unix_nano: int
    service: str
    event_name: str
    severity: str
    body: str
    trace_id: str
    attributes: dict[str, str]  # log attributes, then scope and resource ones not shadowed, as text
    sender: str = ""  # who submitted the record (FORMAT.md 7.3a), "" when the seal does not say


def log_record_bytes(entry: bytes) -> bytes | None:
    """The OTLP LogRecord encoding inside a log-record entry, or None for another kind or a payload
    that does not parse."""
    if len(entry) < ENTRY_HEADER_SIZE or entry[2] != EntryKind.LOG_RECORD:
        return None
    # The writer's canonical payload is length-delimited fields 1-5 in order: walk them by hand (this
    # runs for every record near the period), and let the protobuf runtime judge anything else.
    offset, end = ENTRY_HEADER_SIZE, len(entry)
    while offset < end:
        tag = entry[offset]
        if tag & 7 != 2 or tag & 0x80 or offset + 1 >= end:
            break
        length, shift, offset = 0, 0, offset + 1
        while offset < end:
            byte = entry[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if tag == 0x2A:
            return entry[offset : offset + length] if offset + length <= end else None
        offset += length
    try:
        return archive_pb2.LogPayload.FromString(entry[ENTRY_HEADER_SIZE:]).log_record
    except DecodeError:
        return None


def event_time(record: bytes) -> int | None:
    """The record's time, else its observed time (0 when neither is set), or None if unreadable."""
    if len(record) >= 9 and record[0] == _TIME_TAG:
        value = int.from_bytes(record[1:9], "little")
        if value:
            return value
    try:
        parsed = LogRecord.FromString(record)
    except DecodeError:
        return None
    return parsed.time_unix_nano or parsed.observed_time_unix_nano


def any_value_text(value: AnyValue) -> str:
    """An attribute or body value as text: strings as they are, the rest in a compact JSON-like form."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return "[" + ", ".join(any_value_text(v) for v in value.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + ", ".join(f"{kv.key}: {any_value_text(kv.value)}" for kv in value.kvlist_value.values) + "}"
    return ""


def _attributes(into: dict[str, str], values: Iterable[KeyValue]) -> None:
    for kv in values:
        into.setdefault(kv.key, any_value_text(kv.value))


def read_fields(entry: bytes, time_unix_nano: int) -> RecordFields | None:
    """The fields of a log-record entry (None if it is no log record or does not parse)."""
    if len(entry) < ENTRY_HEADER_SIZE or entry[2] != EntryKind.LOG_RECORD:
        return None
    try:
        payload = archive_pb2.LogPayload.FromString(entry[ENTRY_HEADER_SIZE:])
        record = LogRecord.FromString(payload.log_record)
        resource = Resource.FromString(payload.resource)
    except DecodeError:
        return None
    attributes: dict[str, str] = {}
    _attributes(attributes, record.attributes)
    resource_attributes: dict[str, str] = {}
    _attributes(resource_attributes, resource.attributes)
    for key, value in resource_attributes.items():
        attributes.setdefault(key, value)
    severity = record.severity_text
    if not severity and record.severity_number:
        try:
            severity = SeverityNumber.Name(record.severity_number).removeprefix("SEVERITY_NUMBER_")
        except ValueError:
            severity = str(record.severity_number)
    return RecordFields(
        time_unix_nano=time_unix_nano,
        service=resource_attributes.get("service.name", ""),
        event_name=record.event_name or attributes.get("event.name", ""),
        severity=severity,
        body=any_value_text(record.body) if record.HasField("body") else "",
        trace_id=record.trace_id.hex(),
        attributes=attributes,
        sender=describe_sender_message(payload.sender) if payload.HasField("sender") else "",
    )


def int_attribute(attributes: dict[str, str], key: str) -> int | None:
    value = attributes.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
