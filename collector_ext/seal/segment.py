"""Segment objects: consecutive sealed entries of one chain, written to the archive as one object.

The body is the ``Segment`` message of archive.proto. Encoding is hand-written (one
length-delimited SealedRecord per entry) because it runs for every record; decoding uses the
protobuf runtime. A segment says nothing about its own authenticity: its SHA-256 is recorded in the
next signed checkpoint, and each entry carries its own signature.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast, overload

from google.protobuf.message import DecodeError

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import FORMAT_VERSION, SIGNATURE_SIZE, SUPPORTED_FORMAT_VERSIONS
from collector_ext.seal.framing import FRAME_PREFIX_SIZE, MAX_SEGMENT_RECORDS, SEGMENT_MAGIC, unframed_extent
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


def _buffer(view: memoryview) -> bytes:
    """A view for the protobuf runtime's parsers, which read any buffer (upb and the pure-Python
    runtime alike) though their stubs say bytes: no copy of the object's bytes is made."""
    return cast(bytes, view)


# A segment's records are parsed a chunk at a time: at most this many records, and at most about
# this many bytes of the object, per chunk (a chunk always holds at least one record).
CHUNK_RECORDS = 4096
CHUNK_BYTES = 1024 * 1024
# Segments whose body is at most this big keep their parsed chunks once parsed (a typical segment:
# parsed once); larger ones parse a chunk again each time it is asked for, so a maximum-size segment
# costs its object's bytes plus a chunk or two, not several times its size.
KEEP_PARSED_BYTES = 16 * 1024 * 1024


class SegmentRecords(Sequence[SealedRecord]):
    """The records of one segment object, parsed by the protobuf runtime a chunk at a time.

    The top level of the body is walked by hand once (``decode_segment``), which gives each record
    field's offset; a chunk is a run of consecutive top-level fields, parsed as a ``Segment`` body of
    its own. Protobuf parses a body field by field and appends repeated fields in order, so the
    records of the chunks, one after another, are exactly the records of the whole body: the same
    bytes, under the same proto3 rules (fields in any order, unknown fields skipped, the last of two
    values of a field wins).
    """

    __slots__ = ("_bounds", "_data", "_kept", "_starts", "chunk_firsts")

    def __init__(self, data: bytes, starts: array[int], body_end: int) -> None:
        self._data = memoryview(data)
        self._starts = starts  # the offset of each record field in ``data``, in stored order
        firsts: list[int] = []
        bounds: list[int] = []
        index, count = 0, len(starts)
        while index < count:
            firsts.append(index)
            bounds.append(starts[index])
            limit = starts[index] + CHUNK_BYTES
            stop = min(index + CHUNK_RECORDS, count)
            index += 1
            while index < stop and starts[index] < limit:
                index += 1
        bounds.append(body_end)
        self.chunk_firsts: tuple[int, ...] = tuple(firsts)  # index of each chunk's first record
        self._bounds = tuple(bounds)  # byte offsets: chunk k is data[bounds[k]:bounds[k + 1]]
        self._kept: list[Sequence[SealedRecord] | None] | None = (
            [None] * len(firsts) if body_end - (starts[0] if count else body_end) <= KEEP_PARSED_BYTES else None
        )

    def chunk(self, index: int) -> Sequence[SealedRecord]:
        """The records of chunk ``index``, parsed (or as parsed before, for a small segment).

        Raises:
            MalformedObjectError: the chunk does not parse (``decode_segment`` has parsed every chunk
                once, so this happens only to a caller that built the object by hand).
        """
        kept = self._kept
        if kept is not None and (records := kept[index]) is not None:
            return records
        body = self._data[self._bounds[index] : self._bounds[index + 1]]
        try:
            records = archive_pb2.Segment.FromString(_buffer(body)).records
        except DecodeError as exc:
            raise MalformedObjectError(f"segment body does not parse: {exc}") from exc
        if kept is not None:
            kept[index] = records
        return records

    @property
    def keeps_parsed(self) -> bool:
        """Whether parsed chunks are kept (a segment of at most KEEP_PARSED_BYTES)."""
        return self._kept is not None

    def chunks(self) -> Iterator[tuple[int, Sequence[SealedRecord]]]:
        """(index of its first record, records) of each chunk, in stored order."""
        for index, first in enumerate(self.chunk_firsts):
            yield first, self.chunk(index)

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[SealedRecord]:
        for _, records in self.chunks():
            yield from records

    @overload
    def __getitem__(self, index: int) -> SealedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[SealedRecord]: ...

    def __getitem__(self, index: int | slice) -> SealedRecord | Sequence[SealedRecord]:
        if isinstance(index, slice):
            return [self.record(i) for i in range(*index.indices(len(self._starts)))]
        return self.record(index)

    def record(self, index: int) -> SealedRecord:
        """Record ``index`` (negative counts from the end), parsed on its own."""
        count = len(self._starts)
        if not -count <= index < count:
            raise IndexError("segment record index out of range")
        index %= count
        chunk = bisect.bisect_right(self.chunk_firsts, index) - 1
        kept = self._kept
        if kept is not None and (records := kept[chunk]) is not None:
            return records[index - self.chunk_firsts[chunk]]
        data = self._data
        offset = self._starts[index]
        _, offset = read_varint(data, offset, len(data))  # the record field's tag (0x12, possibly over-long)
        length, offset = read_varint(data, offset, len(data))
        try:
            return archive_pb2.SealedRecord.FromString(_buffer(data[offset : offset + length]))
        except DecodeError as exc:  # pragma: no cover - every chunk parsed in decode_segment
            raise MalformedObjectError(f"segment body does not parse: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    format_version: int
    chain_id: bytes
    first_sequence: int
    record_count: int
    created_unix_nano: int
    records: SegmentRecords
    framed_size: int
    appended: int


def _index_top_level(data: bytes, offset: int, end: int) -> tuple[memoryview | None, array[int]]:
    """Walk the body's top-level fields before the protobuf runtime parses any of it: at most one
    header, no group, at most MAX_SEGMENT_RECORDS records. A tight loop over the tags and lengths only
    (record bodies are skipped), so it costs a small part of the parse it protects. Returns the header
    field's value (None: no header) and the offset of each record field.

    Raises:
        MalformedObjectError: the body breaks one of these rules or its framing of fields.
    """
    starts = array("Q")
    add = starts.append
    header: memoryview | None = None
    view = memoryview(data)
    room = MAX_SEGMENT_RECORDS
    while offset < end:
        tag = data[offset]
        if tag == 0x12 and offset + 3 <= end:
            # The usual field, first: a record whose length takes one or two bytes (under 16 KiB).
            length = data[offset + 1]
            if length < 0x80:
                after = offset + 2 + length
            elif data[offset + 2] < 0x80:
                after = offset + 3 + ((length & 0x7F) | data[offset + 2] << 7)
            else:
                after = -1
            if after >= 0:
                if not room:
                    raise MalformedObjectError(f"segment holds more than {MAX_SEGMENT_RECORDS} records (FORMAT.md 4.1)")
                room -= 1
                add(offset)
                offset = after
                continue
        field_start = offset
        offset += 1
        if tag & 0x80:  # a field number of 16 or more: a tag of several bytes
            tag, offset = read_varint(view, offset - 1, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or wire_type not in (0, 1, 2, 5):
            raise MalformedObjectError(f"segment body does not parse: field {number} of wire type {wire_type}")
        if wire_type == 2:
            if offset >= end:
                raise MalformedObjectError("segment body does not parse: a field runs past its end")
            length, offset = read_varint(view, offset, end)
            if tag == 0x12:
                if not room:
                    raise MalformedObjectError(f"segment holds more than {MAX_SEGMENT_RECORDS} records (FORMAT.md 4.1)")
                room -= 1
                add(field_start)
            elif tag == 0x0A:
                if header is not None:
                    # protobuf would merge the two; a writer never writes two (FORMAT.md 5)
                    raise MalformedObjectError("segment body does not parse: two headers")
                header = view[offset : offset + length]
            offset += length
        elif wire_type == 0:
            _, offset = read_varint(view, offset, end)
        else:
            offset += 8 if wire_type == 1 else 4
    if offset > end:
        # Fields are only skipped on the way, so one that runs past the end is found here.
        raise MalformedObjectError("segment body does not parse: a field runs past its end")
    return header, starts


def decode_segment(data: bytes) -> DecodedSegment:
    """Parse a segment object, strictly and within its limits (proto/FORMAT.md 5, 6.1).

    Proto3 wire semantics (fields in any order, unknown fields skipped, the last value of a repeated
    scalar wins), except that two headers, groups and more than MAX_SEGMENT_RECORDS records are
    refused, which no writer produces (FORMAT.md 5 allows that). The top level is walked first, so
    a hostile object of millions of tiny records is refused before the protobuf runtime parses it.
    Every record is parsed here once, a chunk at a time (``SegmentRecords``), so an object that does
    not parse is refused before anything reads its records; a large object's chunks are not kept.

    Raises:
        MalformedObjectError: not a segment object of a supported format version.
    """
    framed_size, appended = unframed_extent(SEGMENT_MAGIC, data)
    header_field, starts = _index_top_level(data, FRAME_PREFIX_SIZE, framed_size)
    try:
        header = archive_pb2.SegmentHeader.FromString(_buffer(header_field) if header_field is not None else b"")
    except DecodeError as exc:
        raise MalformedObjectError(f"segment body does not parse: {exc}") from exc
    if header.format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise MalformedObjectError(f"segment format version {header.format_version} is not supported")
    records = SegmentRecords(data, starts, framed_size)
    for index in range(len(records.chunk_firsts)):
        records.chunk(index)
    return DecodedSegment(
        format_version=header.format_version,
        chain_id=header.chain_id,
        first_sequence=header.first_sequence,
        record_count=header.record_count,
        created_unix_nano=header.created_unix_nano,
        records=records,
        framed_size=framed_size,
        appended=appended,
    )
