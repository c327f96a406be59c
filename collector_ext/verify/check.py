"""The pure verification core: one chain at a time, checkpoints first, then segments in order.

``ChainChecker`` is fed the bytes of a chain's checkpoint objects, then of its segment objects in
sequence order, and keeps only what it needs to continue (expected sequence number, last hash), so a
chain of any length is checked in constant memory. It never raises on bad data: every problem
becomes a ``Finding`` with its location, and checking goes on.

How a record is proven authentic (proto/FORMAT.md, "Verification"):

- a segment whose SHA-256 matches the digest in a validly signed checkpoint is authentic as a whole,
  signatures included, so its records' own signatures need not be checked one by one (this is what
  makes a clean archive fast to verify);
- every other segment (not yet covered by a checkpoint, or altered) has every record signature
  checked, which also pinpoints what was altered;
- ``check_all_signatures`` checks every record signature regardless.

Besides problems, the checker notes how a valid chain came to be, as INFO findings: each restart
mark (the writer stopped and continued the chain), a genesis that supersedes another chain (the
writer lost its local state; ``verify.supersede`` relates the two chains), and log records the
collector resent and the sidecar sealed twice (``verify.resends``).

Reading objects, threads and progress bars belong to ``verify.run``; this module does no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.checkpoint import DecodedCheckpoint, SegmentRef, decode_checkpoint
from collector_ext.seal.entry import (
    CHAIN_ID_SIZE,
    ENTRY_HASH_PREFIX,
    ENTRY_HEADER_SIZE,
    FORMAT_VERSION,
    KEY_ID_SLICE,
    PREVIOUS_HASH_SLICE,
    RECORD_SIGNATURE_PREFIX,
    SEQUENCE_SLICE,
    ZERO_HASH,
    EntryKind,
    entry_hash,
    entry_payload,
)
from collector_ext.seal.keys import PublicKey, key_id_for
from collector_ext.seal.layout import CheckpointKey, SegmentKey
from collector_ext.seal.segment import decode_segment
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, Supersession
from collector_ext.verify.resends import ResendTracker

# The uncovered-tail message of a chain that nothing supersedes (verify.supersede words it
# differently when a newer chain took over).
UNCOVERED_TAIL_MESSAGE = (
    "records after the newest checkpoint, not yet covered by a checkpoint: each record's signature "
    "verified, but nothing yet proves that no record followed them (normal while the writer runs, which "
    "writes a checkpoint within the checkpoint interval; after a crash, until the writer restarts)"
)

# Told about every stored record (entry, entry hash, signature, object key), e.g. to cross-check Loki.
RecordObserver = Callable[[bytes, bytes, bytes, str], None]

# Version 1, kind LOG_RECORD, reserved 0: the first four bytes of every ordinary entry. Any other
# entry (the genesis, a restart mark) sends its segment to the per-record path.
_LOG_RECORD_HEADER_START = FORMAT_VERSION.to_bytes(2, "big") + bytes([EntryKind.LOG_RECORD, 0])

# (public key, signature, message) triples in, one bool per triple out. verify.run passes a
# parallel implementation; the default checks them one after another.
SignatureBatchChecker = Callable[[Sequence[tuple[PublicKey, bytes, bytes]]], list[bool]]


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


# The parsed payload of an entry that is not a log record.
_SpecialPayload = archive_pb2.GenesisPayload | archive_pb2.RestartPayload


@dataclass(frozen=True, slots=True)
class _HeadClaim:
    head: bytes
    checkpoint_key: str


class ChainChecker:
    """Checks one chain. Call ``add_checkpoints`` once, ``add_segment`` per segment in order, ``finish``."""

    def __init__(
        self,
        chain_id_hex: str,
        trusted_keys: Mapping[bytes, PublicKey],
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
        self._keys = trusted_keys
        self._check_all = check_all_signatures
        self._check_batch = check_signature_batch
        self._observer = record_observer
        self.findings: list[Finding] = []
        self.records = 0
        self.signatures_checked = 0
        self.segments = 0
        self._expected = 0
        self._previous_hash: bytes | None = ZERO_HASH
        self._previous_item: _Item | None = None
        self._previous_object = ""
        self._heads: dict[int, _HeadClaim] = {}
        self._segment_refs: dict[str, tuple[SegmentRef, str]] = {}
        self._seen_segment_keys: set[str] = set()
        self._covered_until = -1
        self._checkpoints = 0
        self._newest_checkpoint_time: int | None = None
        self._key_ids: set[bytes] = set()
        self.supersedes: Supersession | None = None
        self._restart_marks = 0
        self._segment_marks: list[int] = []  # restart marks accepted in the segment being checked
        self._resends = ResendTracker(chain_id_hex, self.findings.append, report_all=report_resends)

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
        self.findings.append(Finding(kind, severity, message, self.chain_id_hex, first, last, object_key))

    def _loss_or_tampering(self, last_missing: int) -> Severity:
        """Records a checkpoint vouched for are missing by tampering; others may be lost in a crash."""
        return Severity.TAMPERING if last_missing <= self._covered_until else Severity.LOSS

    # -- checkpoints ----------------------------------------------------------------------------
    def add_checkpoints(self, objects: Iterable[tuple[CheckpointKey, bytes]]) -> None:
        """Decode and authenticate every checkpoint of the chain; keep the valid ones' claims."""
        valid: dict[int, tuple[DecodedCheckpoint, str]] = {}
        for key, data in objects:
            decoded = self._decode_checkpoint(key, data)
            if decoded is None:
                continue
            number = decoded.checkpoint.checkpoint_number
            if number in valid and valid[number][0].body != decoded.body:
                self._report(
                    FindingKind.FORKED_CHAIN,
                    Severity.TAMPERING,
                    f"two different validly signed checkpoints carry number {number}",
                    first=decoded.checkpoint.last_sequence,
                    object_key=key.key,
                )
                continue
            valid[number] = (decoded, key.key)
        self._checkpoints = len(valid)
        previous: tuple[DecodedCheckpoint, str] | None = None
        for number in sorted(valid):
            decoded, object_key = valid[number]
            checkpoint = decoded.checkpoint
            expected_number = 0 if previous is None else previous[0].checkpoint.checkpoint_number + 1
            if number != expected_number:
                self._report(
                    FindingKind.MISSING_CHECKPOINT,
                    Severity.TAMPERING,
                    f"checkpoint number(s) {expected_number}-{number - 1} are missing before {object_key}",
                    object_key=object_key,
                )
            elif checkpoint.previous_checkpoint_sha256 != (b"" if previous is None else previous[0].sha256):
                self._report(
                    FindingKind.CHECKPOINT_MISMATCH,
                    Severity.TAMPERING,
                    f"checkpoint {number} does not name checkpoint {number - 1} as its predecessor"
                    if number
                    else "checkpoint 0 names a predecessor",
                    object_key=object_key,
                )
            if previous is not None and checkpoint.last_sequence < previous[0].checkpoint.last_sequence:
                self._report(
                    FindingKind.CHECKPOINT_MISMATCH,
                    Severity.TAMPERING,
                    f"checkpoint {number} covers fewer records than checkpoint {number - 1}",
                    first=checkpoint.last_sequence,
                    object_key=object_key,
                )
            claim = self._heads.get(checkpoint.last_sequence)
            if claim is not None and claim.head != checkpoint.head_sha256:
                self._report(
                    FindingKind.FORKED_CHAIN,
                    Severity.TAMPERING,
                    f"checkpoints {claim.checkpoint_key} and {object_key} name different heads for one sequence number",
                    first=checkpoint.last_sequence,
                    object_key=object_key,
                )
            self._heads.setdefault(checkpoint.last_sequence, _HeadClaim(checkpoint.head_sha256, object_key))
            for ref in checkpoint.segments:
                self._segment_refs[ref.object_key] = (ref, object_key)
            self._covered_until = max(self._covered_until, checkpoint.last_sequence)
            newest = self._newest_checkpoint_time
            self._newest_checkpoint_time = max(newest or 0, checkpoint.time_unix_nano)
            previous = (decoded, object_key)

    def _decode_checkpoint(self, key: CheckpointKey, data: bytes) -> DecodedCheckpoint | None:
        try:
            decoded = decode_checkpoint(data)
        except MalformedObjectError as exc:
            self._report(FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, f"checkpoint {exc}", object_key=key.key)
            return None
        checkpoint = decoded.checkpoint
        public_key = self._keys.get(checkpoint.key_id)
        if public_key is None:
            self._report(
                FindingKind.UNKNOWN_KEY,
                Severity.TAMPERING,
                f"checkpoint signed with key id {checkpoint.key_id.hex()}, which is not pinned",
                first=checkpoint.last_sequence,
                object_key=key.key,
            )
            return None
        self.signatures_checked += 1
        if not decoded.is_signed_by(public_key):
            self._report(
                FindingKind.FORGED_CHECKPOINT,
                Severity.TAMPERING,
                "checkpoint signature does not verify",
                first=checkpoint.last_sequence,
                object_key=key.key,
            )
            return None
        if (
            checkpoint.chain_id != self.chain_id
            or checkpoint.checkpoint_number != key.checkpoint_number
            or checkpoint.last_sequence != key.last_sequence
        ):
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"checkpoint content (chain {checkpoint.chain_id.hex()}, number {checkpoint.checkpoint_number}, "
                f"seq {checkpoint.last_sequence}) does not match its object key",
                object_key=key.key,
            )
            return None
        if decoded.appended:
            self._report(
                FindingKind.APPENDED_BYTES,
                Severity.TAMPERING,
                f"{decoded.appended} bytes appended after the checkpoint",
                object_key=key.key,
            )
        self._key_ids.add(checkpoint.key_id)
        return decoded

    # -- segments -------------------------------------------------------------------------------
    def add_segment(self, key: SegmentKey, data: bytes) -> None:
        """Check one segment object; segments must come in ascending sequence order."""
        self.segments += 1
        self._seen_segment_keys.add(key.key)
        self._segment_marks.clear()
        findings_before = len(self.findings)
        try:
            segment = decode_segment(data)
        except MalformedObjectError as exc:
            self._report(
                FindingKind.MALFORMED_OBJECT,
                Severity.TAMPERING,
                f"segment {exc}; its records (seq {key.first_sequence}-{key.last_sequence} by its name) are unreadable",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            self._skip_to(key.last_sequence)
            return
        authentic = self._check_segment_digest(key, data, segment.framed_size, segment.appended)
        if segment.chain_id != self.chain_id:
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"segment belongs to chain {segment.chain_id.hex()}, not to the chain it is stored under",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
            self._skip_to(key.last_sequence)
            return
        header_mismatch = segment.first_sequence != key.first_sequence or segment.record_count != (
            key.last_sequence - key.first_sequence + 1
        )
        if self._observer is not None:
            for record in segment.records:
                self._observer(record.entry, entry_hash(record.entry), record.signature, key.key)
        verify_signatures = self._check_all or not authentic
        first = self._expected
        clean = not verify_signatures and self._continue_clean_run(segment.records)
        if not clean:
            self._check_records(key, segment.records, verify_signatures)
        self._resends.add_segment(key.key, segment.records, self._segment_marks, clean_from=first if clean else None)
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
        if header_mismatch and len(self.findings) == findings_before:
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"segment header says seq {segment.first_sequence}-"
                f"{segment.first_sequence + segment.record_count - 1}, its object key says otherwise",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )
        if not authentic and len(self.findings) == findings_before and key.key in self._segment_refs:
            checkpoint_key = self._segment_refs[key.key][1]
            self._report(
                FindingKind.REPLACED_SEGMENT,
                Severity.TAMPERING,
                f"object differs from the one recorded in {checkpoint_key} (its records verify one by one)",
                first=key.first_sequence,
                last=key.last_sequence,
                object_key=key.key,
            )

    def _check_segment_digest(self, key: SegmentKey, data: bytes, framed_size: int, appended: int) -> bool:
        """True when the object (or its framed part) is byte-for-byte what a checkpoint recorded."""
        recorded = self._segment_refs.get(key.key)
        if appended:
            self._report(
                FindingKind.APPENDED_BYTES,
                Severity.TAMPERING,
                f"{appended} bytes appended after the segment's end at offset {framed_size}",
                object_key=key.key,
            )
        if recorded is None:
            return False
        ref = recorded[0]
        framed = data if not appended else data[:framed_size]
        return ref.size == len(framed) and hashlib.sha256(framed).digest() == ref.sha256

    def _skip_to(self, last_sequence: int) -> None:
        if last_sequence >= self._expected:
            self._expected = last_sequence + 1
            self._previous_hash = None
            self._previous_item = None

    def _continue_clean_run(self, records: Sequence[archive_pb2.SealedRecord]) -> bool:
        """Fast path for a segment already proven authentic by a checkpoint digest: True (and the
        state moved on) when every record simply continues the chain; False, with nothing changed,
        when anything needs a closer look by ``_check_records``."""
        expected = self._expected
        previous = self._previous_hash
        if previous is None or not records:
            return False
        chain_id = self.chain_id
        keys = self._keys
        heads = self._heads
        base = hashlib.sha256(ENTRY_HASH_PREFIX)
        plain_header = _LOG_RECORD_HEADER_START
        key_id = b""
        for record in records:
            entry = record.entry
            if (
                entry[:4] != plain_header
                or entry[4:20] != chain_id
                or entry[SEQUENCE_SLICE] != expected.to_bytes(8, "big")
                or entry[PREVIOUS_HASH_SLICE] != previous
            ):
                return False
            if entry[KEY_ID_SLICE] != key_id:
                key_id = entry[KEY_ID_SLICE]
                if key_id not in keys:
                    return False
                self._key_ids.add(key_id)
            digest = base.copy()
            digest.update(entry)
            previous = digest.digest()
            claim = heads.get(expected)
            if claim is not None and claim.head != previous:
                return False
            expected += 1
        last = records[-1]
        self._previous_item = _Item(expected - 1, last.entry, last.signature, len(records) - 1, previous)
        self._expected = expected
        self._previous_hash = previous
        self.records += len(records)
        return True

    def _check_records(
        self, key: SegmentKey, records: Sequence[archive_pb2.SealedRecord], verify_signatures: bool
    ) -> None:
        items = [
            _Item(
                int.from_bytes(r.entry[SEQUENCE_SLICE], "big") if len(r.entry) >= ENTRY_HEADER_SIZE else -1,
                r.entry,
                r.signature,
                i,
            )
            for i, r in enumerate(records)
        ]
        self._check_items(key, items, verify_signatures=verify_signatures)

    def _check_items(self, key: SegmentKey, items: list[_Item], *, verify_signatures: bool) -> None:
        running_max = -1
        reordered = False
        for item in items:
            if item.sequence < running_max:
                reordered = True
                self._report(
                    FindingKind.REORDERED_RECORD,
                    Severity.TAMPERING,
                    f"record stored at position {item.position}, after seq {running_max}",
                    first=item.sequence,
                    object_key=key.key,
                )
            running_max = max(running_max, item.sequence)
        if reordered:
            items = sorted(items, key=lambda i: i.sequence)
        base = hashlib.sha256(ENTRY_HASH_PREFIX)
        for item in items:
            digest = base.copy()
            digest.update(item.entry)
            item.hash = digest.digest()
        if verify_signatures:
            self._verify_signatures(items)
        first_in_segment = True
        for item in items:
            self._check_item(key, item, first_in_segment)
            first_in_segment = False
        self.records += len(items)

    def _verify_signatures(self, items: Sequence[_Item]) -> None:
        batch: list[tuple[PublicKey, bytes, bytes]] = []
        targets: list[_Item] = []
        for item in items:
            public_key = self._keys.get(item.entry[KEY_ID_SLICE])
            if public_key is not None and len(item.entry) >= ENTRY_HEADER_SIZE:
                batch.append((public_key, item.signature, RECORD_SIGNATURE_PREFIX + item.hash))
                targets.append(item)
        for item, ok in zip(targets, self._check_batch(batch), strict=True):
            item.signature_ok = ok
        self.signatures_checked += len(batch)

    def _signature_ok(self, item: _Item) -> bool:
        if item.signature_ok is None:
            self._verify_signatures([item])
        return bool(item.signature_ok)

    def _check_item(self, key: SegmentKey, item: _Item, first_in_segment: bool) -> None:
        entry = item.entry
        sequence = item.sequence
        if len(entry) < ENTRY_HEADER_SIZE:
            self._report(
                FindingKind.MODIFIED_RECORD,
                Severity.TAMPERING,
                f"record at position {item.position} is too short to be an entry",
                first=self._expected,
                object_key=key.key,
            )
            self._skip_to(self._expected)
            return
        key_id = entry[KEY_ID_SLICE]
        if entry[4:20] != self.chain_id:
            self._report(
                FindingKind.INSERTED_RECORD,
                Severity.TAMPERING,
                f"record at position {item.position} belongs to chain {entry[4:20].hex()}",
                first=sequence,
                object_key=key.key,
            )
            return
        if key_id not in self._keys:
            self._report_unknown_key(key, key_id, sequence)
            self._skip_to(sequence)
            return
        self._key_ids.add(key_id)
        problem, special = _header_problem(entry, sequence)
        if problem:
            self._report(FindingKind.MALFORMED_OBJECT, Severity.TAMPERING, problem, first=sequence, object_key=key.key)
        if sequence < self._expected:
            self._check_duplicate(key, item)
            return
        if item.signature_ok is False:
            # The stored bytes are not what the key signed: the record (or its chain fields) changed.
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
        if sequence > self._expected:
            self._report_gap(key, sequence, first_in_segment)
        elif self._previous_hash is not None and entry[PREVIOUS_HASH_SLICE] != self._previous_hash:
            self._explain_broken_link(key, item)
        claim = self._heads.get(sequence)
        if claim is not None and claim.head != item.hash:
            self._report(
                FindingKind.CHECKPOINT_MISMATCH,
                Severity.TAMPERING,
                f"{claim.checkpoint_key} names a different hash for this record",
                first=sequence,
                object_key=key.key,
            )
        self._expected = sequence + 1
        self._previous_hash = item.hash
        self._previous_item = item
        self._previous_object = key.key
        if special is not None:
            self._note_special(key, sequence, special)

    def _note_special(self, key: SegmentKey, sequence: int, payload: _SpecialPayload) -> None:
        """A restart mark or a superseding genesis that was accepted into the chain: an INFO note."""
        if isinstance(payload, archive_pb2.RestartPayload):
            self._restart_marks += 1
            self._segment_marks.append(sequence)
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
        elif payload.supersedes_chain_id:
            old = Supersession(
                chain_id=payload.supersedes_chain_id.hex(),
                last_sequence=payload.superseded_last_sequence,
                covered_until=payload.superseded_covered_until,
                reason=payload.reason,
                writer_id=payload.writer_id,
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

    def _report_unknown_key(self, key: SegmentKey, key_id: bytes, sequence: int) -> None:
        """One finding per run of consecutive records with the same unpinned key in one object."""
        message = f"records signed with key id {key_id.hex()}, which is not pinned"
        last = self.findings[-1] if self.findings else None
        if (
            last is not None
            and last.kind is FindingKind.UNKNOWN_KEY
            and last.object_key == key.key
            and last.message == message
            and last.last_sequence == sequence - 1
        ):
            self.findings[-1] = dataclasses.replace(last, last_sequence=sequence)
            return
        self._report(
            FindingKind.UNKNOWN_KEY, Severity.TAMPERING, message, first=sequence, last=sequence, object_key=key.key
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
        severity = self._loss_or_tampering(last)
        cause = (
            "removed after a checkpoint vouched for them"
            if severity is Severity.TAMPERING
            else ("not covered by any checkpoint: lost before archiving, or removed")
        )
        if first_in_segment and key.first_sequence == sequence:
            missing = sorted(
                ref.object_key
                for ref, _ in self._segment_refs.values()
                if ref.first_sequence <= last
                and ref.last_sequence >= first
                and ref.object_key not in self._seen_segment_keys
            )
            where = f"; checkpoints name {', '.join(missing)}" if missing else ""
            self._report(
                FindingKind.MISSING_SEGMENT,
                severity,
                f"no segment holds seq {first}-{last} ({cause}){where}",
                first=first,
                last=last,
                object_key=missing[0] if missing else "",
            )
            self._seen_segment_keys.update(missing)
        else:
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
        self._resends.finish()
        last = self._expected - 1
        if last < self._covered_until:
            claim_key = next((c.checkpoint_key for s, c in sorted(self._heads.items()) if s == self._covered_until), "")
            missing = sorted(
                ref.object_key
                for ref, _ in self._segment_refs.values()
                if ref.last_sequence > last and ref.object_key not in self._seen_segment_keys
            )
            detail = f"; missing objects: {', '.join(missing)}" if missing else ""
            self._report(
                FindingKind.TRUNCATED_CHAIN,
                Severity.TAMPERING,
                f"the archive ends at seq {last} but {claim_key} vouches for records up to "
                f"{self._covered_until}{detail}",
                first=last + 1,
                last=self._covered_until,
                object_key=missing[0] if missing else claim_key,
            )
        elif last > self._covered_until:
            self._report(
                FindingKind.UNCOVERED_TAIL,
                Severity.WARNING,
                UNCOVERED_TAIL_MESSAGE,
                first=self._covered_until + 1,
                last=last,
                object_key=self._previous_object,
            )
        return ChainSummary(
            chain_id=self.chain_id_hex,
            records=self.records,
            last_sequence=last if last >= 0 else None,
            covered_until=self._covered_until if self._covered_until >= 0 else None,
            segments=self.segments,
            checkpoints=self._checkpoints,
            newest_checkpoint_unix_nano=self._newest_checkpoint_time,
            key_ids=tuple(sorted(k.hex() for k in self._key_ids)),
            supersedes=self.supersedes,
            restart_marks=self._restart_marks,
        )


def _header_problem(entry: bytes, sequence: int) -> tuple[str, _SpecialPayload | None]:
    """What is wrong with an entry's fixed header fields and kind beyond the chain links (or ''),
    and the parsed payload of a sound genesis or restart mark (the checker notes those)."""
    version, kind, reserved = int.from_bytes(entry[0:2], "big"), entry[2], entry[3]
    if version != FORMAT_VERSION:
        return f"entry format version {version} is not supported", None
    if reserved != 0:
        return f"reserved header byte is {reserved}, not 0", None
    if kind not in (EntryKind.LOG_RECORD, EntryKind.GENESIS, EntryKind.RESTART):
        return f"unknown entry kind {kind}", None
    if (sequence == 0) != (kind == EntryKind.GENESIS):
        if sequence == 0:
            return "entry 0 must be the genesis entry", None
        return "genesis entry after entry 0", None
    if kind == EntryKind.GENESIS:
        try:
            genesis = archive_pb2.GenesisPayload.FromString(entry_payload(entry))
        except DecodeError:
            return "genesis payload does not parse", None
        if key_id_for(genesis.public_key) != entry[KEY_ID_SLICE]:
            return "genesis entry names a public key that does not match its key id", None
        if len(genesis.supersedes_chain_id) not in (0, CHAIN_ID_SIZE):
            return f"genesis names a superseded chain id of {len(genesis.supersedes_chain_id)} bytes, not 16", None
        return "", genesis
    if kind == EntryKind.RESTART:
        try:
            return "", archive_pb2.RestartPayload.FromString(entry_payload(entry))
        except DecodeError:
            return "restart payload does not parse", None
    return "", None
