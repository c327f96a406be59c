"""OTLP/JSON decoding: an ExportLogsServiceRequest from an ``application/json`` body, exactly as sent.

The body is read against the OTLP message descriptors, field by field, and every value must have one
meaning in protobuf; anything a lenient reader would turn into some other value is refused with the
field and its position in the names the client wrote
(``resourceLogs[0].scopeLogs[0].logRecords[2].severityNumber``), never the value. What is
accepted (proto3 JSON mapping as OTLP uses it):

- field names in lowerCamelCase or as in the .proto (not both for one field); unknown names are
  ignored, as the OTLP specification requires of receivers, so they are not sealed;
- integers as JSON numbers or decimal strings, in the range of their type, integral (``1e3`` and
  ``1.0`` are exact; ``1.5``, ``"1_000"``, ``"+1"``, ``"0x10"`` are refused);
- enums as integers in the int32 range, or the name of a value (``SEVERITY_NUMBER_INFO``); an
  unknown name such as ``"INFO"`` is refused (protobuf's parser would silently drop it);
- doubles as numbers or numeric strings, or the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
  a finite literal too large for a double (``1e400``) is refused rather than sealed as infinity,
  and JSON's non-standard bare ``NaN``/``Infinity`` tokens are refused;
- booleans as ``true``/``false`` only; strings as JSON strings that are valid Unicode (no unpaired
  surrogates); bytes as base64 (standard or URL-safe, padding optional, nothing else), except the
  log record's ``traceId``/``spanId``, which OTLP/JSON writes as hex of exactly 32/16 digits;
- ``null`` as the field's default (absent).

A key given twice in one object, or two members of one oneof, is refused (either would be lost).
Messages may nest as deep as the protobuf decoder allows (100), so both encodings refuse the same
requests. The request is built field by field from the checked values; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector_ext.errors import InvalidRequestError

_NOT_VALID = "request is not a valid ExportLogsServiceRequest in OTLP/JSON"
# The protobuf decoder's nesting limit, applied here too so both encodings refuse the same requests.
MAX_MESSAGE_DEPTH = 100
# JSON number grammar (RFC 8259), ASCII digits only (``\d`` would admit other scripts' digits).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")
_HEX = re.compile(r"[0-9a-fA-F]*")
# OTLP/JSON writes these bytes fields as hex, not base64.
_HEX_FIELDS = {(LogRecord.DESCRIPTOR.full_name, "trace_id"): 16, (LogRecord.DESCRIPTOR.full_name, "span_id"): 8}
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

_T = FieldDescriptor
_INTEGER_RANGES = {
    _T.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),
    _T.TYPE_UINT32: (0, (1 << 32) - 1),
    _T.TYPE_FIXED32: (0, (1 << 32) - 1),
    _T.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    _T.TYPE_UINT64: (0, (1 << 64) - 1),
    _T.TYPE_FIXED64: (0, (1 << 64) - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


class _Refused(Exception):
    """A value that cannot be taken as sent; ``str()`` says why, without the value."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _Refused("an object has the same key twice")
    return document


def _no_constants(name: str) -> Any:
    raise _Refused(f'the bare token {name} is not JSON (write the string "{name}" for a double)')


def _field_names(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names[field.name] = field
        names[field.json_name] = field
    return names


_FIELD_NAMES: dict[str, dict[str, FieldDescriptor]] = {}


def _names_of(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names = _FIELD_NAMES.get(descriptor.full_name)
    if names is None:
        names = _FIELD_NAMES[descriptor.full_name] = _field_names(descriptor)
    return names


def _integer(value: Any, field: FieldDescriptor, where: str) -> int:
    if isinstance(value, bool):
        raise _Refused(f"{where} must be an integer, not a boolean")
    if isinstance(value, int):
        number = value
    else:
        if isinstance(value, str):
            if field.enum_type is not None:
                enum_value = field.enum_type.values_by_name.get(value)
                if enum_value is None:
                    raise _Refused(f"{where} is not an integer nor the name of a {field.enum_type.name} value")
                return int(enum_value.number)
            if not _NUMBER.fullmatch(value):
                raise _Refused(f"{where} is a string that is not a decimal integer")
            value = Decimal(value)
        if not isinstance(value, Decimal):
            raise _Refused(f"{where} must be an integer")
        # A huge exponent is out of every range; checked before the exact integer is built.
        if not value.is_finite() or value.adjusted() > 40 or value != value.to_integral_value():
            raise _Refused(f"{where} is not an integer in the range of its type")
        number = int(value)
    low, high = _INTEGER_RANGES[field.type]
    if not low <= number <= high:
        raise _Refused(f"{where} is outside the range of its type")
    return number


def _double(value: Any, field: FieldDescriptor, where: str) -> float:
    if isinstance(value, bool):
        raise _Refused(f"{where} must be a number, not a boolean")
    if isinstance(value, str):
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        if not _NUMBER.fullmatch(value):
            raise _Refused(f'{where} is a string that is not a number, "NaN", "Infinity" or "-Infinity"')
        value = Decimal(value)
    if not isinstance(value, (int, Decimal)):
        raise _Refused(f"{where} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the double range
        number = math.inf
    limit = _FLOAT32_MAX if field.type == _T.TYPE_FLOAT else math.inf
    if math.isinf(number) or abs(number) > limit:
        # Every decimal is rounded to the nearest double; a finite number becoming infinite is not rounding.
        raise _Refused(f'{where} is too large for its type (send "Infinity" for an infinite value)')
    return number


def _bytes(value: Any, field: FieldDescriptor, where: str, hex_size: int | None) -> bytes:
    if not isinstance(value, str):
        raise _Refused(f"{where} must be a string")
    if hex_size is not None:
        if value and (len(value) != 2 * hex_size or not _HEX.fullmatch(value)):
            raise _Refused(
                f"{where} must be {2 * hex_size} hex digits (OTLP/JSON encodes ids as hex), got {len(value)} characters"
            )
        return binascii.unhexlify(value)
    if not _BASE64.fullmatch(value) or len(value.rstrip("=")) % 4 == 1:
        raise _Refused(f"{where} is not base64")
    padded = value.rstrip("=")
    padded += "=" * (-len(padded) % 4)
    try:
        if "-" in padded or "_" in padded:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise _Refused(f"{where} is not base64") from exc


def _scalar(value: Any, field: FieldDescriptor, where: str, hex_size: int | None) -> Any:
    kind = field.type
    if kind in _INTEGER_RANGES:
        return _integer(value, field, where)
    if kind == _T.TYPE_DOUBLE or kind == _T.TYPE_FLOAT:
        return _double(value, field, where)
    if kind == _T.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _Refused(f"{where} must be true or false")
        return value
    if kind == _T.TYPE_STRING:
        if not isinstance(value, str):
            raise _Refused(f"{where} must be a string")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _Refused(f"{where} holds an unpaired UTF-16 surrogate") from exc
        return value
    if kind == _T.TYPE_BYTES:
        return _bytes(value, field, where, hex_size)
    raise _Refused(f"{where} has a type OTLP/JSON does not use")


def _fill(message: Message, document: Any, where: str, depth: int) -> None:
    """Set ``message``'s fields from one JSON object, checking every value (see the module docstring).

    Repeated messages are dropped from the document as they are converted, so the document and the
    message do not both hold the whole request at the end.
    """
    if not isinstance(document, dict):
        raise _Refused(f"{where or 'the request'} is not an object")
    if depth > MAX_MESSAGE_DEPTH:
        record = ".".join(where.split(".")[:3])
        raise _Refused(f"{record} nests messages more than {MAX_MESSAGE_DEPTH} deep")
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    names = _names_of(descriptor)
    seen: set[str] = set()
    oneof_member: dict[str, str] = {}
    for key, value in document.items():
        field = names.get(key)
        if field is None or value is None:
            continue  # unknown fields are ignored (OTLP/JSON); null is the default
        # Positions use the names the client wrote (lowerCamelCase or the .proto's), known names only.
        path = f"{where}.{key}" if where else key
        if field.name in seen:
            raise _Refused(f"{path} is given twice (as {field.name} and {field.json_name})")
        seen.add(field.name)
        oneof = field.containing_oneof
        if oneof is not None:
            earlier = oneof_member.setdefault(oneof.name, field.name)
            if earlier != field.name:
                raise _Refused(f"{where} sets both {earlier} and {field.name} of the oneof {oneof.name}")
        hex_size = _HEX_FIELDS.get((descriptor.full_name, field.name))
        if field.is_repeated:
            if not isinstance(value, list):
                raise _Refused(f"{path} is not an array")
            container = getattr(message, field.name)
            if field.message_type is not None:
                for index, item in enumerate(value):
                    _fill(container.add(), item, f"{path}[{index}]", depth + 1)
                    value[index] = None
            else:
                container.extend(
                    [_scalar(item, field, f"{path}[{index}]", hex_size) for index, item in enumerate(value)]
                )
        elif field.message_type is not None:
            child = getattr(message, field.name)
            child.SetInParent()  # present even when empty, as in the protobuf encoding
            _fill(child, value, path, depth + 1)
        else:
            setattr(message, field.name, _scalar(value, field, path, hex_size))


def parse_json_request(body: bytes) -> ExportLogsServiceRequest:
    """Decode a non-empty OTLP/JSON body.

    Raises:
        InvalidRequestError: not JSON, not an ExportLogsServiceRequest, or a value that protobuf
            would hold differently from what was sent; the message names the field and position.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{_NOT_VALID}: not valid utf-8 (at byte {exc.start}); nothing was sealed") from exc
    request = ExportLogsServiceRequest()
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_float=Decimal, parse_constant=_no_constants)
        del text
        _fill(request, document, "", 1)
    except _Refused as exc:
        raise InvalidRequestError(f"{_NOT_VALID}: {exc}; nothing was sealed") from exc
    except json.JSONDecodeError as exc:
        # The decoder's message says what it expected and where, never the text itself.
        raise InvalidRequestError(
            f"{_NOT_VALID}: not JSON (JSONDecodeError: {exc.msg} at character {exc.pos}); nothing was sealed"
        ) from exc
    except (RecursionError, ValueError, TypeError, InvalidOperation) as exc:
        # ValueError: an integer literal of more digits than Python converts; TypeError and
        # ValueError would also come from a value protobuf refuses that the checks above let through.
        raise InvalidRequestError(
            f"{_NOT_VALID}: not JSON this receiver can read ({type(exc).__name__}); nothing was sealed"
        ) from exc
    return request
