"""Drives the pure checker over a real archive: lists, reads ahead within a memory budget, checks,
reports progress, and remembers what was verified (``--state``).

Per chain, checkpoint objects are fed just ahead of the segments they describe and segment objects
are fetched a few at a time ahead of the one being checked (bounded in count and in bytes, by the
sizes the listing gives); checking runs on a worker thread, so reading and hashing overlap. Record
signatures that must be checked are spread over a thread pool (pyca/cryptography releases the GIL
while verifying). Every object that cannot be read as an archive object (not a regular file, larger
than the format allows, gone) becomes a finding; only a store that cannot be listed or read at all
stops the run.

With a remembered state, each known chain is listed and read only after its newest verified
checkpoint, which must still be there unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from collector_ext.deliver.archive import ArchiveStore, ListedObject
from collector_ext.errors import (
    ArchiveUnavailableError,
    ConfigurationError,
    MalformedObjectError,
    UnreadableObjectError,
)
from collector_ext.seal.checkpoint import decode_checkpoint
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, KEY_ID_SLICE, SEQUENCE_SLICE, SIGNATURE_SIZE
from collector_ext.seal.framing import MAX_CHECKPOINT_OBJECT_BYTES, MAX_SEGMENT_OBJECT_BYTES
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import (
    TILE_WIDTH,
    CheckpointKey,
    NoteKey,
    SegmentKey,
    WitnessObjectKey,
    checkpoint_key,
    parse_checkpoint_key,
    parse_note_key,
    parse_segment_key,
    parse_tile_key,
    parse_witness_object_key,
    tile_key,
)
from collector_ext.seal.merkle import CompactRange, check_consistency, consistency_proof
from collector_ext.seal.note import MAX_NOTE_BYTES
from collector_ext.seal.segment import SealedRecord, decode_segment
from collector_ext.seal.tiles import Tile, consistency_tiles, decode_tile, node_reader
from collector_ext.verify.checkpoints import ResumePoint, UnreadableObject
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, VerificationReport
from collector_ext.verify.keys import Keyring
from collector_ext.verify.links import ChainChecker, ChainStart, RecordObserver, SignatureBatchChecker
from collector_ext.verify.shard import (
    ChainPart,
    ListedSegmentKey,
    RangePart,
    SeamState,
    SegmentRange,
    ShardReport,
    ShardSettings,
    ShardSpec,
    chain_parts,
    listing_digest,
    plan_ranges,
)
from collector_ext.verify.state import (
    VerifierState,
    next_state,
    remembered_tree,
    rollback_finding,
    vanished_chains,
)
from collector_ext.verify.supersede import relate_archive, relate_chains
from collector_ext.verify.tree import TreeChecker, VerifiedNote
from collector_ext.verify.witnesses import (
    WitnessPolicy,
    authenticate_witnessed,
    check_outside_evidence,
    compare_witnessed,
    read_outside_evidence,
)

ProgressCallback = Callable[[int, int], None]  # (objects done, objects in all)

DAY_NS = 86_400 * 1_000_000_000
# Segments up to this size are checked on the event loop's thread.
INLINE_CHECK_BYTES = 256 * 1024


class EmptyArchiveError(ArchiveUnavailableError):
    """No collector-ext object was found where the archive was said to be."""


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    check_all_signatures: bool = False
    read_ahead: int = 8
    # Bytes of segment objects held at once, the one being checked included (one object is always
    # read, whatever its size): a hostile archive of maximum-size segments holds one at a time.
    read_ahead_bytes: int = 64 * 1024 * 1024
    signature_threads: int = 0  # 0: one per CPU
    # Report resent log records anywhere in a chain, not only after restart marks (a little work per
    # record; see verify.resends).
    report_resends: bool = False
    # The archive this is (what version 2 chains must name); None: taken from the state, if any.
    archive_id: str | None = None
    # Warn about an open chain (newest checkpoint not final) whose newest checkpoint is older.
    stale_after_seconds: float | None = None
    now_unix_nano: int | None = None  # for tests; default: the clock
    # Pinned witness keys and TSA certificate, and what is required of them (FORMAT.md 19.4).
    witness_policy: WitnessPolicy | None = None
    # What pinned witnesses hold for this archive's chains (verify --witness-url), checked against it.
    witnessed_notes: tuple[bytes, ...] = ()
    # verify --shard: check only this shard's chains and leave relating chains to the merge (verify.shard).
    shard: ShardSpec | None = None


@dataclass(frozen=True)
class ArchiveCheck:
    """A verification run's report and, for ``--state``, the state to remember after it."""

    report: VerificationReport
    state: VerifierState
    # With VerifyOptions.shard: the shard's part, for verify.merge (the report then holds the shard's
    # chains only, not yet related to the other shards' chains).
    shard: ShardReport | None = None


@dataclass
class _Chain:
    prefix: str  # what precedes "<chain>/" in its keys
    segments: list[tuple[SegmentKey, ListedObject]] = field(default_factory=list)
    checkpoints: list[tuple[CheckpointKey, ListedObject]] = field(default_factory=list)
    notes: list[tuple[NoteKey, ListedObject]] = field(default_factory=list)
    # Witness cosignatures and time-stamp replies beside the notes (FORMAT.md 19.1).
    outside: list[tuple[WitnessObjectKey, ListedObject]] = field(default_factory=list)


@dataclass
class _Listing:
    chains: dict[str, _Chain] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(c.segments) + len(c.checkpoints) + len(c.notes) for c in self.chains.values())

    def add(self, listed: ListedObject) -> None:
        segment = parse_segment_key(listed.key)
        if segment is not None:
            self._chain(segment.chain_id_hex, listed.key).segments.append((segment, listed))
            return
        checkpoint = parse_checkpoint_key(listed.key)
        if checkpoint is not None:
            self._chain(checkpoint.chain_id_hex, listed.key).checkpoints.append((checkpoint, listed))
            return
        note = parse_note_key(listed.key)
        if note is not None:
            self._chain(note.chain_id_hex, listed.key).notes.append((note, listed))
            return
        outside = parse_witness_object_key(listed.key)
        if outside is not None:
            self._chain(outside.chain_id_hex, listed.key).outside.append((outside, listed))
            return
        if parse_tile_key(listed.key) is not None and not listed.problem:
            return  # hash tiles: an index for proofs, not read by the verifier (FORMAT.md 16.5)
        message = "object does not belong to the archive layout; it was not checked"
        if listed.problem:
            message = f"entry {listed.problem}; it does not belong to the archive layout and was not read"
        self.findings.append(Finding(FindingKind.UNRECOGNISED_OBJECT, Severity.WARNING, message, object_key=listed.key))

    def _chain(self, chain_id_hex: str, key: str) -> _Chain:
        chain = self.chains.get(chain_id_hex)
        if chain is None:
            chain = self.chains[chain_id_hex] = _Chain(key[: key.index(chain_id_hex + "/")])
        return chain


async def _list_all(store: ArchiveStore) -> _Listing:
    listing = _Listing()
    async for listed in store.list_objects():
        listing.add(listed)
    return listing


async def _list_from_state(store: ArchiveStore, state: VerifierState) -> _Listing:
    """Each known chain from its newest verified checkpoint on; any other chain whole."""
    listing = _Listing()
    prefixes = {chain.key_prefix for chain in state.chains.values()} | {""}
    for prefix in sorted(prefixes):
        for name in await store.list_children(prefix):
            if len(name) != 32 or any(c not in "0123456789abcdef" for c in name):
                continue
            chain_under = f"{prefix}{name}/"
            remembered = state.chains.get(name)
            point = remembered.checkpoint if remembered is not None else None
            if point is None:
                async for listed in store.list_objects(chain_under):
                    listing.add(listed)
                continue
            listing.chains.setdefault(name, _Chain(prefix))
            checkpoints_under = f"{chain_under}checkpoints/"
            async for listed in store.list_objects(checkpoints_under, f"{checkpoints_under}{point['number']:012d}"):
                listing.add(listed)
            # Segment keys sort by day, then sequence: a segment after the remembered checkpoint was
            # created at most a day before that checkpoint's time (as in recovery).
            day = time.strftime("%Y/%m/%d", time.gmtime((point["time_unix_nano"] - DAY_NS) // 1_000_000_000))
            segments_under = f"{chain_under}segments/"
            async for listed in store.list_objects(segments_under, f"{segments_under}{day}"):
                parsed = parse_segment_key(listed.key)
                if parsed is None or parsed.last_sequence > point["last_sequence"]:
                    listing.add(listed)
            # Checkpoint notes from the remembered number on, like the checkpoints (FORMAT.md 13.9 step 1).
            notes_under = f"{chain_under}notes/"
            async for listed in store.list_objects(notes_under, f"{notes_under}{point['number']:012d}"):
                listing.add(listed)
            for child in await store.list_children(chain_under):
                # Other directories under the chain are listed and reported as usual; a full listing of
                # the chain would cost its whole history (loose files there are a full verify's to find).
                # Hash tiles are not read by the verifier, so they are not listed either.
                if child not in ("checkpoints", "segments", "notes", "tile"):
                    async for listed in store.list_objects(f"{chain_under}{child}/"):
                        listing.add(listed)
    return listing


async def check_archive(
    store: ArchiveStore,
    trusted_keys: Keyring | Mapping[bytes, PublicKey],
    options: VerifyOptions | None = None,
    progress: ProgressCallback | None = None,
    record_observer: RecordObserver | None = None,
) -> VerificationReport:
    """Check every chain in ``store``; never raises for what it finds, only for what stops it.

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or read.
        EmptyArchiveError: the archive holds no collector-ext objects at all.
    """
    return (await check_archive_with_state(store, trusted_keys, None, options, progress, record_observer)).report


async def check_archive_with_state(
    store: ArchiveStore,
    trusted_keys: Keyring | Mapping[bytes, PublicKey],
    state: VerifierState | None,
    options: VerifyOptions | None = None,
    progress: ProgressCallback | None = None,
    record_observer: RecordObserver | None = None,
    *,
    read_everything: bool = False,
) -> ArchiveCheck:
    """As ``check_archive``, resuming each chain ``state`` remembers; also returns the next state.

    ``read_everything`` (for a period report, which needs old records too) reads every chain from its
    genesis, and still holds the archive against the state (remembered checkpoints, vanished chains)."""
    options = options or VerifyOptions()
    if options.shard is not None and (state is not None or options.witnessed_notes or read_everything):
        raise ConfigurationError("--shard", "checks a share of a whole archive: not with --state or --witness-url")
    keyring = Keyring.of(trusted_keys)
    incremental = state is not None and bool(state.chains) and not read_everything
    listing = await (_list_from_state(store, state) if state is not None and incremental else _list_all(store))
    if not listing.chains and not incremental:
        raise EmptyArchiveError(f"no collector-ext objects under {store.description}: check the archive location")
    chains_listed = tuple(sorted(listing.chains))
    if options.shard is not None:
        mine = set(options.shard.chains_of(chains_listed))
        listing.chains = {chain_id: chain for chain_id, chain in listing.chains.items() if chain_id in mine}
        if options.shard.index != 0:
            listing.findings = []  # objects outside any chain: shard 0 reports them
    archive_findings = tuple(listing.findings)
    chain_findings: dict[str, list[Finding]] = {}
    threads = options.signature_threads or os.cpu_count() or 2
    findings: list[Finding] = list(listing.findings)
    done = 0
    total = listing.total

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    summaries: list[ChainSummary] = []
    resume_points: dict[str, ResumePoint | None] = {}
    tree_heads: dict[str, VerifiedNote] = {}
    trees: dict[str, CompactRange] = {}
    records = signatures = 0
    range_parts: list[ChainPart] = []
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:

        def check_batch(batch: Sequence[tuple[PublicKey, bytes, bytes]]) -> list[bool]:
            if len(batch) < 64:
                return check_signatures_libsodium(batch)
            size = -(-len(batch) // threads)
            chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
            return [ok for chunk in pool.map(check_signatures_libsodium, chunks) for ok in chunk]

        for chain_id_hex in sorted(listing.chains):
            chain = listing.chains[chain_id_hex]
            if options.shard is not None and options.shard.by == "range":
                rank = chains_listed.index(chain_id_hex)
                for part in await _check_ranges(store, keyring, chain_id_hex, chain, rank, options, check_batch):
                    range_parts.append(part)
                    summaries.append(part.summary)
                    assert part.range is not None
                    findings += part.range.tree_findings + part.range.evidence_findings + part.findings
                continue
            chain_start = len(findings)
            tree, checker = _chain_checkers(chain_id_hex, keyring, options, check_batch, record_observer)
            start = state.start_of(chain_id_hex) if state is not None else None
            if start is not None and state is not None:
                findings += await _check_remembered_checkpoint(store, chain_id_hex, chain, state)
                if incremental:
                    checker.resume(start)
                    tree.resume(remembered_tree(state.chains[chain_id_hex].checkpoint, chain_id_hex))
                    # Read and compared just now: the walk starts after it.
                    number = start.point.checkpoint_number
                    for _ in (c for c in chain.checkpoints if c[0].checkpoint_number <= number):
                        advance()
                    chain.checkpoints = [c for c in chain.checkpoints if c[0].checkpoint_number > number]
            await _read_notes(store, tree, chain, advance)
            await _check_chain(store, checker, chain, options, advance)
            summary = checker.finish()
            findings += tree.finish(checker.findings)
            if tree.newest is not None:
                tree_heads[chain_id_hex] = tree.newest
            if tree.remembered is not None and tree.newest is not None and tree.newest.size > tree.resumed_at:
                findings += await _check_tree_consistency(store, chain_id_hex, chain.prefix, tree)
            if tree.newest_tree is not None:
                trees[chain_id_hex] = tree.newest_tree
            elif tree.remembered is not None:
                trees[chain_id_hex] = tree.remembered  # nothing new: keep the remembered tree
            summaries.append(summary)
            policy = options.witness_policy
            if policy is not None and policy.active:
                # FORMAT.md 19.4: what witnesses and the TSA said of the chain's notes.
                newest = summaries[-1]
                times = {}
                if newest.newest_checkpoint_number is not None and newest.newest_checkpoint_unix_nano is not None:
                    times[newest.newest_checkpoint_number] = newest.newest_checkpoint_unix_nano
                evidence = await read_outside_evidence(store, chain.notes, chain.outside, times)
                now = options.now_unix_nano or time.time_ns()
                findings += check_outside_evidence(chain_id_hex, evidence, policy, now)
            resume_points[chain_id_hex] = checker.resume_point()
            findings += checker.findings
            records += checker.records
            signatures += checker.signatures_checked
            chain_findings[chain_id_hex] = findings[chain_start:]
    if range_parts:
        # By range, each shard read (and counts) only its ranges' objects.
        total = sum(part.range.objects for part in range_parts if part.range is not None)
        records = sum(part.summary.records for part in range_parts)
        signatures = sum(part.range.signatures for part in range_parts if part.range is not None)
    if options.witnessed_notes and options.witness_policy is not None:
        findings += await _check_witnessed(store, listing, state if incremental else None, keyring, options)
    if state is not None:
        findings += vanished_chains(state, set(listing.chains))
    archive_id = options.archive_id or (state.archive_id if state is not None else None)
    now_unix_nano = options.now_unix_nano or time.time_ns()
    if options.shard is None:
        findings = relate_findings(summaries, findings, archive_id, options.stale_after_seconds, now_unix_nano)
    report = build_report(findings, summaries, total, records, signatures, keyring.key_ids, incremental=incremental)
    shard = None
    if options.shard is not None:
        settings = ShardSettings(
            options.check_all_signatures,
            options.report_resends,
            archive_id,
            options.stale_after_seconds,
            tuple(keyring.key_ids),
        )
        shard = ShardReport(
            store.description,
            options.shard,
            settings,
            chains_listed,
            archive_findings,
            tuple(range_parts) if options.shard.by == "range" else chain_parts(summaries, chain_findings),
            total,
            records,
            signatures,
            now_unix_nano,
        )
    if archive_id is None:
        named = {s.archive_id for s in summaries if s.archive_id is not None}
        archive_id = named.pop() if len(named) == 1 else None
    new_state = next_state(
        state,
        store.description,
        archive_id,
        summaries,
        resume_points,
        {chain_id: chain.prefix for chain_id, chain in listing.chains.items()},
        findings,
        (options.now_unix_nano or time.time_ns()) // 1_000_000_000,
        trees,
    )
    return ArchiveCheck(report, new_state, shard)


# What only the end of a whole chain shows: a range that is not the chain's last leaves these to it.
_END_OF_CHAIN = frozenset({FindingKind.TRUNCATED_CHAIN, FindingKind.UNCOVERED_TAIL, FindingKind.FORMAT_V1})


def _walk_order(chain: _Chain) -> list[tuple[SegmentKey, ListedObject]]:
    """The chain's segments in the order ``_check_chain`` walks them."""
    return sorted(chain.segments, key=lambda item: (item[0].first_sequence, item[0].last_sequence, item[0].key))


def chain_ranges(chain: _Chain, parts: int) -> tuple[list[SegmentRange], str]:
    """``verify.shard.plan_ranges`` over a listed chain, and the digest of the listing it planned from."""
    segments = [
        ListedSegmentKey(key.first_sequence, key.last_sequence, key.key, listed.size)
        for key, listed in _walk_order(chain)
    ]
    checkpoints = sorted(chain.checkpoints, key=lambda item: item[0].key)
    plan = plan_ranges(segments, [(key.checkpoint_number, key.last_sequence) for key, _ in checkpoints], parts)
    return plan, listing_digest(segments, [key.key for key, _ in checkpoints])


async def _seam_start(
    store: ArchiveStore,
    keyring: Keyring,
    chain_id_hex: str,
    seam: tuple[CheckpointKey, ListedObject],
    first_segment: ListedObject,
) -> SeamState | None:
    """What a range resumes from: its seam checkpoint, authenticated as the walk would (FORMAT.md 13.2
    steps 1-5a), with the key it was signed by as the chain's key after it. None when the checkpoint
    does not authenticate, or the first record after it is not signed by that key (a run key certified
    before the seam signs it): the range then walks from the genesis."""
    key, listed = seam
    data = await _read(store, listed, MAX_CHECKPOINT_OBJECT_BYTES)
    if not isinstance(data, bytes):
        return None
    try:
        decoded = decode_checkpoint(data)
    except MalformedObjectError:
        return None
    checkpoint = decoded.checkpoint
    pinned = keyring.pinned(checkpoint.key_id)
    if (
        pinned is None
        or not decoded.is_signed_by(pinned.key)
        or checkpoint.chain_id.hex() != chain_id_hex
        or checkpoint.checkpoint_number != key.checkpoint_number
        or checkpoint.last_sequence != key.last_sequence
        or (checkpoint.final and checkpoint.format_version < 2)
        or decoded.appended
        or pinned.time_problem(checkpoint.time_unix_nano)
    ):
        return None
    segment = await _read(store, first_segment, MAX_SEGMENT_OBJECT_BYTES)
    if not isinstance(segment, bytes):
        return None
    try:
        records = decode_segment(segment).records
        entry = records[0].entry if len(records) else b""
    except (MalformedObjectError, IndexError):
        return None
    if (
        len(entry) < ENTRY_HEADER_SIZE
        or int.from_bytes(entry[SEQUENCE_SLICE], "big") != checkpoint.last_sequence + 1
        or entry[KEY_ID_SLICE] != checkpoint.key_id
    ):
        return None
    point = ResumePoint(
        checkpoint_number=checkpoint.checkpoint_number,
        checkpoint_sha256=decoded.sha256,
        last_sequence=checkpoint.last_sequence,
        head_sha256=checkpoint.head_sha256,
        key_id=checkpoint.key_id,
        time_unix_nano=checkpoint.time_unix_nano,
        final=checkpoint.final,
    )
    return _reached(point, checkpoint.format_version)


def _start_of(state: SeamState) -> ChainStart:
    point = ResumePoint(
        checkpoint_number=state.checkpoint_number,
        checkpoint_sha256=bytes.fromhex(state.checkpoint_sha256),
        last_sequence=state.last_sequence,
        head_sha256=bytes.fromhex(state.head_sha256),
        key_id=bytes.fromhex(state.key_id),
        time_unix_nano=state.time_unix_nano,
        final=state.final,
    )
    # What the genesis said (archive id, writer id, supersession) is the first range's to report.
    return ChainStart(point, state.format_version, None, "", None, 0)


def _reached(point: ResumePoint | None, format_version: int) -> SeamState | None:
    if point is None:
        return None
    return SeamState(
        checkpoint_number=point.checkpoint_number,
        checkpoint_sha256=point.checkpoint_sha256.hex(),
        last_sequence=point.last_sequence,
        head_sha256=point.head_sha256.hex(),
        key_id=point.key_id.hex(),
        run_public_key=point.run_public_key.hex(),
        run_key_sequence=point.run_key_sequence,
        format_version=format_version,
        time_unix_nano=point.time_unix_nano,
        final=point.final,
    )


async def _check_ranges(
    store: ArchiveStore,
    keyring: Keyring,
    chain_id_hex: str,
    chain: _Chain,
    rank: int,
    options: VerifyOptions,
    check_batch: SignatureBatchChecker,
) -> list[ChainPart]:
    """``verify --shard I/N --shard-by range``: this shard's ranges of one chain, each walked alone."""
    assert options.shard is not None
    plan, digest = chain_ranges(chain, options.shard.count)
    segments = _walk_order(chain)
    checkpoints = sorted(chain.checkpoints, key=lambda item: item[0].key)
    parts = []
    for segment_range in plan:
        if options.shard.owns_part(rank, segment_range.part):
            parts.append(
                await _check_range(
                    store,
                    keyring,
                    chain_id_hex,
                    chain,
                    segments,
                    checkpoints,
                    segment_range,
                    digest,
                    options,
                    check_batch,
                )
            )
    return parts


_UNPINNED_COUNTS = re.compile(r"(\d+) record\(s\) and (\d+) checkpoint\(s\) (.*)", re.S)


def _unpinned_share(earlier: Finding, now: Finding) -> Finding:
    before, after = _UNPINNED_COUNTS.fullmatch(earlier.message), _UNPINNED_COUNTS.fullmatch(now.message)
    if before is None or after is None:
        return now
    records = int(after.group(1)) - int(before.group(1))
    checkpoints = int(after.group(2)) - int(before.group(2))
    return dataclasses.replace(now, message=f"{records} record(s) and {checkpoints} checkpoint(s) {after.group(3)}")


def _nothing() -> None:
    return None


async def _check_range(
    store: ArchiveStore,
    keyring: Keyring,
    chain_id_hex: str,
    chain: _Chain,
    segments: list[tuple[SegmentKey, ListedObject]],
    checkpoints: list[tuple[CheckpointKey, ListedObject]],
    segment_range: SegmentRange,
    digest: str,
    options: VerifyOptions,
    check_batch: SignatureBatchChecker,
) -> ChainPart:
    start_number, end_number = segment_range.start_checkpoint, segment_range.end_checkpoint

    def after_start(number: int) -> bool:
        return start_number is None or number > start_number

    def up_to_end(number: int) -> bool:
        return end_number is None or number <= end_number

    tree, checker = _chain_checkers(chain_id_hex, keyring, options, check_batch, None)
    start: SeamState | None = None
    start_key = end_key = ""
    previous_notes: set[str] = set()
    restarts_before = 0
    quiet: list[Finding] = []  # the findings of a walk from the genesis before the range
    baseline = (0, 0, 0, 0, 0)  # findings, records, signatures, segments, checkpoints taken before the range
    if start_number is not None:
        before = segments[segment_range.first - 1][0]
        seam = next(
            c
            for c in checkpoints
            if c[0].checkpoint_number == start_number and c[0].last_sequence == before.last_sequence
        )
        start_key = seam[0].key
        start = await _seam_start(store, keyring, chain_id_hex, seam, segments[segment_range.first][1])
        if start is not None:
            checker.resume(_start_of(start))
            tree.resume(None)  # no tree at the seam to extend: notes are authenticated, roots not compared
        else:
            # The seam cannot be vouched for: walk from the genesis, keeping quiet until the range.
            prefix = _Chain(
                chain.prefix,
                segments[: segment_range.first],
                [c for c in checkpoints if not after_start(c[0].checkpoint_number)],
                [n for n in chain.notes if not after_start(n[0].checkpoint_number)],
            )
            previous_notes = {key.key for key, _ in prefix.notes}
            await _read_notes(store, tree, prefix, _nothing)
            await _check_chain(store, checker, prefix, options, _nothing)
            restarts_before = sum(1 for f in checker.findings if f.kind is FindingKind.RESTART)
            quiet = list(checker.findings)
            baseline = (
                len(checker.findings),
                checker.records,
                checker.signatures_checked,
                checker.segments,
                checker.ledger.count,
            )
    if end_number is not None:
        last = segments[segment_range.end - 1][0]
        end_key = next(
            c[0].key
            for c in checkpoints
            if c[0].checkpoint_number == end_number and c[0].last_sequence == last.last_sequence
        )
    mine = _Chain(
        chain.prefix,
        segments[segment_range.first : segment_range.end],
        [c for c in checkpoints if after_start(c[0].checkpoint_number) and up_to_end(c[0].checkpoint_number)],
        [n for n in chain.notes if after_start(n[0].checkpoint_number) and up_to_end(n[0].checkpoint_number)],
    )
    await _read_notes(store, tree, mine, _nothing)
    await _check_chain(store, checker, mine, options, _nothing)
    finishing = len(checker.findings)
    summary = checker.finish()
    last_range = segment_range.part == segment_range.parts - 1
    own = checker.findings[baseline[0] :]
    if not last_range:
        ended = finishing - baseline[0]
        own = own[:ended] + [f for f in own[ended:] if f.kind not in _END_OF_CHAIN]
    # A walk counts each unpinned key in one finding, updated in place: the range's share of one that a
    # walk from the genesis made before the range is the difference (verify.merge adds the shares up).
    walk = [
        _unpinned_share(earlier, now)
        for earlier, now in zip(quiet, checker.findings, strict=False)
        if now != earlier and now.kind is FindingKind.UNKNOWN_KEY
    ]
    walk += own
    tree_findings = [f for f in tree.finish(checker.findings) if f.object_key not in previous_notes]
    evidence: list[Finding] = []
    policy = options.witness_policy
    if last_range and policy is not None and policy.active:
        times = {}
        if summary.newest_checkpoint_number is not None and summary.newest_checkpoint_unix_nano is not None:
            times[summary.newest_checkpoint_number] = summary.newest_checkpoint_unix_nano
        outside = await read_outside_evidence(store, chain.notes, chain.outside, times)
        evidence = check_outside_evidence(chain_id_hex, outside, policy, options.now_unix_nano or time.time_ns())
    summary = dataclasses.replace(
        summary,
        restart_marks=summary.restart_marks - restarts_before,
        records=summary.records - baseline[1],
        segments=summary.segments - baseline[3],
        checkpoints=summary.checkpoints - baseline[4],
        resumed_from=None,
    )
    return ChainPart(
        summary,
        tuple(walk),
        RangePart(
            part=segment_range.part,
            parts=segment_range.parts,
            first_segment=segment_range.first,
            end_segment=segment_range.end,
            segments_listed=len(segments),
            listing_sha256=digest,
            start_checkpoint_key=start_key,
            end_checkpoint_key=end_key,
            start=start,
            end=_reached(checker.resume_point(), checker.format_version) if not last_range else None,
            walked_to=summary.last_sequence,
            walked_head=summary.head_sha256,
            tree_findings=tuple(tree_findings),
            evidence_findings=tuple(evidence),
            objects=len(mine.segments) + len(mine.checkpoints) + len(mine.notes),
            signatures=checker.signatures_checked - baseline[2],
        ),
    )


def check_signatures_libsodium(batch: Sequence[tuple[PublicKey, bytes, bytes]]) -> list[bool]:
    """Record signatures checked by libsodium (PyNaCl's binding releases the GIL), which verifies
    Ed25519 faster than pyca/cryptography on the machines measured (tests/benchmark_verify.py --scale
    prints both). On valid and altered signatures the two agree; libsodium also refuses public keys
    and R values of small order, which no honest signer produces (tests/unit/verify/test_shard_signatures.py)."""
    results = []
    for key, signature, message in batch:
        if len(signature) != SIGNATURE_SIZE:
            results.append(False)
            continue
        try:
            crypto_sign_open(signature + message, key.raw)
        except BadSignatureError:
            results.append(False)
        else:
            results.append(True)
    return results


def relate_findings(
    summaries: Sequence[ChainSummary],
    findings: Sequence[Finding],
    archive_id: str | None,
    stale_after_seconds: float | None,
    now_unix_nano: int,
) -> list[Finding]:
    """The findings of every chain, then what relates the chains to each other and to the archive
    (FORMAT.md 13.6, 13.6a, 13.8); a single run and a merge of shard reports both end with this."""
    # Every chain under the archive root was listed (or remembered), so a superseded chain that is
    # not among them is not in the archive.
    related = relate_chains(summaries, findings, all_chains_listed=True)
    related += relate_archive(summaries, archive_id)
    related += _stale(summaries, stale_after_seconds, now_unix_nano)
    return related


def build_report(
    findings: Sequence[Finding],
    summaries: Sequence[ChainSummary],
    objects_read: int,
    records: int,
    signatures: int,
    pinned_key_ids: Sequence[str],
    *,
    incremental: bool = False,
) -> VerificationReport:
    """The report with its totals by severity."""
    counts: dict[str, int] = defaultdict(int)
    for finding in findings:
        counts[finding.severity.value] += 1
    return VerificationReport(
        findings=tuple(findings),
        chains=tuple(summaries),
        objects_read=objects_read,
        records_checked=records,
        signatures_checked=signatures,
        counts=dict(counts),
        pinned_key_ids=tuple(pinned_key_ids),
        incremental=incremental,
    )


async def _check_witnessed(
    store: ArchiveStore, listing: _Listing, state: VerifierState | None, keyring: Keyring, options: VerifyOptions
) -> list[Finding]:
    """Each tree a pinned witness holds for a chain of this archive must still be in it (FORMAT.md 19.4 step 5)."""
    assert options.witness_policy is not None
    log_keys = [key for key in (keyring.get(bytes.fromhex(k)) for k in keyring.key_ids) if key is not None]
    findings = []
    for head in authenticate_witnessed(options.witnessed_notes, options.witness_policy, log_keys):
        chain = listing.chains.get(head.chain_id_hex)
        remembered = state.chains.get(head.chain_id_hex) if state is not None else None
        point = remembered.checkpoint if remembered is not None else None
        text = None
        newest = None
        if chain is not None:
            sizes = [(key.last_sequence + 1, key.checkpoint_number, listed) for key, listed in chain.notes]
            newest = max((size for size, _, _ in sizes), default=None)
            same = sorted((item for item in sizes if item[0] == head.size), key=lambda item: item[1])
            if same:
                data = await _read(store, same[-1][2], MAX_NOTE_BYTES)
                if isinstance(data, bytes):
                    end = data.rfind(b"\n\n")
                    text = data[: end + 1] if end >= 0 else data
        finding = compare_witnessed(
            head,
            chain_listed=chain is not None,
            archive_text=text,
            newest_size=newest,
            remembered_size=point["last_sequence"] + 1 if point is not None else None,
        )
        if finding is not None:
            findings.append(finding)
    return findings


async def _check_remembered_checkpoint(
    store: ArchiveStore, chain_id_hex: str, chain: _Chain, state: VerifierState
) -> list[Finding]:
    """The newest checkpoint an earlier run verified must still be there, byte for byte (its body)."""
    remembered = state.chains[chain_id_hex]
    point = remembered.checkpoint
    assert point is not None
    key = checkpoint_key(
        f"{chain.prefix}", bytes.fromhex(chain_id_hex), point["number"], point["last_sequence"]
    ).lstrip("/")
    listed = next((listed for ckey, listed in chain.checkpoints if ckey.key == key), None)
    if listed is None:
        return [rollback_finding(chain_id_hex, remembered, "is not in the archive any more", key)]
    try:
        decoded = decode_checkpoint(await store.get(key, MAX_CHECKPOINT_OBJECT_BYTES))
    except (UnreadableObjectError, MalformedObjectError) as exc:
        return [rollback_finding(chain_id_hex, remembered, f"cannot be read any more ({exc})", key)]
    if decoded.sha256.hex() != point["sha256"]:
        return [rollback_finding(chain_id_hex, remembered, "was replaced by a different checkpoint", key)]
    return []


def _unreadable(listed: ListedObject, limit: int) -> UnreadableObject | None:
    if listed.problem:
        return UnreadableObject(FindingKind.UNREADABLE_OBJECT, f"not read: the entry {listed.problem}")
    if listed.size > limit:
        return UnreadableObject(
            FindingKind.UNREADABLE_OBJECT,
            f"not read: the object is {listed.size} bytes, more than the {limit} bytes the format allows",
        )
    return None


async def _read(store: ArchiveStore, listed: ListedObject, limit: int) -> bytes | UnreadableObject:
    problem = _unreadable(listed, limit)
    if problem is not None:
        return problem
    try:
        return await store.get(listed.key, limit)
    except UnreadableObjectError as exc:
        return UnreadableObject(FindingKind.UNREADABLE_OBJECT, f"not read: {exc.reason}")


class _ReadAhead:
    """Fetches objects in order, at most ``count`` ahead of the one asked for, and at most ``budget``
    bytes (by listed size) held together with it; the object asked for is always fetched."""

    def __init__(self, store: ArchiveStore, objects: Sequence[ListedObject], limit: int, count: int, budget: int):
        self._store = store
        self._objects = objects
        self._limit = limit
        self._count = max(1, count)
        self._budget = budget
        self._tasks: dict[int, asyncio.Task[bytes | UnreadableObject]] = {}
        self._next = 0  # next index to start fetching

    def _fill(self, current: int) -> None:
        held = sum(min(self._objects[i].size, self._limit) for i in self._tasks if i >= current)
        while self._next < len(self._objects) and self._next <= current + self._count:
            size = min(self._objects[self._next].size, self._limit)
            if self._next > current and held + size > self._budget:
                return
            self._tasks[self._next] = asyncio.create_task(_read(self._store, self._objects[self._next], self._limit))
            held += size
            self._next += 1

    async def get(self, index: int) -> bytes | UnreadableObject:
        self._fill(index)
        return await self._tasks.pop(index)

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()


def _chain_checkers(
    chain_id_hex: str,
    keyring: Keyring,
    options: VerifyOptions,
    check_batch: SignatureBatchChecker,
    record_observer: RecordObserver | None,
) -> tuple[TreeChecker, ChainChecker]:
    """A chain's tree checker and the walk that feeds it its records (then ``record_observer``)."""
    tree = TreeChecker(chain_id_hex, keyring)
    checker = ChainChecker(
        chain_id_hex,
        keyring,
        check_all_signatures=options.check_all_signatures,
        check_signature_batch=check_batch,
        record_observer=_observe_tree(tree, record_observer),
        report_resends=options.report_resends,
    )
    return tree, checker


def _observe_tree(tree: TreeChecker, then: RecordObserver | None) -> RecordObserver:
    """The walk's record observer: the tree checker first, then the caller's (a report's), if any."""
    if then is None:
        return lambda records, _key: tree.add_records(records)

    def observe(records: Sequence[SealedRecord], key: str) -> None:
        tree.add_records(records)
        then(records, key)

    return observe


async def _check_tree_consistency(
    store: ArchiveStore, chain_id_hex: str, prefix: str, tree: TreeChecker
) -> list[Finding]:
    """FORMAT.md 13.9 step 6: an RFC 6962 consistency proof, built from the archive's tiles, shows
    that the newest verified note's tree extends the remembered one."""
    assert tree.remembered is not None
    assert tree.newest is not None
    old, new = tree.remembered, tree.newest
    chain_id = bytes.fromhex(chain_id_hex)
    fetched: dict[tuple[int, int], Tile] = {}
    boundary = old.size // TILE_WIDTH
    try:
        for level, index, width in consistency_tiles(old.size, new.size):
            if level == 0 and index == boundary:
                # The tile at the remembered size: its stored partial tile, then the leaves walked since.
                width_before = old.size % TILE_WIDTH
                before: tuple[bytes, ...] = ()
                if width_before:
                    data = await store.get(tile_key(prefix, chain_id, 0, index, width_before), width_before * 32)
                    before = decode_tile(0, index, width_before, data).hashes
                fetched[(0, index)] = Tile(0, index, (before + tuple(tree.first_leaves))[:width])
                continue
            data = await store.get(tile_key(prefix, chain_id, level, index, width), width * 32)
            fetched[(level, index)] = decode_tile(level, index, width, data)
        proof = consistency_proof(old.size, new.size, node_reader(new.size, fetched))
    except (UnreadableObjectError, ValueError, KeyError) as exc:
        problem = f"its consistency proof cannot be built from the archive's hash tiles ({exc})"
    else:
        check = check_consistency(old.size, new.size, old.root(), new.root, proof)
        if check.ok:
            return []
        problem = f"the consistency proof built from the archive's hash tiles fails: {check.problem}"
    return [
        Finding(
            FindingKind.TREE_MISMATCH,
            Severity.TAMPERING,
            f"the tree of {new.size} records in {new.object_key} is not shown to extend the remembered tree of "
            f"{old.size} records: {problem}",
            chain_id_hex,
            new.size - 1,
            None,
            new.object_key,
        )
    ]


async def _read_notes(store: ArchiveStore, tree: TreeChecker, chain: _Chain, advance: Callable[[], None]) -> None:
    """Authenticate the chain's checkpoint notes before the walk, which compares their roots."""
    notes = sorted(chain.notes, key=lambda item: item[0].key)
    reads = _ReadAhead(store, [listed for _, listed in notes], MAX_NOTE_BYTES, 16, 4 * 1024 * 1024)
    try:
        for index, (key, _listed) in enumerate(notes):
            data = await reads.get(index)
            if isinstance(data, bytes):
                tree.add_note(key, data)
            else:
                tree.findings.append(
                    Finding(data.kind, Severity.TAMPERING, data.message, tree.chain_id_hex, object_key=key.key)
                )
            advance()
    finally:
        reads.cancel()


async def _check_chain(
    store: ArchiveStore,
    checker: ChainChecker,
    chain: _Chain,
    options: VerifyOptions,
    advance: Callable[[], None],
) -> None:
    checkpoints = sorted(chain.checkpoints, key=lambda item: item[0].key)
    segments = sorted(chain.segments, key=lambda item: (item[0].first_sequence, item[0].last_sequence, item[0].key))
    checkpoint_reads = _ReadAhead(
        store, [listed for _, listed in checkpoints], MAX_CHECKPOINT_OBJECT_BYTES, 4, 8 * 1024 * 1024
    )
    segment_reads = _ReadAhead(
        store,
        [listed for _, listed in segments],
        MAX_SEGMENT_OBJECT_BYTES,
        options.read_ahead,
        options.read_ahead_bytes,
    )
    fed = 0

    async def feed_checkpoints(until: int | None) -> None:
        # The checkpoints that describe a segment come before it; the rest wait, so only the digests
        # and head claims just ahead of the walk are held.
        nonlocal fed
        while fed < len(checkpoints) and (until is None or checker.covered_until < until):
            data = await checkpoint_reads.get(fed)
            checker.add_checkpoint(checkpoints[fed][0], data)
            fed += 1
            advance()

    try:
        for index, (key, _listed) in enumerate(segments):
            await feed_checkpoints(key.last_sequence)
            data = await segment_reads.get(index)
            if isinstance(data, bytes) and len(data) > INLINE_CHECK_BYTES:
                # Hash and parse off the event loop, so the next reads go on meanwhile.
                await asyncio.to_thread(checker.add_segment, key, data)
            else:
                checker.add_segment(key, data)  # a small object: a thread hand-over costs more
            del data  # not held while the next object is awaited (the read-ahead budget counts it)
            advance()
        await feed_checkpoints(None)
    finally:
        checkpoint_reads.cancel()
        segment_reads.cancel()


def _stale(summaries: Sequence[ChainSummary], stale_after_seconds: float | None, now: int) -> list[Finding]:
    """An open chain whose newest checkpoint is old: its writer stopped without a final checkpoint, or
    the newest checkpoints were removed (FORMAT.md 13.8)."""
    if stale_after_seconds is None:
        return []
    limit = now - int(stale_after_seconds * 1e9)
    superseded = {s.supersedes.chain_id for s in summaries if s.supersedes is not None}
    return [
        Finding(
            FindingKind.STALE_CHAIN,
            Severity.WARNING,
            f"the chain is open (its newest checkpoint, number {s.newest_checkpoint_number}, is not final) and that "
            f"checkpoint is {(now - s.newest_checkpoint_unix_nano) / 3.6e12:.1f} hours old: its writer stopped "
            "without a clean shutdown, or its newest checkpoints were removed",
            s.chain_id,
            s.covered_until,
        )
        for s in summaries
        if s.newest_checkpoint_unix_nano is not None
        and s.newest_checkpoint_unix_nano < limit
        and not s.final
        and s.chain_id not in superseded
    ]


def with_findings(report: VerificationReport, extra: list[Finding]) -> VerificationReport:
    """The report with more findings (e.g. the Loki cross-check's) added, totals updated."""
    counts = dict(report.counts)
    for finding in extra:
        counts[finding.severity.value] = counts.get(finding.severity.value, 0) + 1
    return dataclasses.replace(report, findings=report.findings + tuple(extra), counts=counts)
