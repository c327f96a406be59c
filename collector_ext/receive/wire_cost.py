"""What decoding an OTLP request will cost in memory, priced from its bytes before it is parsed.

The parsed form of a request is not proportional to its size. An empty log record takes 2 bytes of
protobuf and about 190 bytes once parsed and turned into a payload (upb's LogRecord, 128 bytes, and
the sealed payload with its list slot); a request of empty records would cost nearly 100 times its
size. So the price is a per-byte factor (``admission.PROTOBUF_DECODE_FACTOR``, measured on typical
batches) plus a per-record cost for the records the body holds, counted on the wire: the walk reads
only the three levels above the records (resource logs, scope logs, records) and skips each record's
content, about 0.3 us per record, and stops once the price passes the limit. OTLP/JSON is priced per
byte (``JSON_DECODE_FACTOR``) plus a cost per ``{``: every JSON object becomes a Python dict and then
a protobuf message, and an upper bound on their number costs one C-speed count.

Elements inside a record (attributes, nested values) are priced by an upper bound on their number
that costs one C-speed pass over the body: every such element is a length-delimited field whose tag byte
is one of 0x0a, 0x12, 0x1a, 0x2a or 0x32 (fields 1, 2, 3, 5 and 6 of KeyValue, AnyValue, ArrayValue,
KeyValueList, LogRecord, Resource, EntityRef and InstrumentationScope), or 0x22 (field 4: the only
repeated field 4 is EntityRef's list of strings, priced lower because '"' is common in text). Counting
those bytes over-counts (text holds some of them) but never misses an element. Measured with upb:
an empty attribute (2 bytes) parses to 56 bytes, an empty array value to 48, an attribute with a
one-letter key to 52, an empty string of a repeated field to 33, a 15 MiB string to 3 times its size
with its payload; a batch of typical records (244 bytes, 19 tag bytes each) to 990 bytes a record,
priced at 1,920 (so a 16 MiB request of them, 126 MiB, still fits the default 128 MiB budget).

Pure: bytes in, an integer out; a malformed body is priced as far as it reads and left to the
parser to refuse.
"""

from __future__ import annotations

from collections.abc import Iterator

from collector_ext.receive.admission import JSON_DECODE_FACTOR, PROTOBUF_DECODE_FACTOR

# Beyond the per-byte factor: a LogRecord parsed (128 bytes, measured with upb) and its sealed
# payload (56) with room to spare.
RECORD_COST = 200
# Per "{" of an OTLP/JSON body: a dict from json.loads (64 bytes and more), a protobuf message and,
# for a record, its payload.
JSON_OBJECT_COST = 250
# Per byte that may be the tag of a length-delimited OTLP field: an element parsed (an empty
# KeyValue, the largest, is 56 bytes with its share of the repeated field; the per-byte factor on
# its two bytes makes up the rest).
ELEMENT_COST = 52
_ELEMENT_TAGS = (b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32")
# Per 0x22 byte: an empty string of EntityRef.description_keys parses to 33 bytes.
REPEATED_STRING_COST = 32
# Every byte but the tags counted above: deleting them leaves only those (one C pass over the body,
# about five times faster than a count per tag), a slice of _SLICE_BYTES at a time so the copies
# stay small whatever the body holds.
_NOT_COUNTED = bytes(sorted(set(range(256)) - set(b"".join(_ELEMENT_TAGS) + b"\x22")))
_SLICE_BYTES = 64 * 1024


class _Walk:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def varint(self, pos: int) -> tuple[int, int]:
        data = self.data
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        result, shift, pos = byte & 0x7F, 7, pos + 1
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 10 bytes")

    def children(self, pos: int, end: int, number: int) -> Iterator[tuple[int, int]]:
        """(start, end) of each length-delimited field ``number`` in data[pos:end]."""
        while pos < end:
            key, pos = self.varint(pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = self.varint(pos)
                if key >> 3 == number:
                    yield pos, min(pos + length, end)
                pos += length
            elif wire_type == 0:
                _, pos = self.varint(pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise ValueError("wire type the OTLP messages do not use")


def _count_fields(walk: _Walk, pos: int, end: int, number: int, stop: int) -> tuple[int, bool]:
    """(the length-delimited fields ``number`` in data[pos:end], counted until the count passes
    ``stop``; whether malformed bytes ended the count). ``_Walk.children`` inlined, with one-byte
    keys and lengths read in place: this loop runs once per log record."""
    data = walk.data
    wanted = number << 3 | 2
    count = 0
    try:
        while pos < end:
            key = data[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = walk.varint(pos)
            wire_type = key & 7
            if wire_type == 2:
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = walk.varint(pos)
                if key == wanted:
                    count += 1
                    if count > stop:
                        return count, False
                pos += length
            elif wire_type == 0:
                _, pos = walk.varint(pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                return count, True
    except (ValueError, IndexError):
        return count, True
    return count, False


def count_log_records(body: bytes, stop: int) -> int:
    """The log records of an ExportLogsServiceRequest body (field 1 > field 2 > field 2); counting
    ends once the count passes ``stop``. A malformed body is counted as far as it reads."""
    walk = _Walk(body)
    count = 0
    try:
        for resource_start, resource_end in walk.children(0, len(body), 1):
            for scope_start, scope_end in walk.children(resource_start, resource_end, 2):
                records, malformed = _count_fields(walk, scope_start, scope_end, 2, stop - count)
                count += records
                if malformed or count > stop:
                    return count
    except (ValueError, IndexError):
        pass
    return count


def _tag_counts(body: bytes) -> tuple[int, int]:
    """(bytes 0x0a, 0x12, 0x1a, 0x2a or 0x32; bytes 0x22) in ``body``."""
    elements = repeated_strings = 0
    for start in range(0, len(body), _SLICE_BYTES):
        tags = body[start : start + _SLICE_BYTES].translate(None, _NOT_COUNTED)
        quotes = tags.count(b"\x22")
        elements += len(tags) - quotes
        repeated_strings += quotes
    return elements, repeated_strings


def count_element_tags(body: bytes) -> int:
    """An upper bound on the length-delimited elements of an OTLP logs body (see the module text)."""
    return _tag_counts(body)[0]


def _element_cost(body: bytes) -> int:
    elements, repeated_strings = _tag_counts(body)
    return ELEMENT_COST * elements + REPEATED_STRING_COST * repeated_strings


def protobuf_decode_cost(body: bytes, limit: int) -> int:
    """Memory that parsing ``body`` and sealing its records will take beyond the body itself; once
    known to exceed ``limit``, a value above ``limit``."""
    by_size = PROTOBUF_DECODE_FACTOR * len(body) + _element_cost(body)
    if by_size > limit:
        return by_size
    return by_size + RECORD_COST * count_log_records(body, (limit - by_size) // RECORD_COST)


def json_decode_cost(body: bytes) -> int:
    """The same for an OTLP/JSON body."""
    return JSON_DECODE_FACTOR * len(body) + JSON_OBJECT_COST * body.count(b"{")
