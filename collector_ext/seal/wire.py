"""Walking protobuf wire format by hand, for objects a verifier must read within bounds.

The protobuf runtime parses a whole message before anything can be looked at, so a hostile object
of many tiny fields costs many times its size. These helpers yield one field at a time and let the
caller stop at a limit. Pure: bytes in, values out.
"""

from __future__ import annotations

from collections.abc import Iterator

from collector_ext.errors import MalformedObjectError


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Varints of one and two bytes (values below 16,384: lengths of records and entries nearly always)
# are looked up; a table of 16,384 costs under 1 MiB in each process that imports it (one of 65,536
# cost 3 MiB in the sidecar, each signing worker and the Loki process).
_SMALL_VARINTS = [_varint(value) for value in range(1 << 14)]
# A low 7-bit group followed by more: its byte with the continuation bit set.
_CONTINUED = [bytes((group | 0x80,)) for group in range(128)]


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if value < 16384:
        return _SMALL_VARINTS[value]
    if value < 1 << 21:  # three bytes: the low group, then the two-byte varint of the rest
        return _CONTINUED[value & 127] + _SMALL_VARINTS[value >> 7]
    return _varint(value)


def length_delimited(field_number: int, data: bytes) -> bytes:
    """Field ``field_number`` of wire type 2 holding ``data``; nothing when ``data`` is empty."""
    if not data:
        return b""
    return encode_varint(field_number << 3 | 2) + encode_varint(len(data)) + data


def read_varint(body: memoryview, offset: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while offset < end and shift < 64:
        byte = body[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise MalformedObjectError("body does not parse: a varint runs past its end or past 64 bits")


def wire_fields(body: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, value) of each field of a message: the bytes of a length-delimited field, None
    for the other wire types (skipped). Groups, which no format version uses, are refused."""
    offset, end = 0, len(body)
    while offset < end:
        tag, offset = read_varint(body, offset, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise MalformedObjectError("body does not parse: field number 0")
        if wire_type == 2:
            length, offset = read_varint(body, offset, end)
            if length > end - offset:
                raise MalformedObjectError(f"body does not parse: field {number} runs past its end")
            yield number, body[offset : offset + length]
            offset += length
        elif wire_type == 0:
            _, offset = read_varint(body, offset, end)
            yield number, None
        elif wire_type in (1, 5):
            offset += 8 if wire_type == 1 else 4
            if offset > end:
                raise MalformedObjectError(f"body does not parse: field {number} runs past its end")
            yield number, None
        else:
            raise MalformedObjectError(f"body does not parse: wire type {wire_type}")
