"""Building a proof file from an archive, reading only what the proof needs (FORMAT.md 16.7).

For records ``first .. last`` of a chain: the newest checkpoint note (found by a binary search over
checkpoint numbers, as the writer finds its newest checkpoint), the hash tiles above level 0 on the
records' inclusion paths, and the segments holding the records and the rest of their level-0 tiles
(whose leaf hashes are the entries' own). A 10-million-record chain needs a handful of objects,
never the chain. The proof is checked against the note's root before it is returned, so damaged
tiles are caught here rather than by the auditor.

The archive is not trusted here any more than by ``verify-proof``: a proof built from a tampered
archive simply fails its checks.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import DataError, MalformedObjectError, UnreadableObjectError
from collector_ext.pb import archive_pb2
from collector_ext.prove.proof_file import Certification, ProofFile, RecordProof
from collector_ext.seal.checkpoint import decode_checkpoint
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, KEY_ID_SLICE, SEQUENCE_SLICE, EntryKind, entry_payload
from collector_ext.seal.framing import MAX_CHECKPOINT_OBJECT_BYTES, MAX_SEGMENT_OBJECT_BYTES
from collector_ext.seal.keys import key_id_for
from collector_ext.seal.layout import (
    TILE_WIDTH,
    NoteKey,
    SegmentKey,
    checkpoint_key,
    parse_note_key,
    parse_segment_key,
    tile_key,
)
from collector_ext.seal.merkle import check_inclusion, inclusion_path, leaf_hash
from collector_ext.seal.note import (
    MAX_NOTE_BYTES,
    NoteError,
    TreeHead,
    add_signatures,
    parse_note,
    parse_tree_head,
)
from collector_ext.seal.segment import decode_segment
from collector_ext.seal.tiles import Tile, decode_tile, inclusion_tiles, node_reader

MAX_RUN = 100_000
MAX_COSIGNATURE_BYTES = 65536  # FORMAT.md 19.1
PARALLEL_READS = 16
SEARCH_FAN = 5


class ProveError(DataError):
    """The archive cannot give a proof of these records (not covered yet, objects missing or damaged)."""


@dataclass(frozen=True, slots=True)
class BuiltProof:
    proof: ProofFile
    tree: TreeHead
    note_key: str
    objects_read: int
    run_segments_read: int = 0  # segments read only to find run key certifications


async def _first_key(store: ArchiveStore, under: str, start_after: str) -> str | None:
    async for key in store.list_keys(under, start_after, page_size=1):
        return key
    return None


async def last_true(probe: Callable[[int], Awaitable[bool]], fan: int = SEARCH_FAN) -> int | None:
    """The largest n >= 0 with ``probe(n)`` true, for a probe true up to some n and false after it
    (None when ``probe(0)`` is false). Probes run ``fan`` at a time: an exponential search for an
    upper bound, then a (fan + 1)-ary search, so a chain of a million checkpoints takes about 8
    rounds of listings instead of 40 one after the other."""
    low: int | None = None
    high: int | None = None
    exponent = 0
    while high is None:
        points = ([0] if low is None else []) + [1 << e for e in range(exponent, exponent + fan)]
        results = await asyncio.gather(*(probe(point) for point in points))
        for point, ok in zip(points, results, strict=True):
            if not ok:
                high = point
                break
            low = point
        if low is None:
            return None
        exponent += fan
    assert low is not None
    while high - low > 1:
        step = -(-(high - low) // (fan + 1))
        points = list(range(low + step, high, step))[:fan]
        results = await asyncio.gather(*(probe(point) for point in points))
        for point, ok in zip(points, results, strict=True):
            if not ok:
                high = point
                break
            low = point
    return low


async def newest_note_key(store: ArchiveStore, chain_id: bytes) -> NoteKey | None:
    """The chain's note with the highest checkpoint number, found by listing one key at a time."""
    under = f"{chain_id.hex()}/notes/"

    async def exists_from(number: int) -> bool:
        # Keys sort by their 12-digit number: the first key after "<number>" has a number >= it.
        return await _first_key(store, under, f"{under}{number:012d}") is not None

    newest = await last_true(exists_from)
    if newest is None:
        return None
    async for key in store.list_keys(f"{under}{newest:012d}-"):
        parsed = parse_note_key(key)
        if parsed is not None:
            return parsed
    return None


async def _get(store: ArchiveStore, key: str, limit: int, what: str) -> bytes:
    try:
        return await store.get(key, limit)
    except UnreadableObjectError as exc:
        raise ProveError(f"{what} {key!r} cannot be read: {exc.reason}") from exc


async def build_proof(
    store: ArchiveStore, chain_id: bytes, first: int, last: int, *, note_key: NoteKey | None = None
) -> BuiltProof:
    """A proof file for records ``first .. last`` of chain ``chain_id``, against its newest note.

    Raises:
        ProveError: no note covers the records, or an object it needs is missing or damaged.
        ArchiveUnavailableError: the archive cannot be listed or read now.
    """
    if first < 0 or last < first:
        raise ProveError(f"no records in the range {first}-{last}")
    if last - first + 1 > MAX_RUN:
        raise ProveError(f"a proof holds at most {MAX_RUN} records; split the range {first}-{last}")
    found = note_key or await newest_note_key(store, chain_id)
    if found is None:
        raise ProveError(
            f"chain {chain_id.hex()} has no checkpoint notes in {store.description}: it was written "
            "without the Merkle tree (FORMAT.md 16), so no record of it can be proven on its own"
        )
    note_bytes = await _get(store, found.key, MAX_NOTE_BYTES, "checkpoint note")
    try:
        tree = parse_tree_head(parse_note(note_bytes).text)
    except NoteError as exc:
        raise ProveError(f"checkpoint note {found.key!r} is damaged: {exc}") from exc
    note_bytes = await _with_cosignatures(store, found.key, note_bytes)
    size = tree.size
    if last >= size:
        raise ProveError(
            f"record {last} of chain {chain_id.hex()} is not covered by a checkpoint yet (the newest, "
            f"{found.key}, covers 0-{size - 1}); try again after the next checkpoint"
        )
    segments = await _chain_segments(store, chain_id)
    reads = asyncio.Semaphore(PARALLEL_READS)
    # Records signed by a run key carry the run key entry that certifies it, proven in the same tree.
    chain_key_id = await _chain_key_id(store, chain_id, found)
    certified_by, scanned = await _run_key_certifications(store, segments, first, last, chain_key_id)
    proven = sorted(set(range(first, last + 1)) | set(certified_by.values()))
    wanted = sorted({ref for index in proven for ref in inclusion_tiles(index, size)})
    upper = [ref for ref in wanted if ref[0] > 0]
    level0 = [ref for ref in wanted if ref[0] == 0]
    # Leaves needed: the records themselves and the whole of every level-0 tile on their paths.
    spans = [(first, last + 1)] + [(d, d + 1) for d in set(certified_by.values())]
    spans += [(i * TILE_WIDTH, i * TILE_WIDTH + width) for _, i, width in level0]
    segment_keys = _segments_over(segments, spans)

    async def read_tile(level: int, index: int, width: int) -> Tile:
        key = tile_key("", chain_id, level, index, width)
        async with reads:
            data = await _get(store, key, width * 32, "hash tile")
        try:
            return decode_tile(level, index, width, data)
        except ValueError as exc:
            raise ProveError(f"hash tile {key!r} is damaged: {exc}") from exc

    async def read_segment(key: str) -> bytes:
        if key in scanned:
            return scanned[key]
        async with reads:
            return await _get(store, key, MAX_SEGMENT_OBJECT_BYTES, "segment")

    tiles_read, segments_read = await asyncio.gather(
        asyncio.gather(*(read_tile(*ref) for ref in upper)),
        asyncio.gather(*(read_segment(key) for key in segment_keys)),
    )
    needed = {s for start, end in spans for s in range(start, end)}
    records: dict[int, tuple[bytes, bytes]] = {}
    for key, data in zip(segment_keys, segments_read, strict=True):
        try:
            segment = decode_segment(data)
        except MalformedObjectError as exc:
            raise ProveError(f"segment {key!r} is damaged: {exc}") from exc
        # Records are stored in sequence order from first_sequence: look at the needed positions only
        # (the header of each says which record it is; a record elsewhere is simply not found).
        stored = segment.records
        for sequence in needed:
            position = sequence - segment.first_sequence
            if 0 <= position < len(stored):
                entry = stored[position].entry
                if len(entry) >= ENTRY_HEADER_SIZE and int.from_bytes(entry[SEQUENCE_SLICE], "big") == sequence:
                    records.setdefault(sequence, (entry, stored[position].signature))
    tiles = {(t.level, t.index): t for t in tiles_read}
    for _, index, width in level0:
        start = index * TILE_WIDTH
        missing = [s for s in range(start, start + width) if s not in records]
        if missing:
            raise ProveError(f"records {missing[0]}.. of chain {chain_id.hex()} are not in the archive's segments")
        tiles[(0, index)] = Tile(0, index, tuple(leaf_hash(records[s][0]) for s in range(start, start + width)))
    reader = node_reader(size, tiles)

    def path_of(index: int) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        if index not in records:
            raise ProveError(f"record {index} of chain {chain_id.hex()} is not in the archive's segments")
        entry, signature = records[index]
        path = inclusion_path(index, size, reader)
        check = check_inclusion(index, size, leaf_hash(entry), path, tree.root)
        if not check.ok:
            raise ProveError(
                f"the archive's tiles or segments do not match checkpoint note {found.key!r} for record {index}: "
                f"{check.problem} (run `collector-ext verify` on the archive)"
            )
        return entry, signature, tuple(path)

    proofs = []
    for index in range(first, last + 1):
        certified_at = certified_by.get(index)
        certification = None if certified_at is None else Certification(certified_at, *path_of(certified_at))
        proofs.append(RecordProof(index, *path_of(index), certification))
    run_only = len(scanned.keys() - set(segment_keys))
    objects_read = 2 + len(upper) + len(segment_keys) + run_only
    return BuiltProof(ProofFile(tuple(proofs), note_bytes), tree, found.key, objects_read, run_only)


async def _with_cosignatures(store: ArchiveStore, note_key: str, note: bytes) -> bytes:
    """The note with the witness cosignature lines stored beside it (FORMAT.md 19.1) appended, as a
    tlog-proof carries them. They are not checked here (a verifier that pins witnesses does); lines
    that do not parse as signature lines are left out."""
    async for key in store.list_keys(f"{note_key}.cosig."):
        try:
            lines = (await store.get(key, MAX_COSIGNATURE_BYTES)).splitlines(keepends=True)
            note = add_signatures(note, lines)
        except (UnreadableObjectError, NoteError):
            continue
    return note


async def _chain_segments(store: ArchiveStore, chain_id: bytes) -> list[SegmentKey]:
    """The chain's segment keys in sequence order, one per sequence range (one listing pass)."""
    keys: dict[tuple[int, int], SegmentKey] = {}
    async for key in store.list_keys(f"{chain_id.hex()}/segments/"):
        parsed = parse_segment_key(key)
        if parsed is not None:
            keys.setdefault((parsed.first_sequence, parsed.last_sequence), parsed)
    return [keys[k] for k in sorted(keys)]


def _segments_over(segments: Sequence[SegmentKey], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Keys of the segments that hold any sequence number in ``spans``."""
    return [s.key for s in segments if any(s.first_sequence < end and s.last_sequence >= start for start, end in spans)]


async def _chain_key_id(store: ArchiveStore, chain_id: bytes, note: NoteKey) -> bytes:
    """The key id the checkpoint of ``note`` names: the key the chain is bound to, which signs records
    itself or certifies the run keys that do. Only a hint for where to look (verify-proof trusts none
    of it): when the checkpoint cannot be read, no key is known and every record's run is looked for."""
    key = checkpoint_key("", chain_id, note.checkpoint_number, note.last_sequence)
    try:
        return decode_checkpoint(await _get(store, key, MAX_CHECKPOINT_OBJECT_BYTES, "checkpoint")).checkpoint.key_id
    except (ProveError, MalformedObjectError):
        return b""


class _RunScan:
    """What the segments read so far say about the runs around records ``first .. last``."""

    def __init__(self, store: ArchiveStore, first: int, last: int) -> None:
        self.store, self.first, self.last = store, first, last
        self.boundaries: dict[int, tuple[int, bytes]] = {}  # sequence -> (kind, entry), not log records
        self.record_keys: dict[int, bytes] = {}  # sequence -> key id of the log records in the range
        self.read: dict[str, bytes] = {}  # segment key -> its bytes, for the proof's own leaves

    async def add(self, segment_key: SegmentKey) -> bytes | None:
        """Read a segment (once); the key id of its last entry."""
        data = await _get(self.store, segment_key.key, MAX_SEGMENT_OBJECT_BYTES, "segment")
        self.read[segment_key.key] = data
        try:
            segment = decode_segment(data)
        except MalformedObjectError as exc:
            raise ProveError(f"segment {segment_key.key!r} is damaged: {exc}") from exc
        last_key: bytes | None = None
        for stored in segment.records:
            entry = stored.entry
            if len(entry) < ENTRY_HEADER_SIZE:
                continue
            sequence = int.from_bytes(entry[SEQUENCE_SLICE], "big")
            last_key = entry[KEY_ID_SLICE]
            if entry[2] != EntryKind.LOG_RECORD:
                self.boundaries[sequence] = (entry[2], entry)
            elif self.first <= sequence <= self.last:
                self.record_keys[sequence] = entry[KEY_ID_SLICE]
        return last_key

    def opened(self) -> bool:
        """A boundary is known before the range's first log record (or it has none)."""
        lowest = min(self.record_keys, default=None)
        return lowest is None or any(b < lowest for b in self.boundaries)

    def certifications(self) -> dict[int, int]:
        certified_by: dict[int, int] = {}
        boundaries = sorted(self.boundaries)
        for sequence, key_id in self.record_keys.items():
            at = bisect.bisect_left(boundaries, sequence)
            if at == 0 or self.boundaries[boundaries[at - 1]][0] != EntryKind.RUN_KEY:
                continue
            opened_at = boundaries[at - 1]
            try:
                payload = archive_pb2.RunKeyPayload.FromString(entry_payload(self.boundaries[opened_at][1]))
            except DecodeError:
                continue  # a damaged certification: the record is proven without one and fails its check
            if len(payload.run_public_key) == 32 and key_id_for(payload.run_public_key) == key_id:
                certified_by[sequence] = opened_at
        return certified_by


async def _run_key_certifications(
    store: ArchiveStore, segments: Sequence[SegmentKey], first: int, last: int, chain_key_id: bytes
) -> tuple[dict[int, int], dict[str, bytes]]:
    """For each log record in ``first .. last`` signed by a run key: the sequence number of the run key
    entry that certified that key and opened the record's run (FORMAT.md 10.3), and the segments read
    to find them (key -> bytes).

    The segments holding the range are read first; when every record there is signed by the chain's
    key (``chain_key_id``) nothing more is needed. Otherwise the run's opening entry lies before them.
    A writer signs all of a run's records with its run key, so the segments whose last entry is signed
    by the first record's key form a contiguous stretch ending at the range: a binary search finds its
    start in a logarithmic number of reads, and the scan goes back from there to the opening entry.
    Should that guess not give every run-key record its certification (records of a run signed
    otherwise), the segments are read backwards one by one instead."""
    scan = _RunScan(store, first, last)
    covering = [s for s in segments if s.first_sequence <= last and s.last_sequence >= first]
    for segment_key in reversed(covering):
        await scan.add(segment_key)
    if all(k == chain_key_id for k in scan.record_keys.values()) or scan.opened():
        return scan.certifications(), scan.read
    lowest = min(scan.record_keys)
    run_key_id = scan.record_keys[lowest]
    before = [s for s in segments if s.last_sequence < lowest and s.key not in scan.read]
    low, high = 0, len(before)
    while low < high:
        middle = (low + high) // 2
        if await scan.add(before[middle]) == run_key_id:
            high = middle
        else:
            low = middle + 1
    # Segments probed further back may hold older runs' boundaries: only one at or after the segment
    # reached counts as the opening of this run.
    for segment_key in reversed(before[: low + 1]):
        if segment_key.key not in scan.read:
            await scan.add(segment_key)
        if any(segment_key.first_sequence <= b < lowest for b in scan.boundaries):
            break
    certified_by = scan.certifications()
    unsigned = [q for q, k in scan.record_keys.items() if k != chain_key_id and q not in certified_by]
    if unsigned:
        for segment_key in reversed(before):
            if segment_key.key not in scan.read:
                await scan.add(segment_key)
            if scan.opened() and set(scan.certifications()) >= set(unsigned):
                break
        certified_by = scan.certifications()
    return certified_by, scan.read
