"""The per-record half of checking a segment, done where it can run in parallel.

Checking a clean segment is mostly per-record work that needs nothing from the segments before it:
parse, hash every entry, follow the links inside the segment, hash the object. ``precheck_segment``
does exactly that and returns a small summary: where the segment starts (sequence and previous
hash), where it ends (last hash), its digest and the entry hashes at the sequence numbers a
checkpoint claims. It is a pure function of the bytes, so the verifier runs it in worker processes
while the event loop downloads, and only the summary crosses back.

The checker then needs O(1) work per segment to accept it (``ChainChecker.add_prechecked_segment``).
Anything the summary does not vouch for (a segment that is not a plain run of log records, a digest
no checkpoint recorded, a broken link) goes through the full per-record check instead, so this
changes how fast a clean archive verifies, never what any archive's report says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    ENTRY_HASH_PREFIX,
    FORMAT_VERSION,
    KEY_ID_SLICE,
    PREVIOUS_HASH_SLICE,
    SEQUENCE_SLICE,
    EntryKind,
)
from collector_ext.seal.segment import decode_segment

# Version 1, kind LOG_RECORD, reserved 0: the first four bytes of every ordinary entry.
PLAIN_HEADER_START = FORMAT_VERSION.to_bytes(2, "big") + bytes([EntryKind.LOG_RECORD, 0])


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """What ``precheck_segment`` found in one segment object."""

    framed_sha256: bytes
    framed_size: int
    appended: int
    chain_id: bytes  # from the segment header
    header_first_sequence: int
    header_record_count: int
    record_count: int
    # True when every record is an ordinary log-record entry of ``chain_id``, with consecutive
    # sequence numbers from ``first_sequence`` and each linked to the one before it in the segment.
    plain_run: bool
    first_sequence: int
    first_previous_hash: bytes
    last_hash: bytes
    last_entry: bytes
    last_signature: bytes
    key_ids: frozenset[bytes]
    claimed_hashes: dict[int, bytes]  # entry hash at each asked-for sequence inside the run


def precheck_segment(data: bytes, claimed_sequences: Collection[int] = ()) -> SegmentSummary | None:
    """Summarise a segment object; None when it does not even parse (the full check reports that)."""
    try:
        segment = decode_segment(data)
    except MalformedObjectError:
        return None
    records = segment.records
    framed = data if not segment.appended else data[: segment.framed_size]
    if not records:
        return None
    base = hashlib.sha256(ENTRY_HASH_PREFIX)
    chain_id = segment.chain_id
    first = records[0].entry
    plain = len(first) >= 76
    expected = int.from_bytes(first[SEQUENCE_SLICE], "big") if plain else 0
    first_sequence = expected
    previous = first[PREVIOUS_HASH_SLICE] if plain else b""
    key_ids: set[bytes] = set()
    claimed: dict[int, bytes] = {}
    claims = set(claimed_sequences)
    key_id = b""
    for record in records:
        entry = record.entry
        if (
            entry[:4] != PLAIN_HEADER_START
            or entry[4:20] != chain_id
            or entry[SEQUENCE_SLICE] != expected.to_bytes(8, "big")
            or entry[PREVIOUS_HASH_SLICE] != previous
        ):
            plain = False
            break
        if entry[KEY_ID_SLICE] != key_id:
            key_id = entry[KEY_ID_SLICE]
            key_ids.add(key_id)
        digest = base.copy()
        digest.update(entry)
        previous = digest.digest()
        if expected in claims:
            claimed[expected] = previous
        expected += 1
    last = records[-1]
    return SegmentSummary(
        framed_sha256=hashlib.sha256(framed).digest(),
        framed_size=segment.framed_size,
        appended=segment.appended,
        chain_id=chain_id,
        header_first_sequence=segment.first_sequence,
        header_record_count=segment.record_count,
        record_count=len(records),
        plain_run=plain,
        first_sequence=first_sequence,
        first_previous_hash=first[PREVIOUS_HASH_SLICE] if len(first) >= 76 else b"",
        last_hash=previous if plain else b"",
        last_entry=last.entry,
        last_signature=last.signature,
        key_ids=frozenset(key_ids),
        claimed_hashes=claimed,
    )


class LazyRecords(Sequence[archive_pb2.SealedRecord]):
    """A segment's records, parsed from its bytes only if someone looks at them (the resend
    tracker, around a restart mark); its length is known without parsing."""

    __slots__ = ("_count", "_data", "_records")

    def __init__(self, data: bytes, count: int) -> None:
        self._data = data
        self._count = count
        self._records: Sequence[archive_pb2.SealedRecord] | None = None

    def _parsed(self) -> Sequence[archive_pb2.SealedRecord]:
        if self._records is None:
            self._records = decode_segment(self._data).records
        return self._records

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> archive_pb2.SealedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[archive_pb2.SealedRecord]: ...

    def __getitem__(self, index: int | slice) -> archive_pb2.SealedRecord | Sequence[archive_pb2.SealedRecord]:
        return self._parsed()[index]

    def __iter__(self) -> Iterator[archive_pb2.SealedRecord]:
        return iter(self._parsed())
