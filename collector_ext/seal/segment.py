"""Segment objects: consecutive sealed entries of one chain, written to the archive as one object.

The body is the ``Segment`` message of archive.proto. Encoding is hand-written (one
length-delimited SealedRecord per entry) because it runs for every record; decoding uses the
protobuf runtime. A segment says nothing about its own authenticity: its SHA-256 is recorded in the
next signed checkpoint, and each entry carries its own signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import FORMAT_VERSION, SIGNATURE_SIZE, SUPPORTED_FORMAT_VERSIONS
from collector_ext.seal.framing import FRAME_PREFIX_SIZE, MAX_SEGMENT_RECORDS, SEGMENT_MAGIC, unframe
from collector_ext.seal.wire import encode_varint, read_varint

# Bounds on what a segment object adds to its entries: per record the SealedRecord tag and length
# (at most 6 bytes), the entry's tag and length (6) and the signature field (66); per object the
# frame (16) and the header field (at most 64).
RECORD_OVERHEAD_BYTES = 78
OBJECT_OVERHEAD_BYTES = 80


def segment_object_bound(entry_bytes: int, records: int) -> int:
    """An upper bound on the size of the segment object holding ``records`` entries of
    ``entry_bytes`` bytes in all."""
    return OBJECT_OVERHEAD_BYTES + entry_bytes + RECORD_OVERHEAD_BYTES * records


_RECORD_TAG = encode_varint(2 << 3 | 2)
_ENTRY_TAG = encode_varint(1 << 3 | 2)
_SIGNATURE_FIELD = encode_varint(2 << 3 | 2) + encode_varint(SIGNATURE_SIZE)


def encode_segment(
    *,
    chain_id: bytes,
    first_sequence: int,
    created_unix_nano: int,
    entries: Sequence[bytes],
    signatures: Sequence[bytes],
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """The complete framed segment object for ``entries`` (starting at ``first_sequence``)."""
    if len(entries) != len(signatures):
        raise ValueError("one signature per entry")
    if any(len(signature) != SIGNATURE_SIZE for signature in signatures):
        raise ValueError(f"every signature is {SIGNATURE_SIZE} bytes")
    header = archive_pb2.SegmentHeader(
        format_version=format_version,
        chain_id=chain_id,
        first_sequence=first_sequence,
        record_count=len(entries),
        created_unix_nano=created_unix_nano,
    ).SerializeToString(deterministic=True)
    # parts[0] becomes the frame's prefix once the body's length is known: the object is joined
    # once, not joined and then copied again behind its frame.
    parts = [b"", encode_varint(1 << 3 | 2), encode_varint(len(header)), header]
    append = parts.append
    varint = encode_varint
    fixed = len(_ENTRY_TAG) + len(_SIGNATURE_FIELD) + SIGNATURE_SIZE
    for entry, signature in zip(entries, signatures, strict=True):
        entry_length = varint(len(entry))
        append(_RECORD_TAG + varint(fixed + len(entry_length) + len(entry)) + _ENTRY_TAG + entry_length)
        append(entry)
        append(_SIGNATURE_FIELD + signature)
    parts[0] = SEGMENT_MAGIC + sum(map(len, parts)).to_bytes(FRAME_PREFIX_SIZE - len(SEGMENT_MAGIC), "big")
    return b"".join(parts)


class SealedRecord(Protocol):
    """One stored record of a segment: its entry bytes and its signature, as stored."""

    @property
    def entry(self) -> bytes: ...

    @property
    def signature(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    format_version: int
    chain_id: bytes
    first_sequence: int
    record_count: int
    created_unix_nano: int
    records: Sequence[SealedRecord]
    framed_size: int
    appended: int


def _check_top_level(data: bytes, offset: int, end: int) -> None:
    """Walk the body's top-level fields before the protobuf runtime parses it: at most one header, no
    group, at most MAX_SEGMENT_RECORDS records. A tight loop over the tags and lengths only (record
    bodies are skipped), so it costs a small part of the parse it protects.

    Raises:
        MalformedObjectError: the body breaks one of these rules or its framing of fields.
    """
    records = headers = 0
    view = memoryview(data)
    while offset < end:
        tag = data[offset]
        offset += 1
        if tag & 0x80:  # a field number of 16 or more: a tag of several bytes
            tag, offset = read_varint(view, offset - 1, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or wire_type not in (0, 1, 2, 5):
            raise MalformedObjectError(f"segment body does not parse: field {number} of wire type {wire_type}")
        if tag == 0x12:
            records += 1
            if records > MAX_SEGMENT_RECORDS:
                raise MalformedObjectError(f"segment holds more than {MAX_SEGMENT_RECORDS} records (FORMAT.md 4.1)")
        elif tag == 0x0A:
            headers += 1
            if headers > 1:
                # protobuf would merge the two; a writer never writes two (FORMAT.md 5)
                raise MalformedObjectError("segment body does not parse: two headers")
        if wire_type == 2:
            if offset >= end:
                raise MalformedObjectError("segment body does not parse: a field runs past its end")
            length = data[offset]
            offset += 1
            if length & 0x80:
                length, offset = read_varint(view, offset - 1, end)
            offset += length
        elif wire_type == 0:
            _, offset = read_varint(view, offset, end)
        else:
            offset += 8 if wire_type == 1 else 4
        if offset > end:
            raise MalformedObjectError("segment body does not parse: a field runs past its end")


def decode_segment(data: bytes) -> DecodedSegment:
    """Parse a segment object, strictly and within its limits (proto/FORMAT.md 5, 6.1).

    Proto3 wire semantics (fields in any order, unknown fields skipped, the last value of a repeated
    scalar wins), except that two headers, groups and more than MAX_SEGMENT_RECORDS records are
    refused, which no writer produces (FORMAT.md 5 allows that). The top level is walked first, so
    a hostile object of millions of tiny records is refused before the protobuf runtime parses it.

    Raises:
        MalformedObjectError: not a segment object of a supported format version.
    """
    unframed = unframe(SEGMENT_MAGIC, data)
    _check_top_level(data, FRAME_PREFIX_SIZE, unframed.framed_size)
    try:
        segment = archive_pb2.Segment.FromString(unframed.body)
    except DecodeError as exc:
        raise MalformedObjectError(f"segment body does not parse: {exc}") from exc
    header = segment.header
    if header.format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise MalformedObjectError(f"segment format version {header.format_version} is not supported")
    records = segment.records
    return DecodedSegment(
        format_version=header.format_version,
        chain_id=header.chain_id,
        first_sequence=header.first_sequence,
        record_count=header.record_count,
        created_unix_nano=header.created_unix_nano,
        records=records,
        framed_size=unframed.framed_size,
        appended=unframed.appended,
    )
