"""Builds small archives from the pure core, with full control, for verifier tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import ChainHead, chain_entries, genesis_payload, restart_payload, sign_entry_hashes
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, decode_checkpoint, sign_checkpoint
from collector_ext.seal.entry import FORMAT_VERSION, EntryKind, entry_hash
from collector_ext.seal.framing import SEGMENT_MAGIC, frame
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.seal.layout import checkpoint_key, segment_key
from collector_ext.seal.segment import decode_segment, encode_segment
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.run import VerifyOptions, check_archive
from tests.fakes import InMemoryArchive

BASE_TIME = 1_790_000_000_000_000_000  # a fixed instant in 2026, ns


@dataclass
class BuiltArchive:
    objects: dict[str, bytes]
    chain_id: bytes
    segment_keys: list[str] = field(default_factory=list)
    checkpoint_keys: list[str] = field(default_factory=list)
    head: ChainHead | None = None

    def entry_hash_at(self, sequence: int) -> bytes:
        for key in self.segment_keys:
            for record in decode_segment(self.objects[key]).records:
                if int.from_bytes(record.entry[20:28], "big") == sequence:
                    return entry_hash(record.entry)
        raise KeyError(sequence)

    def checkpoint_hash_at(self, number: int) -> bytes:
        return decode_checkpoint(self.objects[self.checkpoint_keys[number]]).sha256

    def segment_records(self, index: int) -> list[archive_pb2.SealedRecord]:
        return [
            archive_pb2.SealedRecord(entry=r.entry, signature=r.signature)
            for r in decode_segment(self.objects[self.segment_keys[index]]).records
        ]

    def rewrite_segment(
        self, index: int, records: list[archive_pb2.SealedRecord], *, record_count: int | None = None
    ) -> None:
        """Re-encode segment ``index`` with ``records`` (keeping its header unless told)."""
        key = self.segment_keys[index]
        old = decode_segment(self.objects[key])
        message = archive_pb2.Segment(
            header=archive_pb2.SegmentHeader(
                format_version=old.format_version,
                chain_id=old.chain_id,
                first_sequence=old.first_sequence,
                record_count=old.record_count if record_count is None else record_count,
                created_unix_nano=old.created_unix_nano,
            ),
            records=records,
        )
        self.objects[key] = frame(SEGMENT_MAGIC, message.SerializeToString())


def payload(i: int) -> bytes:
    return f"record {i}".encode() * 3


def log_payload(sequence: int) -> bytes:
    """The default log payload at ``sequence``: distinct for every sequence number."""
    return payload(sequence - 1)


def restart_mark(
    *, previous_run_clean: bool = False, reason: str = "restarted after a crash"
) -> tuple[EntryKind, bytes]:
    """A restart mark for ``build_archive(special=...)``, as the writer "pod-0" seals it."""
    return EntryKind.RESTART, restart_payload(
        writer="collector-ext/test", writer_id="pod-0", previous_run_clean=previous_run_clean, reason=reason
    )


def build_archive(
    signer: Ed25519Signer,
    *,
    segments: int = 3,
    per_segment: int = 10,
    chain_id: bytes = bytes(range(16)),
    checkpoints: bool = True,
    prefix: str = "",
    checkpointed_segments: int | None = None,
    genesis: bytes | None = None,
    special: Mapping[int, tuple[EntryKind, bytes]] | None = None,
    payloads: Callable[[int], bytes] = log_payload,
    format_version: int = FORMAT_VERSION,
    key_for: Callable[[int], Ed25519Signer] | None = None,
    seal_time: Callable[[int], int] | None = None,
    checkpoint_key_for: Callable[[int], Ed25519Signer] | None = None,
) -> BuiltArchive:
    """A chain of ``segments`` segments; segment 0 starts with the genesis entry. One checkpoint after
    each of the first ``checkpointed_segments`` segments (all by default; none without
    ``checkpoints``), listing that segment's digest.

    ``genesis`` replaces the genesis payload; ``special`` puts an entry of another kind (a restart
    mark) at a sequence number; every other entry is a log record with ``payloads(sequence)``.
    ``key_for(sequence)`` picks the signer per entry (default ``signer``); checkpoints are signed by
    the signer of the entry after their last one, or ``checkpoint_key_for(last_sequence)``.
    """
    signer_at = key_for or (lambda _sequence: signer)
    checkpoint_signer = checkpoint_key_for or (lambda last: signer_at(last + 1))
    sealed_at = seal_time or (lambda index: BASE_TIME + index)  # by segment index
    head = ChainHead.new(chain_id)
    built = BuiltArchive(objects={}, chain_id=chain_id)
    previous_checkpoint = b""
    special = special or {}
    genesis = genesis if genesis is not None else genesis_payload(signer.public_key, writer="test", reason="test")
    if not checkpoints:
        checkpointed_segments = 0
    for index in range(segments):
        first = head.next_sequence
        entries: list[bytes] = []
        hashes: list[bytes] = []
        # Runs of one kind go to chain_entries together; each run is one sealing batch.
        runs: list[tuple[EntryKind, list[bytes]]] = []
        for sequence in range(first, first + per_segment):
            kind, data = (
                (EntryKind.GENESIS, genesis) if sequence == 0 else special.get(sequence, (EntryKind.LOG_RECORD, b""))
            )
            if kind is EntryKind.LOG_RECORD:
                data = payloads(sequence)
            if runs and runs[-1][0] is kind and kind is EntryKind.LOG_RECORD:
                runs[-1][1].append(data)
            else:
                runs.append((kind, [data]))
        for kind, run in runs:
            batch = chain_entries(
                head, kind, run, signer_at(head.next_sequence).key_id, sealed_at(index), format_version
            )
            head = batch.head
            entries += batch.entries
            hashes += batch.hashes
        data = encode_segment(
            chain_id=chain_id,
            first_sequence=first,
            created_unix_nano=BASE_TIME,
            entries=entries,
            signatures=[sign_entry_hashes(signer_at(first + i), [h])[0] for i, h in enumerate(hashes)],
            format_version=format_version,
        )
        last = first + len(entries) - 1
        key = segment_key(prefix, chain_id, first, last, BASE_TIME)
        built.objects[key] = data
        built.segment_keys.append(key)
        if checkpointed_segments is None or index < checkpointed_segments:
            checkpoint = Checkpoint(
                chain_id=chain_id,
                checkpoint_number=index,
                previous_checkpoint_sha256=previous_checkpoint,
                last_sequence=last,
                head_sha256=head.head_hash,
                time_unix_nano=BASE_TIME + index,
                key_id=checkpoint_signer(last).key_id,
                format_version=format_version,
                segments=(
                    SegmentRef(
                        segment_key("", chain_id, first, last, BASE_TIME),
                        first,
                        last,
                        hashlib.sha256(data).digest(),
                        len(data),
                    ),
                ),
            )
            checkpoint_data, previous_checkpoint = sign_checkpoint(checkpoint, checkpoint_signer(last))
            ckey = checkpoint_key(prefix, chain_id, index, last)
            built.objects[ckey] = checkpoint_data
            built.checkpoint_keys.append(ckey)
    built.head = head
    return built


def verify_objects(
    objects: dict[str, bytes], keys: list[PublicKey], *, all_signatures: bool = False, report_resends: bool = False
) -> VerificationReport:
    store = InMemoryArchive()
    store.objects = dict(objects)
    options = VerifyOptions(check_all_signatures=all_signatures, report_resends=report_resends)
    return asyncio.run(check_archive(store, {k.key_id: k for k in keys}, options))
