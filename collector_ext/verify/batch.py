"""Per-record work of the verifier done a segment at a time: comparisons of header fields run by the
interpreter's C code (``all`` over ``map``, stopping at the first difference and holding one slice at a
time) instead of Python bytecode per record, and hashes in one tight loop each.

Each function computes exactly what its one-record counterpart computes (``seal.entry.entry_hash``,
``seal.merkle.leaf_hash``, ``CompactRange.extend``, the header comparisons of FORMAT.md 13.3 step 8);
tests/unit/verify/test_batch.py holds them to that on clean and altered input. None of them decides
anything alone: a caller that gets ``False`` takes the record-by-record path, which names the finding.

What this does not do: parse anything, or read the archive.
"""

from __future__ import annotations

import itertools
import operator
import struct
from collections.abc import Iterator, Sequence
from typing import overload

from collector_ext.seal.entry import ENTRY_HASH_PREFIX, ENTRY_HEADER_SIZE, PREVIOUS_HASH_SLICE, SEQUENCE_SLICE
from collector_ext.seal.merkle import LEAF_PREFIX, NODE_PREFIX, CompactRange, prefixed_hashes
from collector_ext.seal.segment import SealedRecord, SegmentRecords

_ENTRY = operator.attrgetter("entry")
_SEQUENCE = operator.itemgetter(SEQUENCE_SLICE)
_PREVIOUS_HASH = operator.itemgetter(PREVIOUS_HASH_SLICE)
_U64 = struct.Struct(">Q").pack
MAX_SEQUENCE = 2**64 - 1


def entries_of(records: Sequence[SealedRecord]) -> list[bytes]:
    """The records' entry bytes, in stored order."""
    if isinstance(records, StoredRecords):
        return records.entries
    return list(map(_ENTRY, records))


class StoredRecords(Sequence[SealedRecord]):
    """A segment's stored records, with their entry bytes taken out once (each read of a parsed
    record's field makes a new bytes object) and their entry hashes computed once, when first asked."""

    __slots__ = ("_hashes", "_records", "entries")

    def __init__(self, records: Sequence[SealedRecord]) -> None:
        self._records = records
        self.entries = list(map(_ENTRY, records))
        self._hashes: list[bytes] | None = None

    def piece(self, start: int, stop: int) -> StoredRecords:
        """Records ``start:stop`` of these, sharing their entries and hashes (no copy of an entry)."""
        piece = StoredRecords.__new__(StoredRecords)
        piece._records = self._records[start:stop]
        piece.entries = self.entries[start:stop]
        piece._hashes = self._hashes[start:stop] if self._hashes is not None else None
        return piece

    @property
    def hashes(self) -> list[bytes]:
        """The entry hash (FORMAT.md 9) of each entry."""
        if self._hashes is None:
            self._hashes = entry_hashes(self.entries)
        return self._hashes

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> SealedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[SealedRecord]: ...

    def __getitem__(self, index: int | slice) -> SealedRecord | Sequence[SealedRecord]:
        return self._records[index]


class StoredChunks:
    """A segment's records as ``StoredRecords`` a chunk at a time (``SegmentRecords``), in stored order.

    A small segment keeps each chunk's entries and hashes once made, so the walk's passes over it
    (checks, then the observers) take them out once; a large one makes them again on each pass and
    holds one chunk at a time.
    """

    __slots__ = ("_kept", "records")

    def __init__(self, records: SegmentRecords) -> None:
        self.records = records
        self._kept: dict[int, StoredRecords] | None = {} if records.keeps_parsed else None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[tuple[int, StoredRecords]]:
        """(index of its first record, its records) of each chunk."""
        kept = self._kept
        for index, first in enumerate(self.records.chunk_firsts):
            stored = kept.get(index) if kept is not None else None
            if stored is None:
                stored = StoredRecords(self.records.chunk(index))
                if kept is not None:
                    kept[index] = stored
            yield first, stored


def entry_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """The entry hash (FORMAT.md 9) of each entry."""
    return prefixed_hashes(ENTRY_HASH_PREFIX, entries)


def leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """The RFC 6962 leaf hash (FORMAT.md 16.1) of each entry."""
    return prefixed_hashes(LEAF_PREFIX, entries)


def same_slices(entries: Sequence[bytes], start: int, end: int, expected: bytes) -> bool:
    """Whether ``entry[start:end] == expected`` for every entry (``expected`` is ``end - start`` bytes;
    an entry that ends before ``end`` gives a shorter slice, which never compares equal). Stops at the
    first that differs; holds one slice at a time."""
    if len(expected) != end - start:
        raise ValueError("expected must be as long as the slice")
    return all(map(expected.__eq__, map(operator.itemgetter(slice(start, end)), entries)))


def all_headers(entries: Sequence[bytes]) -> bool:
    """Whether every entry is at least as long as the fixed header (FORMAT.md 7.1)."""
    return not entries or min(map(len, entries)) >= ENTRY_HEADER_SIZE


def consecutive_from(entries: Sequence[bytes], first: int) -> bool:
    """Whether every entry has a full header and the entries' sequence numbers are ``first``,
    ``first + 1``, ... in stored order."""
    count = len(entries)
    if not all_headers(entries) or first < 0 or first + count - 1 > MAX_SEQUENCE:
        return False
    return all(map(bytes.__eq__, map(_SEQUENCE, entries), map(_U64, range(first, first + count))))


def links_continue(entries: Sequence[bytes], hashes: Sequence[bytes], previous: bytes) -> bool:
    """Whether each entry's ``previous_hash`` is ``previous`` for the first, then the entry hash of the
    entry before it (``hashes``: the entries' hashes; FORMAT.md 10 rule 2)."""
    if not entries:
        return True
    links = map(_PREVIOUS_HASH, entries)
    return next(links) == previous and all(map(bytes.__eq__, links, itertools.islice(hashes, len(hashes) - 1)))


def extend_range(tree: CompactRange, leaves: Sequence[bytes]) -> CompactRange:
    """``tree.extend(leaves)``, hashing the new interior nodes a level at a time.

    At level ``k`` the new nodes are paired from an even index: the compact range's node of level ``k``
    (when bit ``k`` of the old size is set) goes in front of them, and an odd one left at the end is the
    new range's node of that level. The nodes above the last level reached are unchanged.
    """
    if not leaves:
        return tree
    old = tree.size
    waiting = {}  # level -> the old range's node of that level
    levels = [level for level in range(old.bit_length()) if old >> level & 1]
    for level, node in zip(levels, reversed(tree.nodes), strict=True):
        waiting[level] = node
    kept: dict[int, bytes] = {}
    current = list(leaves)
    level = 0
    while current:
        if level in waiting:
            current.insert(0, waiting.pop(level))
        if len(current) & 1:
            kept[level] = current.pop()
        current = prefixed_hashes(NODE_PREFIX, map(bytes.__add__, current[0::2], current[1::2]))
        level += 1
    kept.update(waiting)
    return CompactRange(old + len(leaves), tuple(kept[level] for level in sorted(kept, reverse=True)))
