"""OTLP protobuf decoding that refuses what the decoder would change instead of sealing it changed.

The protobuf runtime accepts some wire forms and quietly keeps a different value than was sent:

- a varint for a 32-bit field (``severity_number``, ``dropped_attributes_count``, ``key_strindex``)
  is cut to its low 32 bits: severity 2^40 becomes 0, a count of 2^32 becomes 0;
- a ten-byte varint carrying bits beyond the 64th loses them;
- a non-repeated field sent twice keeps only the last occurrence (a message field merges both, and
  for a oneof such as ``AnyValue.value`` only the last member survives).

The seal holds the re-encoding of the decoded request (proto/FORMAT.md 7.3), so such a request is
refused, naming the field and where it is, never its value.

Checking is cheap for what encoders actually send: when re-encoding the decoded request gives back
the received bytes exactly, every field decoded to the number it was sent as and none repeated (an
encoding is a function of the values), so there is nothing to look for. Only other inputs (fields
out of order, non-minimal varints, duplicates, unknown fields in the middle) are walked on the wire,
field by field, against the message descriptors. Fields of a wire type their descriptor does not
expect, and unknown fields, are kept by the decoder byte for byte and need no check.

Most requests take a shorter road, ``parse_scalar_request``: decoded as a request whose AnyValue
lacks the kvlist and array members (``_ScalarValuesRequest``, the same messages otherwise), a body
that holds no such value and no unknown field loses nothing when the unknown fields are dropped, and
if it then re-encodes to exactly the received bytes, every value decoded to what was sent and the
request checks can skip the walk over every attribute (``validate``). Anything else is decoded by
``parse_protobuf_request``.

No I/O; the receivers call ``parse_scalar_request`` and ``parse_protobuf_request``.
"""

from __future__ import annotations

from typing import cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from collector_ext.errors import InvalidRequestError

_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_INT32_TYPES = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM})
_UINT32_TYPES = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32})
_EXPECTED_WIRE_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: _FIXED64,
    FieldDescriptor.TYPE_FLOAT: _FIXED32,
    FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_INT32: _VARINT,
    FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_BOOL: _VARINT,
    FieldDescriptor.TYPE_STRING: _LENGTH_DELIMITED,
    FieldDescriptor.TYPE_GROUP: _START_GROUP,
    FieldDescriptor.TYPE_MESSAGE: _LENGTH_DELIMITED,
    FieldDescriptor.TYPE_BYTES: _LENGTH_DELIMITED,
    FieldDescriptor.TYPE_UINT32: _VARINT,
    FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_SINT32: _VARINT,
    FieldDescriptor.TYPE_SINT64: _VARINT,
}
_NOT_VALID = "request is not a valid ExportLogsServiceRequest"


class _Corrupt(Exception):
    """The wire walk met bytes the decoder would not have accepted (it never should: it runs after
    a successful decode)."""


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int, bool]:
    """(value, next position, whether bits beyond the 64th were set)."""
    value = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            return value & ((1 << 64) - 1), pos if not byte & 0x80 else _skip_rest(data, pos, end), True
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos, False
        shift += 7
        if shift > 63:
            raise _Corrupt
    raise _Corrupt


def _skip_rest(data: bytes, pos: int, end: int) -> int:
    while pos < end and data[pos] & 0x80:
        pos += 1
    if pos >= end:
        raise _Corrupt
    return pos + 1


def _skip_group(data: bytes, pos: int, end: int, number: int) -> int:
    while pos < end:
        key, pos, _ = _read_varint(data, pos, end)
        wire_type = key & 7
        if wire_type == _END_GROUP:
            if key >> 3 != number:
                raise _Corrupt
            return pos
        pos = _skip_field(data, pos, end, key)
    raise _Corrupt


def _skip_field(data: bytes, pos: int, end: int, key: int) -> int:
    wire_type = key & 7
    if wire_type == _VARINT:
        return _read_varint(data, pos, end)[1]
    if wire_type == _FIXED64:
        return pos + 8
    if wire_type == _FIXED32:
        return pos + 4
    if wire_type == _LENGTH_DELIMITED:
        length, pos, _ = _read_varint(data, pos, end)
        return pos + length
    if wire_type == _START_GROUP:
        return _skip_group(data, pos, end, key >> 3)
    raise _Corrupt


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _changed_value(data: bytes, pos: int, end: int, descriptor: Descriptor, path: str) -> str | None:
    """Where and why the decoder keeps a value other than the one on the wire, or None."""
    fields = descriptor.fields_by_number
    seen: dict[int, int] = {}
    oneof_member: dict[str, str] = {}
    while pos < end:
        key, pos, _ = _read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        field = fields.get(number)
        if field is None or _EXPECTED_WIRE_TYPE[field.type] != wire_type:
            pos = _skip_field(data, pos, end, key)  # kept verbatim as an unknown field
            continue
        occurrence = seen.get(number, 0)
        seen[number] = occurrence + 1
        repeated = field.is_repeated
        where = f"{path}.{field.name}" if path else field.name
        if repeated:
            where = f"{where}[{occurrence}]"
        if not repeated:
            if occurrence:
                return f"{where} appears more than once; the decoder would keep only the last"
            oneof = field.containing_oneof
            if oneof is not None:
                earlier = oneof_member.setdefault(oneof.name, field.name)
                if earlier != field.name:
                    return (
                        f"{path or 'the request'} sets both {earlier} and {field.name} of the oneof {oneof.name}; "
                        "the decoder would keep only the last"
                    )
        if wire_type == _VARINT:
            value, pos, overflow = _read_varint(data, pos, end)
            if overflow:
                return f"{where} is a varint with more than 64 bits"
            if field.type in _INT32_TYPES and not -(1 << 31) <= _signed64(value) < 1 << 31:
                return f"{where} is outside the 32-bit range of its type"
            if field.type in _UINT32_TYPES and value >= 1 << 32:
                return f"{where} is outside the 32-bit range of its type"
        elif wire_type == _LENGTH_DELIMITED and field.message_type is not None:
            length, pos, _ = _read_varint(data, pos, end)
            found = _changed_value(data, pos, pos + length, field.message_type, where)
            if found is not None:
                return found
            pos += length
        else:
            pos = _skip_field(data, pos, end, key)
    if pos != end:
        raise _Corrupt
    return None


def first_changed_value(body: bytes, descriptor: Descriptor = ExportLogsServiceRequest.DESCRIPTOR) -> str | None:
    """Why decoding ``body`` would not keep exactly what it holds, naming the field and its position
    (``resource_logs[0].scope_logs[0].log_records[3].severity_number``), or None when it would.

    ``body`` must be one the protobuf decoder accepts.
    """
    try:
        return _changed_value(body, 0, len(body), descriptor, "")
    except (_Corrupt, IndexError):
        return "the wire format is corrupt"


def parse_protobuf_request(body: bytes) -> ExportLogsServiceRequest:
    """Decode an ExportLogsServiceRequest, refusing one whose decoding would change a value.

    Raises:
        InvalidRequestError: not a valid request, or a value the decoder would keep changed.
    """
    try:
        request = ExportLogsServiceRequest.FromString(body)
    except (DecodeError, RecursionError) as exc:
        raise InvalidRequestError(
            f"{_NOT_VALID} (the protobuf decoder refused it: corrupt wire format, a string that is not UTF-8, "
            "or messages nested more than 100 deep); nothing was sealed"
        ) from exc
    if request.SerializeToString() != body:
        problem = first_changed_value(body)
        if problem is not None:
            raise InvalidRequestError(f"{_NOT_VALID}: {problem}; nothing was sealed")
    return request


# AnyValue's array_value and kvlist_value (opentelemetry/proto/common/v1/common.proto).
_CONTAINER_FIELD_NUMBERS = frozenset({5, 6})


def _scalar_values_request_class() -> type[Message]:
    """ExportLogsServiceRequest in a pool of its own whose AnyValue lacks the container members: a
    kvlist or array value decodes as an unknown field there."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, logs_pb2, logs_service_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        for message in file.message_type:
            if module is common_pb2 and message.name == "AnyValue":
                kept = [field for field in message.field if field.number not in _CONTAINER_FIELD_NUMBERS]
                del message.field[:]
                message.field.extend(kept)
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(ExportLogsServiceRequest.DESCRIPTOR.full_name))


_ScalarValuesRequest = _scalar_values_request_class()


def parse_scalar_request(body: bytes) -> ExportLogsServiceRequest | None:
    """The request ``body`` encodes, when it holds no kvlist or array value and no unknown field and
    is in the form its own re-encoding takes; None otherwise (``parse_protobuf_request`` decodes it).

    The message is of ``_ScalarValuesRequest``'s classes, which have the same fields, names and
    encodings as ExportLogsServiceRequest's but for the two AnyValue members it cannot hold.
    """
    try:
        request = _ScalarValuesRequest.FromString(body)
    except (DecodeError, RecursionError):
        return None
    # A container or an unknown field anywhere would be dropped here, and the bytes would differ.
    request.DiscardUnknownFields()
    if request.SerializeToString() != body:
        return None
    return cast(ExportLogsServiceRequest, request)
