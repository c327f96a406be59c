"""Checkpoints of one chain (proto/FORMAT.md 11 and 13.2), taken one object at a time.

``CheckpointLedger`` is fed a chain's checkpoint objects in key order (ascending checkpoint number)
and keeps only what the segment walk still needs: the head claims and segment digests ahead of it,
the newest valid checkpoint, and ``covered_until``. The driver feeds checkpoints just ahead of the
segments they describe, so memory follows the part of the chain being checked, not its length.

A checkpoint is *valid* when it parses, is signed by a pinned key, and its content matches its
object key; only valid checkpoints count. Whether its key is the one the chain is bound to at
that point is checked by ``verify.links``, which knows the chain's keys.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from collector_ext.errors import MalformedObjectError
from collector_ext.seal.checkpoint import DecodedCheckpoint, SegmentRef, decode_checkpoint
from collector_ext.seal.layout import CheckpointKey
from collector_ext.verify.findings import FindingKind, Severity
from collector_ext.verify.keys import Keyring

# (kind, severity, message, first, last, object key)
Reporter = Callable[[FindingKind, Severity, str, int | None, int | None, str], None]
# (unpinned key id, sequence, object key, "checkpoint" or "record"): one finding per key id and chain.
UnknownKeyReporter = Callable[[bytes, int | None, str, str], None]


@dataclass(frozen=True, slots=True)
class UnreadableObject:
    """An object the driver could not read as an archive object, and why (a finding)."""

    kind: FindingKind
    message: str


@dataclass(slots=True)
class HeadClaim:
    """Checkpoints that say entry ``sequence`` hashes to ``head``; the first claim wins."""

    head: bytes
    checkpoint_key: str
    signers: list[tuple[bytes, str]] = field(default_factory=list)  # (key id, checkpoint key)


@dataclass(slots=True)
class ListedSegment:
    """A segment digest from a valid checkpoint, with the key that signed that checkpoint."""

    ref: SegmentRef
    checkpoint_key: str
    key_id: bytes
    seen: bool = False
    reported: bool = False


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where an earlier verification stopped (``--state``): its newest verified checkpoint."""

    checkpoint_number: int
    checkpoint_sha256: bytes
    last_sequence: int
    head_sha256: bytes
    key_id: bytes
    time_unix_nano: int
    final: bool
    # The run key whose run continues past the checkpoint (FORMAT.md 10.3), and the sequence number of
    # its certification (by ``key_id``); empty when no run key signs the records after it.
    run_public_key: bytes = b""
    run_key_sequence: int = 0


class CheckpointLedger:
    def __init__(
        self, chain_id: bytes, keyring: Keyring, report: Reporter, report_unknown_key: UnknownKeyReporter
    ) -> None:
        self._chain_id = chain_id
        self._keys = keyring
        self._report = report
        self._report_unknown_key = report_unknown_key
        self.count = 0
        self.signatures_checked = 0
        self.covered_until = -1
        self.newest: DecodedCheckpoint | None = None
        self.newest_key = ""
        self.newest_number: int | None = None
        self.newest_sha256 = b""
        self.newest_time: int | None = None
        self.newest_final = False
        self.versions: set[int] = set()
        self._previous_number: int | None = None
        self._previous_sha256 = b""
        self._previous_body = b""
        self._previous_last = -1
        self._newest_claim: tuple[int, bytes, str] | None = None  # (sequence, head, checkpoint key)
        self._claims: dict[int, HeadClaim] = {}
        self._listed: dict[str, ListedSegment] = {}
        self._by_first: list[tuple[int, int, str]] = []  # heap of (first, last, object key)
        self.resumed_from: int | None = None

    # -- feeding ------------------------------------------------------------------------------
    def resume(self, point: ResumePoint) -> None:
        """Continue after a checkpoint an earlier run verified (its successor must name it)."""
        self.resumed_from = point.checkpoint_number
        self._previous_number = point.checkpoint_number
        self._previous_sha256 = point.checkpoint_sha256
        self._previous_last = point.last_sequence
        self._newest_claim = (point.last_sequence, point.head_sha256, f"checkpoint {point.checkpoint_number}")
        self.covered_until = point.last_sequence
        self.newest_number = point.checkpoint_number
        self.newest_sha256 = point.checkpoint_sha256
        self.newest_time = point.time_unix_nano
        self.newest_final = point.final

    def add(self, key: CheckpointKey, data: bytes | UnreadableObject) -> DecodedCheckpoint | None:
        """Check one checkpoint object; returns it when valid and taken into the ledger."""
        if isinstance(data, UnreadableObject):
            self._report(data.kind, Severity.TAMPERING, data.message, None, None, key.key)
            return None
        decoded = self._authenticate(key, data)
        if decoded is None:
            return None
        checkpoint = decoded.checkpoint
        number = checkpoint.checkpoint_number
        if number == self._previous_number and self.resumed_from != number:
            # Same number as the previous valid checkpoint (keys sort by number, so they are adjacent).
            if decoded.body != self._previous_body:
                self._report(
                    FindingKind.FORKED_CHAIN,
                    Severity.TAMPERING,
                    f"two different validly signed checkpoints carry number {number}",
                    checkpoint.last_sequence,
                    None,
                    key.key,
                )
            return None
        if self.resumed_from is not None and number <= self.resumed_from:
            return None  # the earlier run verified it; the driver lists from there on
        self._check_sequence(key.key, decoded)
        self._take(key.key, decoded)
        return decoded

    def _authenticate(self, key: CheckpointKey, data: bytes) -> DecodedCheckpoint | None:
        """Steps 13.2.1-5a: parse, pinned key, signature, content against key, appended bytes, window."""
        try:
            decoded = decode_checkpoint(data)
        except MalformedObjectError as exc:
            text = str(exc) if str(exc).startswith("checkpoint") else f"checkpoint {exc}"
            self._report(FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, text, None, None, key.key)
            return None
        checkpoint = decoded.checkpoint
        pinned = self._keys.pinned(checkpoint.key_id)
        if pinned is None:
            self._report_unknown_key(checkpoint.key_id, checkpoint.last_sequence, key.key, "checkpoint")
            return None
        self.signatures_checked += 1
        if not decoded.is_signed_by(pinned.key):
            self._report(
                FindingKind.FORGED_CHECKPOINT,
                Severity.TAMPERING,
                "checkpoint signature does not verify",
                checkpoint.last_sequence,
                None,
                key.key,
            )
            return None
        if (
            checkpoint.chain_id != self._chain_id
            or checkpoint.checkpoint_number != key.checkpoint_number
            or checkpoint.last_sequence != key.last_sequence
        ):
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"checkpoint content (chain {checkpoint.chain_id.hex()}, number {checkpoint.checkpoint_number}, "
                f"seq {checkpoint.last_sequence}) does not match its object key",
                None,
                None,
                key.key,
            )
            return None
        if checkpoint.final and checkpoint.format_version < 2:
            self._report(
                FindingKind.MALFORMED_OBJECT,
                Severity.TAMPERING,
                "a format version 1 checkpoint cannot be final",
                None,
                None,
                key.key,
            )
            return None
        if decoded.appended:
            self._report(
                FindingKind.APPENDED_BYTES,
                Severity.TAMPERING,
                f"{decoded.appended} bytes appended after the checkpoint",
                None,
                None,
                key.key,
            )
        problem = pinned.time_problem(checkpoint.time_unix_nano)
        if problem:
            self._report(
                FindingKind.KEY_OUTSIDE_VALIDITY,
                Severity.TAMPERING,
                f"checkpoint signed with key id {checkpoint.key_id.hex()} at a time {problem}",
                checkpoint.last_sequence,
                None,
                key.key,
            )
        return decoded

    def _check_sequence(self, object_key: str, decoded: DecodedCheckpoint) -> None:
        """Steps 13.2.6-9: numbering, the checkpoints' own hash chain, coverage, head claims."""
        checkpoint = decoded.checkpoint
        number = checkpoint.checkpoint_number
        expected_number = 0 if self._previous_number is None else self._previous_number + 1
        if number != expected_number:
            self._report(
                FindingKind.MISSING_CHECKPOINT,
                Severity.TAMPERING,
                f"checkpoint number(s) {expected_number}-{number - 1} are missing before {object_key}",
                None,
                None,
                object_key,
            )
        elif checkpoint.previous_checkpoint_sha256 != self._previous_sha256:
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"checkpoint {number} does not name checkpoint {number - 1} as its predecessor"
                if number
                else "checkpoint 0 names a predecessor",
                None,
                None,
                object_key,
            )
        if checkpoint.last_sequence < self._previous_last:
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"checkpoint {number} covers fewer records (to seq {checkpoint.last_sequence}) than the checkpoint "
                f"before it (to seq {self._previous_last})",
                checkpoint.last_sequence,
                None,
                object_key,
            )
        newest = self._newest_claim
        if newest is not None and newest[0] == checkpoint.last_sequence and newest[1] != checkpoint.head_sha256:
            self._report(
                FindingKind.FORKED_CHAIN,
                Severity.TAMPERING,
                f"checkpoints {newest[2]} and {object_key} name different heads for one sequence number",
                checkpoint.last_sequence,
                None,
                object_key,
            )

    def _take(self, object_key: str, decoded: DecodedCheckpoint) -> None:
        checkpoint = decoded.checkpoint
        self.count += 1
        self.versions.add(checkpoint.format_version)
        claim = self._claims.get(checkpoint.last_sequence)
        if claim is None:
            claim = self._claims[checkpoint.last_sequence] = HeadClaim(checkpoint.head_sha256, object_key)
        claim.signers.append((checkpoint.key_id, object_key))
        if self._newest_claim is None or self._newest_claim[0] != checkpoint.last_sequence:
            self._newest_claim = (checkpoint.last_sequence, checkpoint.head_sha256, object_key)
        for ref in checkpoint.segments:
            if ref.object_key not in self._listed:
                self._listed[ref.object_key] = ListedSegment(ref, object_key, checkpoint.key_id)
                heapq.heappush(self._by_first, (ref.first_sequence, ref.last_sequence, ref.object_key))
        self.covered_until = max(self.covered_until, checkpoint.last_sequence)
        self._previous_number = checkpoint.checkpoint_number
        self._previous_sha256 = decoded.sha256
        self._previous_body = decoded.body
        self._previous_last = max(self._previous_last, checkpoint.last_sequence)
        if self.newest_number is None or checkpoint.checkpoint_number >= self.newest_number:
            self.newest = decoded
            self.newest_key = object_key
            self.newest_number = checkpoint.checkpoint_number
            self.newest_sha256 = decoded.sha256
            self.newest_time = checkpoint.time_unix_nano
            self.newest_final = checkpoint.final

    # -- what the segment walk asks -----------------------------------------------------------
    @property
    def claims(self) -> Mapping[int, HeadClaim]:
        """Head claims ahead of the walk, by sequence number (read-only; the walk takes them)."""
        return self._claims

    def take_claim(self, sequence: int) -> HeadClaim | None:
        """The claim for ``sequence``, forgotten once the walk has checked it."""
        return self._claims.pop(sequence, None)

    def drop_claims_below(self, sequence: int) -> list[tuple[int, HeadClaim]]:
        """Claims the walk skipped (their entries were missing or unusable)."""
        passed = [(s, c) for s, c in self._claims.items() if s < sequence]
        for s, _ in passed:
            del self._claims[s]
        return passed

    def listed(self, object_key: str) -> ListedSegment | None:
        return self._listed.get(object_key)

    def mark_seen(self, object_key: str) -> None:
        listed = self._listed.get(object_key)
        if listed is not None:
            listed.seen = True

    def unseen_overlapping(self, first: int, last: int) -> list[ListedSegment]:
        """Listed segments not seen so far that hold any of ``first..last`` (marked reported).

        The walk reports gaps in ascending order, so the digests that start before ``last`` are
        taken off the heap: each digest is looked at a bounded number of times (O(n log n) in all,
        however many gaps there are)."""
        found: list[ListedSegment] = []
        spanning: list[tuple[int, int, str]] = []
        while self._by_first and self._by_first[0][0] <= last:
            item = heapq.heappop(self._by_first)
            listed = self._listed.get(item[2])
            if listed is None:
                continue
            if not listed.seen and not listed.reported and listed.ref.last_sequence >= first:
                listed.reported = True
                found.append(listed)
            if listed.ref.last_sequence > last:
                spanning.append(item)  # still ahead of the walk in part
            else:
                del self._listed[item[2]]
        for item in spanning:
            heapq.heappush(self._by_first, item)
        return sorted(found, key=lambda s: (s.ref.first_sequence, s.ref.object_key))

    def pop_passed(self, expected: int) -> list[ListedSegment]:
        """Listed segments wholly before ``expected`` that were never seen nor reported; each is
        forgotten once passed, so the ledger holds only digests ahead of the walk."""
        passed: list[ListedSegment] = []
        while self._by_first and self._by_first[0][1] < expected:
            _, _, object_key = heapq.heappop(self._by_first)
            listed = self._listed.pop(object_key, None)
            if listed is not None and not listed.seen and not listed.reported:
                passed.append(listed)
        return passed

    def pop_all_unseen(self) -> list[ListedSegment]:
        unseen = [s for s in self._listed.values() if not s.seen and not s.reported]
        self._listed.clear()
        self._by_first.clear()
        return sorted(unseen, key=lambda s: (s.ref.first_sequence, s.ref.object_key))
