"""The segment walk of one chain (proto/FORMAT.md 10 and 13.3-13.5): links, sequence numbers,
signatures, keys, and the end of the chain.

``ChainChecker`` is fed a chain's checkpoint objects (``add_checkpoint``, in key order) and segment
objects (``add_segment``, in key order), interleaved by the driver so that the checkpoints that
describe a segment come before it, and keeps only what it needs to continue (expected sequence
number, last hash, the chain's key, the digests ahead), so a chain of any length is checked in
bounded memory. It never raises on bad data: every problem becomes a ``Finding`` with its location.

How a record is proven authentic:

- a segment whose SHA-256 matches the digest in a valid checkpoint signed by the key the chain is
  bound to is authentic as a whole, signatures included, so its records' own signatures need not
  be checked one by one (what makes a clean archive fast to verify);
- every other segment has every record signature checked, which also pinpoints what was altered;
- ``check_all_signatures`` checks every record signature regardless.

A segment stored under a key whose range differs from its content is set aside (within a budget)
and walked where its content belongs, so two swapped segments read as two misnamed objects, not as
a fork and a deletion.

Reading objects, threads and progress bars belong to ``verify.run``; this module does no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    ENTRY_HEADER_SIZE,
    KEY_ID_SLICE,
    PREVIOUS_HASH_SLICE,
    RECORD_SIGNATURE_PREFIX,
    SEQUENCE_SLICE,
    ZERO_HASH,
    EntryKind,
)
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import CheckpointKey, SegmentKey
from collector_ext.seal.segment import CHUNK_RECORDS, DecodedSegment, SealedRecord, decode_segment
from collector_ext.verify.batch import (
    StoredChunks,
    StoredRecords,
    consecutive_from,
    entry_hashes,
    links_continue,
    same_slices,
)
from collector_ext.verify.checkpoints import CheckpointLedger, ListedSegment, ResumePoint, UnreadableObject
from collector_ext.verify.entries import (
    RunKey,
    SpecialPayload,
    entry_version,
    header_problem,
    rotation_of,
    run_key_of,
)
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, FoldedFindings, Severity, Supersession
from collector_ext.verify.keys import ChainKeys, Keyring
from collector_ext.verify.resends import ResendTracker

# The uncovered-tail message of a chain that nothing supersedes (verify.supersede words it
# differently when a newer chain took over).
UNCOVERED_TAIL_MESSAGE = (
    "records after the newest checkpoint, not yet covered by a checkpoint: each was checked against its own "
    "signature, but nothing yet proves that no record followed them (normal while the writer runs, which "
    "writes a checkpoint within the checkpoint interval; after a crash, until the writer restarts)"
)

# Told about every stored segment's records, as stored, and its object key, e.g. to cross-check Loki
# or to build a report; it computes entry hashes itself where it needs them.
RecordObserver = Callable[[Sequence[SealedRecord], str], None]

# (public key, signature, message) triples in, one bool per triple out. verify.run passes a
# parallel implementation; the default checks them one after another.
SignatureBatchChecker = Callable[[Sequence[tuple[PublicKey, bytes, bytes]]], list[bool]]

_SEALED_SLICE = operator.itemgetter(slice(68, 76))  # sealed_unix_nano (FORMAT.md 7.1)

# A chunk of a segment that is not a plain continuation of its chain is looked at again in pieces of
# this many records: the pieces without a genesis, restart mark or fault take the fast path.
PIECE_RECORDS = 256

# Misnamed segments set aside until the walk reaches their content: at most this many bytes.
DEFERRED_BYTES_BUDGET = 32 * 1024 * 1024


def _segment_problem(error: MalformedObjectError) -> str:
    text = str(error)
    return text if text.startswith("segment") else f"segment {text}"


def check_signatures_serially(batch: Sequence[tuple[PublicKey, bytes, bytes]]) -> list[bool]:
    return [key.is_valid_signature(signature, message) for key, signature, message in batch]


@dataclass(slots=True)
class _Item:
    """One stored record of the segment being checked."""

    sequence: int
    entry: bytes
    signature: bytes
    position: int
    hash: bytes = b""
    signature_ok: bool | None = None


@dataclass(frozen=True, slots=True)
class _CleanRun:
    """A segment found to continue the chain as a plain run of log records (``ChainChecker._clean_run``)."""

    key_id: bytes  # the key that signs them
    claimed: tuple[int, ...]  # the sequence numbers among them that checkpoints claim a head for
    signatures: int  # record signatures checked (all valid), 0 when the checkpoint's digest vouched
    last: _Item  # the run's last record


@dataclass(frozen=True, slots=True)
class ChainStart:
    """What an earlier run (``--state``) knew of a chain, to resume after its newest checkpoint."""

    point: ResumePoint
    format_version: int
    archive_id: str | None
    writer_id: str
    supersedes: Supersession | None
    restart_marks: int


class ChainChecker:
    """Checks one chain: ``add_checkpoint``/``add_segment`` in key order, then ``finish``."""

    def __init__(
        self,
        chain_id_hex: str,
        trusted_keys: Keyring | Mapping[bytes, PublicKey],
        *,
        check_all_signatures: bool = False,
        check_signature_batch: SignatureBatchChecker = check_signatures_serially,
        record_observer: RecordObserver | None = None,
        report_resends: bool = False,
    ) -> None:
        """``report_resends`` also reports resent log records away from restart marks (each record
        is then looked up in a window of the ones before it, which costs a little per record)."""
        self.chain_id_hex = chain_id_hex
        self.chain_id = bytes.fromhex(chain_id_hex)
        self._keyring = Keyring.of(trusted_keys)
        self._check_all = check_all_signatures
        self._check_batch = check_signature_batch
        self._observer = record_observer
        self.findings: list[Finding] = []
        self.records = 0
        self._record_signatures = 0
        self.segments = 0
        self.ledger = CheckpointLedger(self.chain_id, self._keyring, self._report_at, self._report_unknown_key)
        self.keys = ChainKeys()
        self.format_version = 0
        self._expected = 0
        self._previous_hash: bytes | None = ZERO_HASH
        self._previous_item: _Item | None = None
        self._previous_object = ""
        self._last_hash = b""
        self._key_ids: set[bytes] = set()
        self.supersedes: Supersession | None = None
        self.archive_id: str | None = None
        self.writer_id = ""
        self._restart_marks = 0
        self._segment_marks: list[int] = []  # restart marks accepted in the segment being checked
        self._folded = FoldedFindings()  # the findings past the ones listed one by one
        # The segment object being walked, and whether a tampering finding named it meanwhile.
        self._walked_key = ""
        self._walked_tampering = False
        self._resends = ResendTracker(chain_id_hex, self._add_finding, report_all=report_resends)
        # Set-aside segments as a heap by first sequence (then arrival), so taking the lowest is
        # O(log n) however many wait.
        # Only the object's bytes are kept (decoded again when walked): a parsed segment costs several
        # times its size, and the budget bounds what waits.
        self._deferred: list[tuple[int, int, SegmentKey, bytes, ListedSegment | None, bool]] = []
        self._deferred_bytes = 0
        self._unreadable: tuple[int, str] | None = None  # first sequence (by key) and key of an unreadable object
        self._unpinned: dict[bytes, list[int]] = {}  # unpinned key id -> [finding index, records, checkpoints]
        self._newest_segment_key = ""
        self._resumed: ResumePoint | None = None
        self._last_accepted = -1  # the newest entry accepted into the chain
        # Run keys (FORMAT.md 10.3): every one certified in this chain by key id, and the one whose run
        # the walk is in (None after a restart mark, key rotation or another certification ends it).
        self._run_keys: dict[bytes, RunKey] = {}
        self._active_run: RunKey | None = None
        self._run_ends: dict[bytes, int] = {}  # run key id -> the entry that ended its run
        self._verifying = False  # whether the segment being walked has its record signatures checked

    @property
    def signatures_checked(self) -> int:
        return self._record_signatures + self.ledger.signatures_checked

    @property
    def covered_until(self) -> int:
        return self.ledger.covered_until

    # -- findings -------------------------------------------------------------------------------
    def _report(
        self,
        kind: FindingKind,
        severity: Severity,
        message: str,
        *,
        first: int | None = None,
        last: int | None = None,
        object_key: str = "",
    ) -> None:
        self._add_finding(Finding(kind, severity, message, self.chain_id_hex, first, last, object_key))

    def _add_finding(self, finding: Finding) -> None:
        if finding.severity is Severity.TAMPERING and finding.object_key == self._walked_key:
            self._walked_tampering = True  # listed or not (the walk of that object asks)
        if len(self.findings) < self._folded.limit:
            self.findings.append(finding)
        else:
            self._folded.add(finding)

    def _report_at(
        self, kind: FindingKind, severity: Severity, message: str, first: int | None, last: int | None, key: str
    ) -> None:
        self._report(kind, severity, message, first=first, last=last, object_key=key)

    def _loss_or_tampering(self, last_missing: int) -> Severity:
        """Records a checkpoint vouched for are missing by tampering; others may be lost in a crash."""
        return Severity.TAMPERING if last_missing <= self.ledger.covered_until else Severity.LOSS

    # -- resuming -------------------------------------------------------------------------------
    def resume(self, start: ChainStart) -> None:
        """Continue after the newest checkpoint an earlier run verified (FORMAT.md 13.9)."""
        point = start.point
        self._resumed = point
        self.ledger.resume(point)
        self.keys.bind(point.last_sequence + 1, point.key_id)
        self.format_version = start.format_version
        self.archive_id = start.archive_id
        self.writer_id = start.writer_id
        self.supersedes = start.supersedes
        self._restart_marks = start.restart_marks
        self._expected = point.last_sequence + 1
        self._last_accepted = point.last_sequence
        self._previous_hash = point.head_sha256
        self._last_hash = point.head_sha256
        self._previous_item = None
        if point.run_public_key:
            # 13.9: the run that continues past the remembered checkpoint, as the earlier run found it.
            run = RunKey(PublicKey.from_raw(point.run_public_key), point.run_key_sequence, point.key_id, "")
            self._run_keys[run.key.key_id] = run
            self._active_run = run

    # -- checkpoints ----------------------------------------------------------------------------
    def add_checkpoint(self, key: CheckpointKey, data: bytes | UnreadableObject) -> None:
        decoded = self.ledger.add(key, data)
        if decoded is None:
            return
        self._key_ids.add(decoded.checkpoint.key_id)
        self._note_version(decoded.checkpoint.format_version, key.key)
        last = decoded.checkpoint.last_sequence
        if last < self._expected:
            # The walk already passed this entry (an idle checkpoint): check what can still be checked.
            claim = self.ledger.take_claim(last)
            if (
                claim is not None
                and last == self._expected - 1
                and self._previous_hash is not None
                and claim.head != self._previous_hash
            ):
                self._report(
                    FindingKind.CHECKPOINT_MISMATCH,
                    Severity.TAMPERING,
                    f"{key.key} names a different hash for this record",
                    first=last,
                    object_key=self._previous_object,
                )
            if claim is not None:
                self._check_checkpoint_keys(last, claim.signers)

    def _check_checkpoint_keys(self, last: int, signers: Sequence[tuple[bytes, str]]) -> None:
        """13.3 step 8.9a: a checkpoint up to ``last`` must be signed by the key the chain is bound to
        after ``last``."""
        bound = self.keys.key_at(last + 1)
        if bound is None:
            return
        for key_id, object_key in signers:
            if key_id != bound:
                self._report(
                    FindingKind.WRONG_KEY,
                    Severity.TAMPERING,
                    f"checkpoint signed with pinned key id {key_id.hex()}, but the chain is bound to key id "
                    f"{bound.hex()} there (its genesis or key rotation): another key holder wrote it",
                    first=last,
                    object_key=object_key,
                )

    def _note_version(self, version: int, object_key: str) -> bool:
        """13.2 step 1a / 13.3 step 1: every object of a chain has the chain's format version; False
        (and a finding) if not."""
        if not self.format_version:
            self.format_version = version
            return True
        if version == self.format_version:
            return True
        self._report(
            FindingKind.MALFORMED_OBJECT,
            Severity.TAMPERING,
            f"object of format version {version} in a chain of format version {self.format_version}",
            object_key=object_key,
        )
        return False

    # -- segments -------------------------------------------------------------------------------
    def add_segment(self, key: SegmentKey, data: bytes | UnreadableObject) -> None:
        """Check one segment object; segments come in ascending key order."""
        self.segments += 1
        self._newest_segment_key = max(self._newest_segment_key, key.key)
        if isinstance(data, UnreadableObject):
            self._report(
                data.kind,
                Severity.TAMPERING,
                data.message,
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            self._set_unreadable(key)
            return
        try:
            segment = decode_segment(data)
        except MalformedObjectError as exc:
            self._report(
                FindingKind.MALFORMED_OBJECT,
                Severity.TAMPERING,
                f"{_segment_problem(exc)}; its records (seq {key.first_sequence}-{key.last_sequence} by its name) "
                "are unreadable",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            self._set_unreadable(key)
            return
        if segment.chain_id != self.chain_id:
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"segment belongs to chain {segment.chain_id.hex()}, not to the chain it is stored under",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            self._set_unreadable(key)
            return
        if not self._note_version(segment.format_version, key.key):
            self._set_unreadable(key)
            return
        declared_last = segment.first_sequence + segment.record_count - 1
        listed = self.ledger.listed(key.key)
        self.ledger.mark_seen(key.key)
        # A header whose first sequence differs from the key's: the object was renamed or swapped
        # (reported now); one whose count alone differs is reported after the walk (13.3 step 10).
        misnamed = segment.first_sequence != key.first_sequence
        if misnamed:
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"object holds seq {segment.first_sequence}-{declared_last} by its header; its object key says "
                f"{key.first_sequence}-{key.last_sequence} (the object was renamed or replaced)",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
        if (
            segment.first_sequence > self._expected
            and segment.record_count > 0
            and self._deferred_bytes + len(data) <= DEFERRED_BYTES_BUDGET
        ):
            # Its content starts after a gap: set it aside (within a budget) in case the missing
            # records come in a misnamed object later in key order, and walk it where its content
            # belongs (FORMAT.md 13.3 step 0). A real gap is reported when the budget or the chain ends.
            heapq.heappush(self._deferred, (segment.first_sequence, self.segments, key, data, listed, misnamed))
            del segment
            self._deferred_bytes += len(data)
            return
        self._walk_deferred(before=segment.first_sequence)
        self._walk_segment(key, segment, data, listed, misnamed_reported=misnamed)
        self._walk_deferred()

    def _set_unreadable(self, key: SegmentKey) -> None:
        """An object that could not be read: its records are not skipped over (its key is not trusted);
        a gap that starts where it would have started is its finding's, not a second one."""
        self.ledger.mark_seen(key.key)
        if self._unreadable is None or key.first_sequence < self._unreadable[0]:
            self._unreadable = (key.first_sequence, key.key)

    def _walk_deferred(self, *, before: int | None = None) -> None:
        """Walk the set-aside segments whose content starts before ``before`` (default: those the
        walk has reached, re-evaluated after each)."""
        while self._deferred:
            if self._deferred[0][0] >= (before if before is not None else self._expected + 1):
                return
            _, _, key, data, listed, misnamed = heapq.heappop(self._deferred)
            self._deferred_bytes -= len(data)
            self._walk_segment(key, decode_segment(data), data, listed, misnamed_reported=misnamed)

    def _walk_segment(
        self,
        key: SegmentKey,
        segment: DecodedSegment,
        data: bytes,
        listed: ListedSegment | None,
        *,
        misnamed_reported: bool,
    ) -> None:
        self._walked_key, self._walked_tampering = key.key, False
        recorded = self._check_segment_digest(key, listed, data, segment)
        # The digest vouches for the records' signatures only when the checkpoint's key is the one
        # that signs them: a fast path under another pinned key would let that key pass off records
        # it did not sign (after a key rotation, the new key's checkpoint covers entries the old key
        # signed: those are checked one by one).
        authentic = recorded and listed is not None and listed.key_id == self._signing_key_for(segment)
        # The records a chunk at a time (each entry's bytes taken out of its parsed chunk once): a
        # segment of the largest size is never held parsed as a whole.
        chunks = StoredChunks(segment.records)
        verify_signatures = self._check_all or not authentic
        first = self._expected
        self._segment_marks.clear()
        passed: list[_CleanRun] = []  # the chunks found clean before one that was not
        run = self._clean_run(chunks, verify_signatures, passed=passed)
        if run is not None:
            self._accept_clean_run(len(chunks), run)
        else:
            self._check_records(key, segment, chunks, verify_signatures, passed)
        clean_from = first if run is not None else None
        for start, stored in chunks:
            if self._observer is not None:
                self._observer(stored, key.key)
            self._resends.add_segment(
                key.key,
                stored.entries,
                self._segment_marks,
                clean_from=None if clean_from is None else clean_from + start,
            )
        declared_last = segment.first_sequence + segment.record_count - 1
        if self._expected <= declared_last:
            self._report(
                FindingKind.DELETED_RECORDS,
                Severity.TAMPERING,
                f"the segment header declares {segment.record_count} records up to seq {declared_last}; "
                f"seq {self._expected}-{declared_last} are not in it",
                first=self._expected,
                last=declared_last,
                object_key=key.key,
            )
            self._skip_to(declared_last)
        self._previous_object = key.key
        tampering_found = self._walked_tampering
        if (
            not tampering_found
            and not misnamed_reported
            and (segment.first_sequence, declared_last) != (key.first_sequence, key.last_sequence)
        ):
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"segment header says seq {segment.first_sequence}-{declared_last}, its object key says "
                f"{key.first_sequence}-{key.last_sequence}",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            tampering_found = True
        if listed is not None and not recorded and not tampering_found and not misnamed_reported:
            # Whatever notes the segment carries: a checkpoint-listed object must be byte for byte
            # the one recorded (FORMAT.md 13.3 step 11).
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"object differs from the one recorded in {listed.checkpoint_key} (its records verify one by one)",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
        self._report_passed_listings()
        for sequence, claim in self.ledger.drop_claims_below(self._expected):
            # Their entries were missing or unusable (already reported); whose key signed the
            # checkpoints that claim them is still checked.
            self._check_checkpoint_keys(sequence, claim.signers)

    def _report_passed_listings(self) -> None:
        """13.3 step 12: checkpoint-listed objects the walk went past without seeing: their records were found
        under other keys (else the gap would have named them)."""
        for listed in self.ledger.pop_passed(self._expected):
            ref = listed.ref
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"{listed.checkpoint_key} lists this object for seq {ref.first_sequence}-{ref.last_sequence}; it is "
                "not in the archive, and those records were read from other objects (renamed or re-packed)",
                first=ref.first_sequence,
                last=ref.last_sequence,
                object_key=ref.object_key,
            )

    def _signing_key_for(self, segment: DecodedSegment) -> bytes | None:
        """The key that must sign the segment's first record: the chain's key there, or, before
        anything bound the chain (its genesis segment), the key its first record names (which the
        genesis then binds)."""
        bound = self.keys.key_at(self._expected)
        if bound is not None or not segment.records:
            return bound
        first = segment.records[0].entry
        return first[KEY_ID_SLICE] if len(first) >= ENTRY_HEADER_SIZE else None

    def _check_segment_digest(
        self, key: SegmentKey, listed: ListedSegment | None, data: bytes, segment: DecodedSegment
    ) -> bool:
        """True when the object (its framed part) is byte for byte what a checkpoint recorded."""
        if segment.appended:
            self._report(
                FindingKind.APPENDED_BYTES,
                Severity.TAMPERING,
                f"{segment.appended} bytes appended after the segment's end at offset {segment.framed_size}",
                object_key=key.key,
            )
        if listed is None:
            return False
        ref = listed.ref
        framed = data if not segment.appended else data[: segment.framed_size]
        if ref.size != len(framed) or hashlib.sha256(framed).digest() != ref.sha256:
            return False
        declared_last = segment.first_sequence + segment.record_count - 1
        if ref.first_sequence != segment.first_sequence or ref.last_sequence != declared_last:
            # 13.3 step 3
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"{listed.checkpoint_key} records seq {ref.first_sequence}-{ref.last_sequence} for this object, which "
                f"holds {segment.first_sequence}-{declared_last}",
                first=segment.first_sequence,
                last=declared_last,
                object_key=key.key,
            )
            return False
        return True

    def _skip_to(self, last_sequence: int) -> None:
        if last_sequence >= self._expected:
            self._expected = last_sequence + 1
            self._previous_hash = None
            self._previous_item = None

    def _clean_run(
        self,
        chunks: Iterable[tuple[int, StoredRecords]],
        verify_signatures: bool,
        *,
        position: int = 0,
        passed: list[_CleanRun] | None = None,
    ) -> _CleanRun | None:
        """Fast path (FORMAT.md 13.4): the run of log records the segment (or a chunk of it, the first
        of which is stored at ``position`` in its segment) continues the chain with,
        when every record simply continues it (consecutive sequence numbers from ``expected``, linked,
        the chain's id, version and log-record kind, signed by the key bound there or the run key of the
        run in progress, inside that key's window, matching every head claim among them, and with
        ``verify_signatures`` every signature valid); None, with nothing changed, when anything needs a
        closer look by ``_check_records``. Checked a chunk at a time, stopping at the first that fails;
        ``passed`` receives the clean run of each chunk before it (the record-by-record walk takes those
        as they are instead of checking them, and their signatures, again)."""
        expected = self._expected
        previous = self._previous_hash
        key_id = self.keys.key_at(expected)
        if previous is None or key_id is None or not self.format_version:
            return None
        certifier = key_id
        public_key = self._keyring.get(key_id)
        run = self._active_run
        if run is not None and expected > run.sequence:
            key_id = run.key.key_id  # the run's records are signed by its run key (FORMAT.md 10.3)
            public_key = run.key
        pinned = self._keyring.pinned(certifier)
        if pinned is None or public_key is None:
            return None
        plain_header = self.format_version.to_bytes(2, "big") + bytes([EntryKind.LOG_RECORD, 0])
        window: tuple[bytes, bytes] | None = None
        if pinned.not_before is not None or pinned.not_after is not None:
            window = (
                (pinned.not_before or 0).to_bytes(8, "big"),
                (pinned.not_after if pinned.not_after is not None else 2**64 - 1).to_bytes(8, "big"),
            )
        claims = self.ledger.claims
        runs: list[_CleanRun] = [] if passed is None else passed
        for start, records in chunks:
            # Every comparison of the record-by-record walk, a chunk at a time (verify.batch); every
            # entry must also have a full header (13.3 step 8.1).
            entries = records.entries
            first = expected + start
            if (
                not same_slices(entries, 0, 20, plain_header + self.chain_id)
                or not same_slices(entries, KEY_ID_SLICE.start, KEY_ID_SLICE.stop, key_id)
                or not consecutive_from(entries, first)
            ):
                return None
            if window is not None:
                sealed = list(map(_SEALED_SLICE, entries))
                if min(sealed) < window[0] or max(sealed) > window[1]:
                    return None
            hashes = records.hashes
            if not links_continue(entries, hashes, previous):
                return None
            end = first + len(entries)
            if len(claims) < len(entries):
                here = sorted(sequence for sequence in claims if first <= sequence < end)
            else:
                here = [sequence for sequence in range(first, end) if sequence in claims]
            for sequence in here:
                if claims[sequence].head != hashes[sequence - first]:
                    return None
            signatures = 0
            if verify_signatures:
                # 13.3 step 7, as one batch per chunk; a failure leaves it to the record-by-record
                # walk, which checks and counts them again and says which failed.
                messages = map(RECORD_SIGNATURE_PREFIX.__add__, hashes)
                batch = [
                    (public_key, record.signature, message) for record, message in zip(records, messages, strict=True)
                ]
                if not all(self._check_batch(batch)):
                    return None
                signatures = len(batch)
            previous = hashes[-1]
            tail = records[-1]
            last = _Item(end - 1, tail.entry, tail.signature, position + start + len(entries) - 1, previous)
            runs.append(_CleanRun(key_id, tuple(here), signatures, last))
        if not runs:
            return None  # no records
        if len(runs) == 1:
            return runs[0]
        claimed = tuple(sequence for run in runs for sequence in run.claimed)
        return _CleanRun(key_id, claimed, sum(run.signatures for run in runs), runs[-1].last)

    def _accept_clean_run(self, count: int, run: _CleanRun) -> None:
        """Move the walk past a clean run of ``count`` records (13.3 step 8.9 for each record, and 8.9a
        for its head claims)."""
        last = run.last
        self._key_ids.add(run.key_id)
        self._record_signatures += run.signatures
        self._previous_item = last
        self._expected = last.sequence + 1
        self._previous_hash = last.hash
        self._last_hash = last.hash
        self._last_accepted = last.sequence
        self.records += count
        for sequence in run.claimed:
            taken = self.ledger.take_claim(sequence)
            if taken is not None:
                self._check_checkpoint_keys(sequence, taken.signers)

    def _check_records(
        self,
        key: SegmentKey,
        segment: DecodedSegment,
        chunks: StoredChunks,
        verify_signatures: bool,
        passed: Sequence[_CleanRun] = (),
    ) -> None:
        """The record-by-record walk of a segment, in order of sequence number (stored order unless
        records were reordered), a chunk of records at a time: their signatures checked as one batch,
        then each record in turn. ``passed``: the clean runs of the segment's first chunks, found by
        ``_clean_run`` from the state the walk is in now (taken as they are in stored order)."""
        # An entry too short for a header has no sequence number of its own: it stands where it is
        # stored (FORMAT.md 13.3 step 5).
        sequences: list[int] = []
        for start, stored in chunks:
            sequences += (
                int.from_bytes(entry[SEQUENCE_SLICE], "big")
                if len(entry) >= ENTRY_HEADER_SIZE
                else segment.first_sequence + position
                for position, entry in enumerate(stored.entries, start)
            )
        running_max = -1
        reordered = False
        for position, sequence in enumerate(sequences):
            if sequence < running_max:
                reordered = True
                self._report(
                    FindingKind.REORDERED_RECORD,
                    Severity.TAMPERING,
                    f"record stored at position {position}, after seq {running_max}",
                    first=sequence,
                    object_key=key.key,
                )
            running_max = max(running_max, sequence)
        self._verifying = verify_signatures
        first_in_segment = True
        if not reordered:
            for index, (start, stored) in enumerate(chunks):
                if index < len(passed):
                    self._take(key, passed[index])
                else:
                    # The chunk at which ``_clean_run`` stopped, from this same state, is not tried
                    # whole again: only in pieces.
                    whole = index > len(passed)
                    self._walk_chunk(key, stored, start, sequences, verify_signatures, first_in_segment, whole=whole)
                first_in_segment = False
        else:
            # In order of sequence number (a stable sort: copies of one sequence number keep their
            # stored order), each record parsed on its own from its place in the object.
            order = sorted(range(len(sequences)), key=sequences.__getitem__)
            for group in range(0, len(order), CHUNK_RECORDS):
                positions = order[group : group + CHUNK_RECORDS]
                records = [chunks.records.record(position) for position in positions]
                entries = [record.entry for record in records]
                items = [
                    _Item(sequences[position], entry, record.signature, position, digest)
                    for position, entry, record, digest in zip(
                        positions, entries, records, entry_hashes(entries), strict=True
                    )
                ]
                self._check_items(key, items, verify_signatures, first_in_segment)
                first_in_segment = False
        self.records += len(sequences)

    def _walk_chunk(
        self,
        key: SegmentKey,
        stored: StoredRecords,
        start: int,
        sequences: Sequence[int],
        verify_signatures: bool,
        first_in_segment: bool,
        *,
        whole: bool,
    ) -> None:
        """One chunk of a segment whose records are in stored order (stored at ``start``): the fast
        path when the chunk simply continues the chain (tried when ``whole``); else the same in pieces
        of PIECE_RECORDS, so that a genesis, restart mark or fault walks only the records of its piece
        one by one."""
        if whole and self._take_clean_run(key, stored, start, verify_signatures):
            return
        pieces = [(start, stored)]
        if len(stored) > PIECE_RECORDS:
            pieces = [(start + at, stored.piece(at, at + PIECE_RECORDS)) for at in range(0, len(stored), PIECE_RECORDS)]
        for at, piece in pieces:
            if len(pieces) > 1 and self._take_clean_run(key, piece, at, verify_signatures):
                first_in_segment = False
                continue
            items = [
                _Item(sequences[position], entry, record.signature, position, digest)
                for position, entry, record, digest in zip(
                    range(at, at + len(piece)), piece.entries, piece, piece.hashes, strict=True
                )
            ]
            self._check_items(key, items, verify_signatures, first_in_segment)
            first_in_segment = False

    def _take_clean_run(self, key: SegmentKey, records: StoredRecords, position: int, verify_signatures: bool) -> bool:
        """Move the walk past ``records`` (stored at ``position``) when they simply continue the chain;
        their count is added with the segment's."""
        run = self._clean_run(((0, records),), verify_signatures, position=position)
        if run is None:
            return False
        self._take(key, run)
        return True

    def _take(self, key: SegmentKey, run: _CleanRun) -> None:
        """Accept a clean run found inside the record-by-record walk of ``key``; its records are counted
        with the segment's."""
        self._accept_clean_run(0, run)
        self._previous_object = key.key

    def _check_items(
        self, key: SegmentKey, items: list[_Item], verify_signatures: bool, first_in_segment: bool
    ) -> None:
        """Records in the order they are walked: their signatures as one batch (a record whose run key
        is certified later among them is checked when the walk reaches it), then each record."""
        if verify_signatures:
            self._verify_signatures(items)
        for item in items:
            self._check_item(key, item, first_in_segment)
            first_in_segment = False

    def _verify_signatures(self, items: Sequence[_Item]) -> None:
        batch: list[tuple[PublicKey, bytes, bytes]] = []
        targets: list[_Item] = []
        for item in items:
            key_id = item.entry[KEY_ID_SLICE]
            public_key = self._keyring.get(key_id)
            if public_key is None and key_id in self._run_keys:
                public_key = self._run_keys[key_id].key
            if public_key is not None and len(item.entry) >= ENTRY_HEADER_SIZE:
                batch.append((public_key, item.signature, RECORD_SIGNATURE_PREFIX + item.hash))
                targets.append(item)
        for item, ok in zip(targets, self._check_batch(batch), strict=True):
            item.signature_ok = ok
        self._record_signatures += len(batch)

    def _signature_ok(self, item: _Item) -> bool:
        if item.signature_ok is None:
            self._verify_signatures([item])
        return bool(item.signature_ok)

    def _check_item(self, key: SegmentKey, item: _Item, first_in_segment: bool) -> None:
        entry = item.entry
        sequence = item.sequence
        if len(entry) < ENTRY_HEADER_SIZE:
            # 13.3 step 8.1
            if sequence > self._expected:
                self._report_gap(key, sequence, first_in_segment)
            self._report(
                FindingKind.MODIFIED_RECORD,
                Severity.TAMPERING,
                f"record at position {item.position} is too short to be an entry ({len(entry)} bytes)",
                first=sequence,
                object_key=key.key,
            )
            self._skip_to(sequence)
            return
        key_id = entry[KEY_ID_SLICE]
        if entry[4:20] != self.chain_id:
            # 13.3 step 8.2
            self._report(
                FindingKind.INSERTED_RECORD,
                Severity.TAMPERING,
                f"record at position {item.position} belongs to chain {entry[4:20].hex()}",
                first=sequence,
                object_key=key.key,
            )
            return
        pinned = self._keyring.pinned(key_id)
        run = self._run_keys.get(key_id) if pinned is None else None
        if run is not None:
            problem = self._run_key_problem(run, sequence, entry[2])
            if problem:
                # 13.3 step 8.3b
                if sequence > self._expected:
                    self._report_gap(key, sequence, first_in_segment)
                self._report(
                    FindingKind.RUN_KEY_OUTSIDE_RUN,
                    Severity.TAMPERING,
                    f"record signed with run key id {key_id.hex()} (certified at seq {run.sequence}) {problem}: "
                    "whoever held that run key wrote it",
                    first=sequence,
                    object_key=key.key,
                )
                if sequence >= self._expected:
                    self._skip_to(sequence)
                return
            pinned = self._keyring.pinned(run.certifier_key_id)
            if self._verifying and item.signature_ok is None:
                self._signature_ok(item)  # certified within this segment, after its batch was checked
        if pinned is None:
            if len(entry) > 2 and entry[2] == EntryKind.RUN_KEY:
                # 13.3 step 8.3c
                self._report(
                    FindingKind.UNCERTIFIED_RUN_KEY,
                    Severity.TAMPERING,
                    f"run key entry signed with key id {key_id.hex()}, which is not pinned: the run key it names "
                    "is not certified, and the records it signs are not verified",
                    first=sequence,
                    object_key=key.key,
                )
            else:
                # 13.3 step 8.3
                self._report_unknown_key(key_id, sequence, key.key, "record")
            if sequence >= self._expected:
                self._skip_to(sequence)
            return
        problem, special = header_problem(entry, sequence, self.format_version)
        if not self.format_version and not problem:
            self.format_version = entry_version(entry)
        if problem:
            # 13.3 step 8.3a
            self._report(FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, problem, first=sequence, object_key=key.key)
        if sequence < self._expected:
            # 13.3 step 8.4
            self._check_duplicate(key, item)
            return
        if item.signature_ok is False:
            # 13.3 step 8.5: the stored bytes are not what the key signed.
            if sequence > self._expected:
                self._report_gap(key, sequence, first_in_segment)
            self._report(
                FindingKind.MODIFIED_RECORD,
                Severity.TAMPERING,
                "record signature does not match its content",
                first=sequence,
                object_key=key.key,
            )
            self._skip_to(sequence)
            return
        bound = self.keys.key_at(sequence)
        if bound is not None and key_id != bound and run is None:
            # 13.3 step 8.5a (FORMAT.md 10 rule 5): a pinned key, but not this chain's.
            if sequence > self._expected:
                self._report_gap(key, sequence, first_in_segment)
            self._report(
                FindingKind.WRONG_KEY,
                Severity.TAMPERING,
                f"record signed with pinned key id {key_id.hex()}, but the chain is bound to key id {bound.hex()} "
                "here (its genesis or key rotation): another key holder wrote or rewrote it",
                first=sequence,
                object_key=key.key,
            )
            self._skip_to(sequence)
            return
        if sequence > self._expected:
            # 13.3 step 8.6
            self._report_gap(key, sequence, first_in_segment)
        elif self._previous_hash is not None and entry[PREVIOUS_HASH_SLICE] != self._previous_hash:
            # 13.3 step 8.7
            self._explain_broken_link(key, item)
        window = pinned.time_problem(int.from_bytes(entry[68:76], "big"))
        if window:
            # 13.3 step 8.7a
            self._report_outside_window(key, key_id, sequence, window)
        claim = self.ledger.take_claim(sequence)
        if claim is not None and claim.head != item.hash:
            # 13.3 step 8.8
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"{claim.checkpoint_key} names a different hash for this record",
                first=sequence,
                object_key=key.key,
            )
        # 13.3 step 8.9
        if not self.keys.bound:
            self.keys.bind(sequence, key_id)
        self._key_ids.add(key_id)
        self._expected = sequence + 1
        self._last_accepted = sequence
        self._previous_hash = item.hash
        self._last_hash = item.hash
        self._previous_item = item
        self._previous_object = key.key
        if special is not None and not problem:
            self._note_special(key, sequence, key_id, special)
        if claim is not None:
            self._check_checkpoint_keys(sequence, claim.signers)

    def _run_key_problem(self, run: RunKey, sequence: int, kind: int) -> str:
        """Why a run key may not sign entry ``sequence`` of ``kind`` (FORMAT.md 10.3), or ''."""
        if kind != EntryKind.LOG_RECORD:
            return f"on an entry of kind {kind}: a run key signs log records only"
        if sequence <= run.sequence:
            return "before its certification"
        if self._active_run is not run:
            return "after its run ended (a restart mark, key rotation or another run key came between)"
        return ""

    def _note_special(self, key: SegmentKey, sequence: int, key_id: bytes, payload: SpecialPayload) -> None:
        """13.3 step 8.10: a genesis, restart mark, key rotation or run key accepted into the chain."""
        if not isinstance(payload, archive_pb2.GenesisPayload) and self._active_run is not None:
            # Every entry but a log record ends a run (FORMAT.md 10.3).
            self._run_ends[self._active_run.key.key_id] = sequence
            self._active_run = None
        if isinstance(payload, archive_pb2.RunKeyPayload):
            run, problem = run_key_of(payload, self.chain_id, sequence, key_id)
            if run is None:
                self._report(
                    FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, problem, first=sequence, object_key=key.key
                )
                return
            self._run_keys.setdefault(run.key.key_id, run)
            if self._run_keys[run.key.key_id] is not run:
                earlier = self._run_keys[run.key.key_id].sequence
                problem = (
                    f"run key {run.key.key_id.hex()} was certified before, at seq {earlier}: a run key serves one run"
                )
                self._report(
                    FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, problem, first=sequence, object_key=key.key
                )
                return
            self._active_run = run
            self._report(
                FindingKind.RUN_KEY,
                Severity.INFO,
                f"run key id {run.key.key_id.hex()} certified by key id {key_id.hex()}: it signs the log records from "
                f"seq {sequence + 1} to the next restart mark; reason: {run.reason or '(none given)'}",
                first=sequence,
                object_key=key.key,
            )
        elif isinstance(payload, archive_pb2.RestartPayload):
            self._restart_marks += 1
            self._segment_marks.append(sequence)
            self._check_writer(key, key_id, sequence, payload.writer_id)
            previous_run = (
                "the previous run ended cleanly"
                if payload.previous_run_clean
                else "the previous run did not end cleanly (crash or kill)"
            )
            self._report(
                FindingKind.RESTART,
                Severity.INFO,
                f"restart mark: writer id {payload.writer_id or '(none)'} ({payload.writer or 'unnamed writer'}) "
                f"stopped and continued this chain from its local state; {previous_run}; "
                f"reason: {payload.reason or '(none given)'}",
                first=sequence,
                object_key=key.key,
            )
        elif isinstance(payload, archive_pb2.KeyRotationPayload):
            rotation, problem = rotation_of(payload, self.chain_id, sequence, key_id)
            if rotation is None:
                kind = FindingKind.MALFORMED_OBJECT
                self._report(kind, Severity.TAMPERING, problem, first=sequence, object_key=key.key)
                return
            self.keys.bind(sequence + 1, rotation.new_key_id)
            # The new key must be allowed to sign for this chain's writer too (FORMAT.md 8.2).
            self._check_writer(key, rotation.new_key_id, sequence, self.writer_id)
            pinned = "" if rotation.new_key_id in self._keyring else " (not pinned: pin it to verify what follows)"
            self._report(
                FindingKind.KEY_ROTATION,
                Severity.INFO,
                f"key rotation signed by key id {key_id.hex()}: from seq {sequence + 1} on the chain is signed by "
                f"key id {rotation.new_key_id.hex()}{pinned}; reason: {rotation.reason or '(none given)'}",
                first=sequence,
                object_key=key.key,
            )
        else:
            self.keys.bind(0, key_id)
            self.writer_id = payload.writer_id
            self.archive_id = payload.archive_id if self.format_version >= 2 else None
            self._check_writer(key, key_id, sequence, payload.writer_id)
            if payload.supersedes_chain_id:
                self._note_supersession(key, sequence, payload)

    def _check_writer(self, key: SegmentKey, key_id: bytes, sequence: int, writer_id: str) -> None:
        pinned = self._keyring.pinned(key_id)
        problem = pinned.writer_problem(writer_id) if pinned is not None else ""
        if problem:
            self._report(
                FindingKind.KEY_OUTSIDE_VALIDITY,
                Severity.TAMPERING,
                f"chain signed with key id {key_id.hex()} for a writer the keyring does not allow it: {problem}",
                first=sequence,
                object_key=key.key,
            )

    def _note_supersession(self, key: SegmentKey, sequence: int, payload: archive_pb2.GenesisPayload) -> None:
        old = Supersession(
            chain_id=payload.supersedes_chain_id.hex(),
            last_sequence=payload.superseded_last_sequence,
            covered_until=payload.superseded_covered_until,
            reason=payload.reason,
            writer_id=payload.writer_id,
            head_sha256=payload.superseded_head_sha256.hex(),
            checkpoint_sha256=payload.superseded_checkpoint_sha256.hex(),
            checkpoint_number=payload.superseded_checkpoint_number,
            format_version=self.format_version,
        )
        self.supersedes = old
        writer = f" (writer id {old.writer_id})" if old.writer_id else ""
        reason = old.reason or "(no reason given)"
        self._report(
            FindingKind.SUPERSEDED_CHAIN,
            Severity.INFO,
            f"chain {self.chain_id_hex} supersedes chain {old.chain_id}{writer}: {reason}; {old.chain_id} "
            f"was seen up to seq {old.last_sequence}, checkpoint-covered up to {old.covered_until}",
            first=sequence,
            object_key=key.key,
        )

    def _report_unknown_key(self, key_id: bytes, sequence: int | None, object_key: str, what: str) -> None:
        """One finding per unpinned key id and chain, with counts (a wrong --public-key must say so
        once, not flood the report with a line per object)."""
        tally = self._unpinned.get(key_id)
        if tally is None:
            listed = len(self.findings) < self._folded.limit
            tally = self._unpinned[key_id] = [len(self.findings) if listed else -1, 0, 0]
            kind = FindingKind.UNKNOWN_KEY
            message = "" if listed else f"records and checkpoints are signed with key id {key_id.hex()}, not pinned"
            self._report(kind, Severity.TAMPERING, message, first=sequence, last=sequence, object_key=object_key)
        tally[1 if what == "record" else 2] += 1
        if tally[0] < 0:
            return  # counted among the findings not listed one by one
        finding = self.findings[tally[0]]
        first, last = finding.first_sequence, finding.last_sequence
        if sequence is not None:
            first = sequence if first is None else min(first, sequence)
            last = sequence if last is None else max(last, sequence)
        pinned = ", ".join(self._keyring.key_ids) or "none"
        self.findings[tally[0]] = dataclasses.replace(
            finding,
            first_sequence=first,
            last_sequence=last,
            message=f"{tally[1]} record(s) and {tally[2]} checkpoint(s) are signed with key id {key_id.hex()}, which "
            f"is not pinned (pinned key ids: {pinned}); nothing they say was verified",
        )

    def _report_outside_window(self, key: SegmentKey, key_id: bytes, sequence: int, problem: str) -> None:
        """One finding per run of consecutive records outside their key's window in one object."""
        message = f"records sealed with key id {key_id.hex()} {problem}"
        last = self.findings[-1] if self.findings else None
        if (
            last is not None
            and last.kind is FindingKind.KEY_OUTSIDE_VALIDITY
            and last.object_key == key.key
            and last.message == message
            and last.last_sequence == sequence - 1
        ):
            self.findings[-1] = dataclasses.replace(last, last_sequence=sequence)
            return
        self._report(
            FindingKind.KEY_OUTSIDE_VALIDITY,
            Severity.TAMPERING,
            message,
            first=sequence,
            last=sequence,
            object_key=key.key,
        )

    def _check_duplicate(self, key: SegmentKey, item: _Item) -> None:
        previous = self._previous_item
        if previous is not None and previous.sequence == item.sequence and previous.entry == item.entry:
            message = f"a second copy of seq {item.sequence} at position {item.position}"
            kind = FindingKind.INSERTED_RECORD
        elif self._signature_ok(item):
            message = "a second, validly signed record with an already used sequence number"
            kind = FindingKind.FORKED_CHAIN
        else:
            message = f"a record with an already used sequence number and a bad signature at position {item.position}"
            kind = FindingKind.INSERTED_RECORD
        self._report(kind, Severity.TAMPERING, message, first=item.sequence, object_key=key.key)

    def _explain_broken_link(self, key: SegmentKey, item: _Item) -> None:
        previous = self._previous_item
        if not self._signature_ok(item):
            self._report(
                FindingKind.MODIFIED_RECORD,
                Severity.TAMPERING,
                "record signature does not match its content",
                first=item.sequence,
                object_key=key.key,
            )
        elif previous is not None and not self._signature_ok(previous):
            self._report(
                FindingKind.MODIFIED_RECORD,
                Severity.TAMPERING,
                "record signature does not match its content (the next record's link does not match it either)",
                first=previous.sequence,
                object_key=self._previous_object,
            )
        else:
            self._report(
                FindingKind.FORKED_CHAIN,
                Severity.TAMPERING,
                "validly signed record does not link to the validly signed record before it",
                first=item.sequence,
                object_key=key.key,
            )

    def _report_gap(self, key: SegmentKey, sequence: int, first_in_segment: bool) -> None:
        first, last = self._expected, sequence - 1
        unreadable = self._unreadable
        self._unreadable = None
        if unreadable is not None and unreadable[0] == first:
            return  # the unreadable object that should hold them is already reported
        severity = self._loss_or_tampering(last)
        cause = (
            "removed after a checkpoint vouched for them"
            if severity is Severity.TAMPERING
            else ("not covered by any checkpoint: lost before archiving, or removed")
        )
        if first_in_segment and key.first_sequence == sequence:
            missing = [s.ref.object_key for s in self.ledger.unseen_overlapping(first, last)]
            where = f"; checkpoints name {', '.join(missing)}" if missing else ""
            self._report(
                FindingKind.MISSING_SEGMENT,
                severity,
                f"no segment holds seq {first}-{last} ({cause}){where}",
                first=first,
                last=last,
                object_key=missing[0] if missing else "",
            )
        else:
            self.ledger.unseen_overlapping(first, last)
            self._report(
                FindingKind.DELETED_RECORDS,
                severity,
                f"records missing from the segment ({cause})",
                first=first,
                last=last,
                object_key=key.key,
            )

    # -- end ------------------------------------------------------------------------------------
    def finish(self) -> ChainSummary:
        self._walk_deferred(before=2**64)
        self._report_passed_listings()
        for sequence, claim in self.ledger.drop_claims_below(2**64):
            self._check_checkpoint_keys(sequence, claim.signers)
        self._resends.finish()
        self._report_run_key_checkpoints()
        last = self._expected - 1
        covered = self.ledger.covered_until
        unreadable = self._unreadable
        if last < covered and not (unreadable is not None and unreadable[0] == last + 1):
            missing = [s.ref.object_key for s in self.ledger.pop_all_unseen() if s.ref.last_sequence > last]
            detail = f"; missing objects: {', '.join(missing)}" if missing else ""
            claim_key = self.ledger.newest_key
            self._report(
                FindingKind.TRUNCATED_CHAIN,
                Severity.TAMPERING,
                f"the archive ends at seq {last} but {claim_key} vouches for records up to {covered}{detail}",
                first=last + 1,
                last=covered,
                object_key=missing[0] if missing else claim_key,
            )
        elif self._last_accepted > covered:
            # Only accepted records: ones skipped (unpinned key, bad signature) have findings of their own.
            self._report(
                FindingKind.UNCOVERED_TAIL,
                Severity.WARNING,
                UNCOVERED_TAIL_MESSAGE,
                first=covered + 1,
                last=self._last_accepted,
                object_key=self._previous_object,
            )
        if self.format_version == 1:
            self._report(
                FindingKind.FORMAT_V1,
                Severity.INFO,
                "chain written in format version 1, verified under its rules: it names no archive (a copy of it "
                "elsewhere verifies too), has no key rotation statement, no final checkpoint, and a successor "
                "chain's genesis does not name its head",
            )
        self.findings += self._folded.summaries()
        current = self.keys.current
        return ChainSummary(
            chain_id=self.chain_id_hex,
            records=self.records,
            last_sequence=last if last >= 0 else None,
            covered_until=covered if covered >= 0 else None,
            segments=self.segments,
            checkpoints=self.ledger.count,
            newest_checkpoint_unix_nano=self.ledger.newest_time,
            key_ids=tuple(sorted(k.hex() for k in self._key_ids)),
            supersedes=self.supersedes,
            restart_marks=self._restart_marks,
            format_version=self.format_version,
            head_sha256=self._last_hash.hex() if last >= 0 and self._previous_hash is not None else "",
            newest_checkpoint_number=self.ledger.newest_number,
            newest_checkpoint_sha256=self.ledger.newest_sha256.hex(),
            final=self.ledger.newest_final,
            archive_id=self.archive_id,
            writer_id=self.writer_id,
            signing_key_id=current.hex() if current is not None else "",
            newest_segment_key=self._newest_segment_key,
            resumed_from=self.ledger.resumed_from,
        )

    def _report_run_key_checkpoints(self) -> None:
        """13.2 step 5b: checkpoints signed with a run key of this chain. They were counted as signed by
        an unpinned key when read (before the walk met the certification); a run key vouches for no
        checkpoint, so each such key's finding becomes ``run-key-checkpoint``."""
        for key_id, (index, records, checkpoints) in self._unpinned.items():
            run = self._run_keys.get(key_id)
            if run is None or not checkpoints or index < 0:
                continue
            finding = self.findings[index]
            self.findings[index] = dataclasses.replace(
                finding,
                kind=FindingKind.RUN_KEY_CHECKPOINT,
                message=f"{checkpoints} checkpoint(s) and {records} record(s) read before its certification are "
                f"signed with run key id {key_id.hex()} (certified at seq {run.sequence}): only the chain's key signs "
                "checkpoints, so whoever held the run key wrote them; nothing they say was trusted",
            )

    def resume_point(self) -> ResumePoint | None:
        """Where a later run may resume: the newest valid checkpoint this run walked past (or the one
        it resumed from)."""
        newest = self.ledger.newest
        if newest is None:
            return self._resumed
        checkpoint = newest.checkpoint
        if checkpoint.last_sequence >= self._expected:
            return None  # the walk never reached it (findings say why)
        run = self._run_at(checkpoint.last_sequence + 1)
        return ResumePoint(
            checkpoint_number=checkpoint.checkpoint_number,
            checkpoint_sha256=newest.sha256,
            last_sequence=checkpoint.last_sequence,
            head_sha256=checkpoint.head_sha256,
            key_id=self.keys.key_at(checkpoint.last_sequence + 1) or checkpoint.key_id,
            time_unix_nano=checkpoint.time_unix_nano,
            final=checkpoint.final,
            run_public_key=run.key.raw if run is not None else b"",
            run_key_sequence=run.sequence if run is not None else 0,
        )

    def _run_at(self, sequence: int) -> RunKey | None:
        """The run key whose run holds ``sequence`` (certified before it, not ended at or before it)."""
        for key_id, run in self._run_keys.items():
            end = self._run_ends.get(key_id)
            if run.sequence < sequence and (end is None or sequence < end):
                return run
        return None
