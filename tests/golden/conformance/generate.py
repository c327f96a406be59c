"""Conformance cases for archive verifiers (proto/FORMAT.md 18.1): small archives, most of them
tampered, each with the exact findings and verdict a verifier must produce.

Usage, from the repository root (it imports tests.archive_builder):

    python -m tests.golden.conformance.generate          # rewrite tests/golden/conformance/cases/
    python -m tests.golden.conformance.generate --check  # exit 1 if the cases differ from what the
                                                          # current code produces

Every case is a directory ``cases/<name>/`` with ``objects/`` (the archive: each object key is a
file path relative to ``objects/``, as ``aws s3 sync`` would write it) and ``case.json`` (what it
tests, the pinned keys, options, the expected findings and verdict). Everything is fixed (keys from
fixed seeds, chain ids, times), and Ed25519 signatures are deterministic, so two runs give
byte-identical output. The expected findings are written here by hand from FORMAT.md, not taken
from a verifier's output; tests/golden/test_conformance.py runs collector_ext's verifier on them.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import filecmp
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import genesis_payload, key_rotation_payload, run_key_payload
from collector_ext.seal.checkpoint import decode_checkpoint, sign_checkpoint
from collector_ext.seal.entry import EntryKind, entry_hash
from collector_ext.seal.framing import SEGMENT_MAGIC, frame
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import segment_key
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.sender import Sender
from tests.archive_builder import BASE_TIME, BuiltArchive, build_archive, restart_mark

CASES_DIR = Path(__file__).resolve().with_name("cases")

KEY_A = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0x00, 0x20))))
KEY_B = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0x01, 0x21))))
# A second pair for the rotation case (the verifier's behaviour there depends on the key ids).
KEY_C = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(32)))
KEY_D = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
# Per-run record keys certified by KEY_A (the token's key) in the run key cases (FORMAT.md 7.7).
RUN_1 = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0x40, 0x60))))
RUN_2 = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0x60, 0x80))))
CHAIN = bytes(range(0xC0, 0xD0))
SUCCESSOR = bytes(range(0xD0, 0xE0))
ARCHIVE_ID = "s3://audit-archive/logs"


def genesis(signer: Ed25519Signer = KEY_A, *, archive_id: str = ARCHIVE_ID, **fields: Any) -> bytes:
    return genesis_payload(
        signer.public_key,
        writer="collector-ext/conformance",
        reason="test",
        writer_id="pod-0",
        archive_id=archive_id,
        **fields,
    )


def chain(**kwargs: Any) -> BuiltArchive:
    """Three segments of three entries (seq 0-8), a checkpoint after each, signed by KEY_A."""
    kwargs.setdefault("segments", 3)
    kwargs.setdefault("per_segment", 3)
    kwargs.setdefault("chain_id", CHAIN)
    if kwargs.get("format_version", 2) >= 2:
        kwargs.setdefault("genesis", genesis())
    signer = kwargs.pop("signer", KEY_A)
    return build_archive(signer, **kwargs)


@dataclass
class Case:
    name: str
    description: str
    objects: dict[str, bytes]
    expected: list[dict[str, Any]]
    keys: list[Ed25519Signer] = field(default_factory=lambda: [KEY_A])
    options: dict[str, Any] = field(default_factory=dict)
    known_verifier_bug: str = ""

    @property
    def verified(self) -> bool:
        return not any(f["severity"] in ("tampering", "loss") for f in self.expected)


def finding(
    kind: str,
    severity: str,
    first: int | None = None,
    last: int | None = None,
    key: str | None = None,
    chain_id: bytes | None = CHAIN,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "severity": severity,
        "chain_id": chain_id.hex() if chain_id is not None else None,
        "first_sequence": first,
        "last_sequence": last if last is not None else first,
        "object_key": key,
    }


def _reencode(built: BuiltArchive, index: int, mutate: Callable[[archive_pb2.Segment], None]) -> None:
    key = built.segment_keys[index]
    message = archive_pb2.Segment.FromString(built.objects[key][16:])
    mutate(message)
    built.objects[key] = frame(SEGMENT_MAGIC, message.SerializeToString())


# -- the cases --------------------------------------------------------------------------------------------


def clean_v2() -> Case:
    return Case("clean-v2", "An untouched version 2 chain: no findings.", chain().objects, [])


def clean_v1() -> Case:
    built = chain(format_version=1)
    return Case(
        "clean-v1",
        "An untouched version 1 chain verifies under version 1 rules and gets the format-v1 note (FORMAT.md 1.1).",
        built.objects,
        [finding("format-v1", "info")],
    )


def modified_record() -> Case:
    built = chain()
    records = built.segment_records(1)
    records[1].entry = records[1].entry[:-1] + b"!"
    built.rewrite_segment(1, records)
    return Case(
        "modified-record",
        "One byte of the log record at seq 4 changed: its signature no longer verifies (13.3 step 8.5).",
        built.objects,
        [finding("modified-record", "tampering", 4, 4, built.segment_keys[1])],
    )


def deleted_records() -> Case:
    built = chain()
    records = built.segment_records(1)
    built.rewrite_segment(1, [records[0], records[2]])
    return Case(
        "deleted-records",
        "The record at seq 4 removed from its segment (the header still declares 3 records); a checkpoint "
        "covers it, so tampering (13.3 step 8.6).",
        built.objects,
        [finding("deleted-records", "tampering", 4, 4, built.segment_keys[1])],
    )


def missing_segment() -> Case:
    built = chain()
    del built.objects[built.segment_keys[1]]
    return Case(
        "missing-segment",
        "The checkpoint-listed segment holding seq 3-5 deleted (13.3 step 8.6).",
        built.objects,
        [finding("missing-segment", "tampering", 3, 5, built.segment_keys[1])],
    )


def swapped_segments() -> Case:
    built = chain()
    one, two = built.segment_keys[1], built.segment_keys[2]
    built.objects[one], built.objects[two] = built.objects[two], built.objects[one]
    return Case(
        "swapped-segments",
        "The contents of the segments for seq 3-5 and 6-8 swapped: two misnamed objects, walked where their "
        "content belongs; no fork, no deletion (13.3 step 0).",
        built.objects,
        [
            finding("replaced-segment", "tampering", 3, 5, one),
            finding("replaced-segment", "tampering", 6, 8, two),
        ],
    )


def appended_bytes() -> Case:
    built = chain()
    built.objects[built.segment_keys[0]] += b"appended"
    return Case(
        "appended-bytes",
        "Bytes appended after the first segment's frame; the framed part still matches its digest (FORMAT.md 4).",
        built.objects,
        [finding("appended-bytes", "tampering", None, None, built.segment_keys[0])],
    )


def forged_checkpoint() -> Case:
    built = chain()
    key = built.checkpoint_keys[1]
    data = bytearray(built.objects[key])
    data[-1] ^= 0x01  # the last byte of the signature
    built.objects[key] = bytes(data)
    return Case(
        "forged-checkpoint",
        "Checkpoint 1's signature altered: it is discarded, so checkpoint 2 follows a gap; the segment it "
        "listed is no longer authentic but each of its records verifies (13.2 steps 3 and 6).",
        built.objects,
        [
            finding("forged-checkpoint", "tampering", 5, 5, key),
            finding("missing-checkpoint", "tampering", None, None, built.checkpoint_keys[2]),
        ],
    )


def wrong_key() -> Case:
    built = chain(key_for=lambda sequence: KEY_A if sequence < 6 else KEY_B)
    return Case(
        "wrong-key",
        "Both keys are pinned; the chain is bound to KEY_A by its genesis, but seq 6-8 and the checkpoint covering "
        "seq 3-5 (which a checkpoint signs with the key bound after it) are signed by KEY_B without a rotation "
        "(FORMAT.md 10.2); so is the checkpoint covering seq 6-8, whose head entry is itself rejected (13.3 step "
        "8.9a checks it all the same).",
        built.objects,
        [
            finding("wrong-key", "tampering", 5, 5, built.checkpoint_keys[1]),
            finding("wrong-key", "tampering", 6, 6, built.segment_keys[2]),
            finding("wrong-key", "tampering", 7, 7, built.segment_keys[2]),
            finding("wrong-key", "tampering", 8, 8, built.segment_keys[2]),
            finding("wrong-key", "tampering", 8, 8, built.checkpoint_keys[2]),
        ],
        keys=[KEY_A, KEY_B],
    )


def other_key_vouches_for_genesis_segment() -> Case:
    built = chain(segments=1)
    records = built.segment_records(0)
    entry = bytearray(records[-1].entry)
    entry[-1] ^= 0x01
    records[-1] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[-1].signature)
    built.rewrite_segment(0, records)
    data = built.objects[built.segment_keys[0]]
    old = decode_checkpoint(built.objects[built.checkpoint_keys[0]]).checkpoint
    ref = dataclasses.replace(old.segments[0], sha256=hashlib.sha256(data).digest(), size=len(data))
    forged = dataclasses.replace(old, segments=(ref,), head_sha256=entry_hash(bytes(entry)), key_id=KEY_B.key_id)
    built.objects[built.checkpoint_keys[0]], _ = sign_checkpoint(forged, KEY_B)
    return Case(
        "other-key-vouches-for-genesis-segment",
        "The chain's only segment has its last record changed, and KEY_B (also pinned) re-signs checkpoint 0 "
        "over the new bytes and head. The digest matches, but before the genesis binds the chain it vouches "
        "only under the key the segment's first record names (KEY_A), so every record signature is checked "
        "(13.3 step 3) and the checkpoint is KEY_B's where the chain is KEY_A's (13.3 step 8.9a).",
        built.objects,
        [
            finding("modified-record", "tampering", 2, 2, built.segment_keys[0]),
            finding("wrong-key", "tampering", 2, 2, built.checkpoint_keys[0]),
        ],
        keys=[KEY_A, KEY_B],
    )


def unknown_key() -> Case:
    built = chain()
    return Case(
        "unknown-key",
        "An untouched archive checked against the wrong pinned key: one unknown-key finding for the key id, "
        "covering every record and checkpoint it signed (13.2 step 2, 13.3 step 8.3).",
        built.objects,
        [finding("unknown-key", "tampering", 0, 8, built.checkpoint_keys[0])],
        keys=[KEY_B],
    )


def _rotation_chain(
    rotation_at: int,
    signer_after: Ed25519Signer,
    segments: int = 3,
    per_segment: int = 3,
    old: Ed25519Signer = KEY_A,
    new: Ed25519Signer = KEY_B,
) -> BuiltArchive:
    payload = key_rotation_payload(
        chain_id=CHAIN, sequence=rotation_at, retired=old, successor=new, reason="scheduled rotation"
    )
    return chain(
        signer=old,
        genesis=genesis(old),
        segments=segments,
        per_segment=per_segment,
        special={rotation_at: (EntryKind.KEY_ROTATION, payload)},
        key_for=lambda sequence: old if sequence <= rotation_at else signer_after,
    )


def key_rotation() -> Case:
    built = _rotation_chain(5, KEY_D, segments=2, per_segment=4, old=KEY_C, new=KEY_D)
    return Case(
        "key-rotation",
        "An untouched chain (seq 0-7) that rotates from KEY_C to KEY_D at seq 5, inside its last segment; the "
        "checkpoint covering seq 4-7 is signed by KEY_D, the key bound after it (FORMAT.md 7.6, 10.2).",
        built.objects,
        [finding("key-rotation", "info", 5, 5, built.segment_keys[1])],
        keys=[KEY_C, KEY_D],
    )


def retired_key_writes() -> Case:
    built = _rotation_chain(7, KEY_A)
    return Case(
        "retired-key-writes",
        "The chain rotates to KEY_B at seq 7, but seq 8 and the checkpoint covering seq 6-8 are signed by the "
        "retired KEY_A (still pinned): wrong-key on both (FORMAT.md 10.2, 13.3 step 8.9a).",
        built.objects,
        [
            finding("key-rotation", "info", 7, 7, built.segment_keys[2]),
            finding("wrong-key", "tampering", 8, 8, built.segment_keys[2]),
            finding("wrong-key", "tampering", 8, 8, built.checkpoint_keys[2]),
        ],
        keys=[KEY_A, KEY_B],
    )


def _run_key_chain(
    *,
    certifier_at_9: Ed25519Signer = KEY_A,
    second_run_signer: Ed25519Signer = RUN_2,
    checkpoint_key_for: Callable[[int], Ed25519Signer] | None = None,
) -> BuiltArchive:
    """Seq 0-11 in three segments of four, checkpointed after each by KEY_A (the chain's key): genesis
    (KEY_A), run key RUN_1 certified at seq 1 (KEY_A), records 2-7 (RUN_1), restart mark at 8 (KEY_A),
    run key RUN_2 certified at 9, records 10-11 (``second_run_signer``)."""

    def certify(sequence: int, certifier: Ed25519Signer, run_key: Ed25519Signer) -> tuple[EntryKind, bytes]:
        payload = run_key_payload(
            chain_id=CHAIN, sequence=sequence, certifier=certifier, run_key=run_key, reason="run started"
        )
        return EntryKind.RUN_KEY, payload

    def key_for(sequence: int) -> Ed25519Signer:
        if sequence in (0, 1, 8):
            return KEY_A
        if sequence == 9:
            return certifier_at_9
        return RUN_1 if sequence < 8 else second_run_signer

    return chain(
        segments=3,
        per_segment=4,
        special={1: certify(1, KEY_A, RUN_1), 8: restart_mark(), 9: certify(9, certifier_at_9, RUN_2)},
        key_for=key_for,
        checkpoint_key_for=checkpoint_key_for or (lambda _last: KEY_A),
    )


def _run_key_notes(built: BuiltArchive) -> list[dict[str, Any]]:
    return [
        finding("run-key", "info", 1, 1, built.segment_keys[0]),
        finding("restart", "info", 8, 8, built.segment_keys[2]),
    ]


def run_key() -> Case:
    built = _run_key_chain()
    return Case(
        "run-key",
        "A sound run key chain: KEY_A (pinned; a token's key) signs the genesis, the restart mark and every "
        "checkpoint, and certifies RUN_1 at seq 1 and RUN_2 at seq 9, which sign the log records of their runs "
        "(FORMAT.md 7.7, 10.3). Only KEY_A is pinned.",
        built.objects,
        [*_run_key_notes(built), finding("run-key", "info", 9, 9, built.segment_keys[2])],
    )


def run_key_outside_run() -> Case:
    built = _run_key_chain(second_run_signer=RUN_1)
    return Case(
        "run-key-outside-run",
        "Seq 10-11, in the second run, are signed by RUN_1, the first run's key (stolen after its run ended): "
        "run-key-outside-run on each (FORMAT.md 10.3, 13.3 step 8.3b).",
        built.objects,
        [
            *_run_key_notes(built),
            finding("run-key", "info", 9, 9, built.segment_keys[2]),
            finding("run-key-outside-run", "tampering", 10, 10, built.segment_keys[2]),
            finding("run-key-outside-run", "tampering", 11, 11, built.segment_keys[2]),
        ],
    )


def uncertified_run_key() -> Case:
    built = _run_key_chain(certifier_at_9=KEY_B)
    return Case(
        "uncertified-run-key",
        "The run key entry at seq 9 is signed by KEY_B, which is not pinned: uncertified-run-key there, and the "
        "records RUN_2 signs (seq 10-11) are unknown-key (FORMAT.md 10.3, 13.3 step 8.3c).",
        built.objects,
        [
            *_run_key_notes(built),
            finding("uncertified-run-key", "tampering", 9, 9, built.segment_keys[2]),
            finding("unknown-key", "tampering", 10, 11, built.segment_keys[2]),
        ],
    )


def run_key_checkpoint() -> Case:
    built = _run_key_chain(checkpoint_key_for=lambda last: RUN_1 if last == 7 else KEY_A)
    return Case(
        "run-key-checkpoint",
        "Checkpoint 1 (seq 4-7) is signed by RUN_1, the run key, instead of KEY_A: run-key-checkpoint (at the "
        "checkpoint's last sequence, as unknown-key would be); it is not a valid checkpoint, so checkpoint 2 finds "
        "its predecessor missing, and segment 1 is checked record by record (FORMAT.md 10.3, 13.2 steps 5b and 6).",
        built.objects,
        [
            *_run_key_notes(built),
            finding("run-key", "info", 9, 9, built.segment_keys[2]),
            finding("run-key-checkpoint", "tampering", 7, 7, built.checkpoint_keys[1]),
            finding("missing-checkpoint", "tampering", None, None, built.checkpoint_keys[2]),
        ],
    )


def foreign_chain() -> Case:
    built = chain(genesis=genesis(archive_id="s3://another-archive/logs"))
    return Case(
        "foreign-chain",
        f"A chain whose genesis names another archive, found in the archive {ARCHIVE_ID!r} (the expected archive "
        "id is given): it was copied here (13.6a).",
        built.objects,
        [finding("foreign-chain", "tampering", 0, 0, None)],
        options={"archive_id": ARCHIVE_ID},
    )


def _successor(old: BuiltArchive, last: int, checkpoint: int) -> BuiltArchive:
    return chain(
        chain_id=SUCCESSOR,
        segments=1,
        genesis=genesis(
            supersedes_chain_id=CHAIN,
            superseded_last_sequence=last,
            superseded_covered_until=last,
            superseded_head_sha256=old.entry_hash_at(last),
            superseded_checkpoint_sha256=old.checkpoint_hash_at(checkpoint),
            superseded_checkpoint_number=checkpoint,
        ),
    )


def successor_cut() -> Case:
    old = chain()
    new = _successor(old, 8, 2)
    del old.objects[old.segment_keys[2]]
    del old.objects[old.checkpoint_keys[2]]
    return Case(
        "successor-cut",
        "A chain superseded by a version 2 chain whose genesis says it reached seq 8 with checkpoint 2; its last "
        "segment and checkpoint were then deleted (13.6 step 2).",
        {**old.objects, **new.objects},
        [
            finding("superseded-chain", "info", 0, 0, new.segment_keys[0], chain_id=SUCCESSOR),
            finding("superseded-chain-cut", "tampering", 6, 8, None),
            finding("superseded-chain-cut", "tampering", 6, 8, None),
            finding("superseded-chain-cut", "tampering", 6, 8, None),
        ],
    )


def successor_missing() -> Case:
    old = chain()
    new = _successor(old, 8, 2)
    return Case(
        "superseded-chain-missing",
        "A version 2 chain supersedes a chain that is not in the archive: it was removed as a whole (13.6 step 3).",
        new.objects,
        [
            finding("superseded-chain", "info", 0, 0, new.segment_keys[0], chain_id=SUCCESSOR),
            finding("superseded-chain-missing", "tampering", 0, 0, None, chain_id=SUCCESSOR),
        ],
    )


def restart_segment_rewritten() -> Case:
    built = chain(special={4: restart_mark()})

    def later(message: archive_pb2.Segment) -> None:
        message.header.created_unix_nano += 1

    _reencode(built, 1, later)
    return Case(
        "restart-segment-rewritten",
        "The checkpoint-listed segment holding a restart mark re-encoded with another header time: each record "
        "still verifies, the restart note is given, and the changed object is reported anyway (notes do not "
        "count, 13.3 step 11).",
        built.objects,
        [
            finding("restart", "info", 4, 4, built.segment_keys[1]),
            finding("replaced-segment", "tampering", 3, 5, built.segment_keys[1]),
        ],
    )


def truncated_chain() -> Case:
    built = chain()
    del built.objects[built.segment_keys[2]]
    return Case(
        "truncated-chain",
        "The last segment deleted; checkpoint 2 still vouches for seq 6-8 (13.5).",
        built.objects,
        [finding("truncated-chain", "tampering", 6, 8, built.segment_keys[2])],
    )


def rolled_back_tail() -> Case:
    built = chain()
    del built.objects[built.segment_keys[2]]
    del built.objects[built.checkpoint_keys[2]]
    return Case(
        "rolled-back-tail",
        "The newest checkpoint and the segment after the one before deleted: a shorter, consistent archive. "
        "Without a remembered state (13.9) nothing in the archive shows it (FORMAT.md 17): no finding.",
        built.objects,
        [],
    )


def uncovered_tail() -> Case:
    built = chain(checkpointed_segments=2)
    return Case(
        "uncovered-tail",
        "The last segment not yet covered by a checkpoint (a running writer): a warning only (13.5).",
        built.objects,
        [finding("uncovered-tail", "warning", 6, 8, built.segment_keys[2])],
    )


def short_entry() -> Case:
    built = chain()
    records = built.segment_records(1)
    records[1].entry = records[1].entry[:10]
    built.rewrite_segment(1, records)
    return Case(
        "short-entry",
        "The entry stored at position 1 of the segment for seq 3-5 cut to 10 bytes: reported at "
        "header.first_sequence + position = 4, and the intact records around it are not blamed (13.3 step 5).",
        built.objects,
        [finding("modified-record", "tampering", 4, 4, built.segment_keys[1])],
    )


def _payload_with_sender(body: str, port: int) -> bytes:
    """A log record's payload as the writer seals it with a sender (FORMAT.md 7.3, 7.3a)."""
    record = LogRecord(body=AnyValue(string_value=body))
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])])
    sender = Sender(peer=f"10.0.0.7:{port}", token_name="collector-prod", certificate_subject="CN=otel-collector")
    [payload] = log_payloads(request, sender)
    return payload


def sender_recorded() -> Case:
    built = chain(payloads=lambda sequence: _payload_with_sender(f"event {sequence}", 40000))
    return Case(
        "sender-recorded",
        "Every log record's payload carries the version 2 sender field 6 (7.3a): a valid archive, no findings.",
        built.objects,
        [],
    )


def sender_altered() -> Case:
    built = chain(payloads=lambda sequence: _payload_with_sender(f"event {sequence}", 40000))
    records = built.segment_records(1)
    records[1].entry = records[1].entry.replace(b"collector-prod", b"collector-test")
    built.rewrite_segment(1, records)
    return Case(
        "sender-altered",
        "The sealed sender's token name of the record at seq 4 rewritten (same length): the sender is covered by "
        "the record signature like the rest of the payload (7.3a, 13.3 step 8.5).",
        built.objects,
        [finding("modified-record", "tampering", 4, 4, built.segment_keys[1])],
    )


def resent_from_another_peer() -> Case:
    # The writer restarted at seq 4; the collector resent the records of seq 2-3 on a new connection, so their
    # copies at seq 5-6 differ from the originals only in the sender's peer port.
    bodies = {5: 2, 6: 3}

    def payloads(sequence: int) -> bytes:
        return _payload_with_sender(f"event {bodies.get(sequence, sequence)}", 40001 if sequence > 4 else 40000)

    built = chain(special={4: restart_mark()}, payloads=payloads)
    return Case(
        "resent-from-another-peer",
        "After a restart mark at seq 4, seq 5-6 repeat seq 2-3 except for the sender's peer: resent records are "
        "compared without field 6 (10.1, 13.7), so the restart note and one resent-records note, still verified.",
        built.objects,
        [
            finding("restart", "info", 4, 4, built.segment_keys[1]),
            finding("resent-records", "info", 5, 6, built.segment_keys[1]),
        ],
    )


def listed_key_absent() -> Case:
    built = chain()
    old_key = built.segment_keys[1]
    new_key = segment_key("", CHAIN, 3, 5, BASE_TIME + 86_400 * 10**9)
    built.objects[new_key] = built.objects.pop(old_key)
    return Case(
        "listed-key-absent",
        "The segment for seq 3-5 moved to another key (another date): its records verify where they are, and "
        "the key checkpoint 1 lists is absent: replaced-segment naming the listed key (13.3 step 12).",
        built.objects,
        [finding("replaced-segment", "tampering", 3, 5, old_key)],
    )


def inserted_record() -> Case:
    built = chain()
    records = built.segment_records(1)
    built.rewrite_segment(1, [records[0], records[1], records[1], records[2]], record_count=3)
    return Case(
        "inserted-record",
        "A byte-identical copy of the record at seq 4 stored after it (13.3 step 8.4).",
        built.objects,
        [finding("inserted-record", "tampering", 4, 4, built.segment_keys[1])],
    )


def reordered_records() -> Case:
    built = chain()
    records = built.segment_records(1)
    built.rewrite_segment(1, [records[1], records[0], records[2]])
    return Case(
        "reordered-records",
        "Two records of a segment stored in the wrong order (13.3 step 5).",
        built.objects,
        [finding("reordered-record", "tampering", 3, 3, built.segment_keys[1])],
    )


def _with_notes(built: BuiltArchive, signer: Ed25519Signer = KEY_A) -> dict[int, str]:
    """Add a checkpoint note (FORMAT.md 16.4) beside every checkpoint; their keys by checkpoint number."""
    from collector_ext.seal.layout import checkpoint_note_key, parse_checkpoint_key
    from collector_ext.seal.merkle import leaf_hash, tree_root
    from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
    from collector_ext.seal.segment import decode_segment

    leaves = [leaf_hash(r.entry) for key in built.segment_keys for r in decode_segment(built.objects[key]).records]
    origin = chain_origin(ARCHIVE_ID, built.chain_id)
    notes = {}
    for checkpoint in built.checkpoint_keys:
        parsed = parse_checkpoint_key(checkpoint)
        assert parsed is not None
        size = parsed.last_sequence + 1
        key = checkpoint_note_key("", built.chain_id, parsed.checkpoint_number, parsed.last_sequence)
        built.objects[key] = sign_note(checkpoint_text(origin, size, tree_root(leaves[:size])), origin, signer)
        notes[parsed.checkpoint_number] = key
    return notes


def tree_notes() -> Case:
    built = chain()
    _with_notes(built)
    return Case(
        "tree-notes",
        "An untouched chain with a checkpoint note beside each checkpoint, each stating the Merkle tree of the "
        "entries up to it (FORMAT.md 16.4, 16.6): no findings.",
        built.objects,
        [],
    )


def tree_note_resigned() -> Case:
    from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note

    built = chain()
    notes = _with_notes(built)
    origin = chain_origin(ARCHIVE_ID, CHAIN)
    built.objects[notes[1]] = sign_note(checkpoint_text(origin, 6, bytes(32)), origin, KEY_A)
    return Case(
        "tree-note-resigned",
        "The note of checkpoint 1 (tree size 6) signed by the writer's key over a root that is not the tree of "
        "entries 0-5 (16.6 step 5): tree-mismatch at the note.",
        built.objects,
        [finding("tree-mismatch", "tampering", 5, 5, notes[1])],
    )


def tree_note_altered() -> Case:
    built = chain()
    notes = _with_notes(built)
    note = built.objects[notes[2]]
    text, block = note.split(b"\n\n")
    lines = text.split(b"\n")
    lines[2] = base64.b64encode(bytes(32))
    built.objects[notes[2]] = b"\n".join(lines) + b"\n\n" + block
    return Case(
        "tree-note-altered",
        "The root line of the note of checkpoint 2 replaced without a new signature: the pinned key's "
        "signature no longer verifies (16.6 step 3): forged-checkpoint at the note.",
        built.objects,
        [finding("forged-checkpoint", "tampering", 8, 8, notes[2])],
    )


def tree_note_of_another_chain() -> Case:
    from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note

    built = chain()
    notes = _with_notes(built)
    origin = chain_origin(ARCHIVE_ID, SUCCESSOR)
    built.objects[notes[0]] = sign_note(checkpoint_text(origin, 3, bytes(32)), origin, KEY_A)
    return Case(
        "tree-note-of-another-chain",
        "A note naming another chain in its origin, stored as this chain's note of checkpoint 0 (16.6 step 2).",
        built.objects,
        [finding("tree-mismatch", "tampering", 2, 2, notes[0])],
    )


def tree_changed_record() -> Case:
    built = chain()
    _with_notes(built)
    records = built.segment_records(1)
    records[1].entry = records[1].entry[:-1] + b"!"
    built.rewrite_segment(1, records)
    return Case(
        "tree-changed-record",
        "A changed record at seq 4 under notes: the record is the finding; the notes after it, whose roots now "
        "differ, are not reported again (16.6 step 5).",
        built.objects,
        [finding("modified-record", "tampering", 4, 4, built.segment_keys[1])],
    )


# Witnesses (FORMAT.md 19): fixed keys, names and a fixed cosigning time.
WITNESS_1 = ("witness.example/team-b", Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0x80, 0xA0)))))
WITNESS_2 = ("witness.example/team-c", Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0xA0, 0xC0)))))
WITNESS_3 = ("witness.example/unpinned", Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(0xE0, 0x100)))))
COSIGNED_AT = BASE_TIME // 10**9 + 3600


def _witness_options(*witnesses: tuple[str, Ed25519Signer], required: int) -> dict[str, Any]:
    from collector_ext.witness.vkey import witness_vkey

    return {
        "witnesses": [witness_vkey(name, signer.public_key) for name, signer in witnesses],
        "witnesses_required": required,
        # Every checkpoint is old enough to be due (19.4 step 4): the result does not depend on the date.
        "witness_grace_seconds": 0,
    }


def _cosign(built: BuiltArchive, note_key: str, witness: tuple[str, Ed25519Signer], *, beside: str = "") -> str:
    """Store ``witness``'s cosignature line on the note at ``note_key`` beside the note at ``beside``
    (default: the same note), as the writer stores what a witness returned (19.1); its key."""
    from collector_ext.seal.layout import cosignature_key
    from collector_ext.seal.note import cosign, parse_note

    name, signer = witness
    line = cosign(parse_note(built.objects[note_key]).text, name, signer, COSIGNED_AT).line()
    key = cosignature_key(beside or note_key, name)
    built.objects[key] = line
    return key


def witnessed() -> Case:
    built = chain()
    notes = _with_notes(built)
    _cosign(built, notes[1], WITNESS_1)
    _cosign(built, notes[2], WITNESS_1)
    return Case(
        "witnessed",
        "Notes cosigned by the one pinned witness, one required (FORMAT.md 19.4): the newest note, tree size 9, "
        "is witnessed (info), nothing else.",
        built.objects,
        [finding("witnessed", "info")],
        options=_witness_options(WITNESS_1, required=1),
    )


def witness_cosignature_forged() -> Case:
    built = chain()
    notes = _with_notes(built)
    _cosign(built, notes[1], WITNESS_1)
    forged = _cosign(built, notes[2], WITNESS_1)
    line = built.objects[forged]
    name, blob = line.rstrip(b"\n").split(b" ")[1:]
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1  # the last byte of the Ed25519 signature
    built.objects[forged] = "\u2014 ".encode() + name + b" " + base64.b64encode(bytes(raw)) + b"\n"
    return Case(
        "witness-cosignature-forged",
        "The pinned witness's cosignature beside the newest note altered in one signature byte (19.4 step 2): "
        "bad-cosignature at that object; the required witness then vouches only for tree size 6 (step 4): "
        "unwitnessed-checkpoint for entries 6-8 at the newest note.",
        built.objects,
        [
            finding("bad-cosignature", "tampering", key=forged),
            finding("unwitnessed-checkpoint", "loss", 6, 8, notes[2]),
        ],
        options=_witness_options(WITNESS_1, required=1),
    )


def witness_cosignature_moved() -> Case:
    built = chain()
    notes = _with_notes(built)
    _cosign(built, notes[1], WITNESS_1)
    moved = _cosign(built, notes[1], WITNESS_1, beside=notes[2])
    return Case(
        "witness-cosignature-moved",
        "A valid cosignature of the note of tree size 6 copied beside the newest note, size 9 (19.4 step 2: it "
        "does not verify over that note): bad-cosignature there, and entries 6-8 unwitnessed.",
        built.objects,
        [
            finding("bad-cosignature", "tampering", key=moved),
            finding("unwitnessed-checkpoint", "loss", 6, 8, notes[2]),
        ],
        options=_witness_options(WITNESS_1, required=1),
    )


def unwitnessed_tail() -> Case:
    built = chain()
    notes = _with_notes(built)
    _cosign(built, notes[0], WITNESS_1)
    _cosign(built, notes[1], WITNESS_1)
    return Case(
        "unwitnessed-tail",
        "The newest note (tree size 9) has no cosignature; the witness last vouched for size 6 (19.4 step 4): "
        "unwitnessed-checkpoint for entries 6-8, a loss, because a history the witness was never shown looks the "
        "same as a witness outage.",
        built.objects,
        [finding("unwitnessed-checkpoint", "loss", 6, 8, notes[2])],
        options=_witness_options(WITNESS_1, required=1),
    )


def witness_quorum_short() -> Case:
    built = chain()
    notes = _with_notes(built)
    _cosign(built, notes[2], WITNESS_1)
    _cosign(built, notes[2], WITNESS_3)  # a witness the auditor did not pin does not count
    return Case(
        "witness-quorum-short",
        "Two of two pinned witnesses required; the newest note carries one pinned witness's cosignature and one "
        "by a witness that is not pinned, which is ignored (19.4 steps 2, 4): no tree has 2 pinned cosignatures, "
        "so entries 0-8 are unwitnessed.",
        built.objects,
        [finding("unwitnessed-checkpoint", "loss", 0, 8, notes[2])],
        options=_witness_options(WITNESS_1, WITNESS_2, required=2),
    )


CASES: list[Callable[[], Case]] = [
    clean_v2,
    clean_v1,
    modified_record,
    deleted_records,
    missing_segment,
    swapped_segments,
    inserted_record,
    reordered_records,
    appended_bytes,
    forged_checkpoint,
    wrong_key,
    other_key_vouches_for_genesis_segment,
    unknown_key,
    key_rotation,
    retired_key_writes,
    run_key,
    run_key_outside_run,
    uncertified_run_key,
    run_key_checkpoint,
    foreign_chain,
    successor_cut,
    successor_missing,
    restart_segment_rewritten,
    truncated_chain,
    rolled_back_tail,
    uncovered_tail,
    short_entry,
    listed_key_absent,
    sender_recorded,
    sender_altered,
    resent_from_another_peer,
    tree_notes,
    tree_note_resigned,
    tree_note_altered,
    tree_note_of_another_chain,
    tree_changed_record,
    witnessed,
    witness_cosignature_forged,
    witness_cosignature_moved,
    unwitnessed_tail,
    witness_quorum_short,
]


def _key_json(signer: Ed25519Signer) -> dict[str, str]:
    public = signer.private_key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"pem": pem.decode(), "raw_hex": signer.public_key.raw.hex(), "key_id": signer.key_id.hex()}


def _order(f: dict[str, Any]) -> tuple[Any, ...]:
    return (
        f["chain_id"] or "",
        f["kind"],
        -1 if f["first_sequence"] is None else f["first_sequence"],
        f["object_key"] or "",
    )


def write_case(case: Case, root: Path) -> None:
    directory = root / case.name
    for key, data in sorted(case.objects.items()):
        path = directory / "objects" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    document = {
        "description": case.description,
        "pinned_keys": [_key_json(signer) for signer in case.keys],
        "options": {
            "archive_id": case.options.get("archive_id"),
            "check_all_signatures": False,
            **{name: value for name, value in case.options.items() if name.startswith("witness")},
        },
        "objects": {key: hashlib.sha256(data).hexdigest() for key, data in sorted(case.objects.items())},
        "expected": {"verified": case.verified, "findings": sorted(case.expected, key=_order)},
    }
    if case.known_verifier_bug:
        document["known_reference_verifier_bug"] = case.known_verifier_bug
    (directory / "case.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def write_all(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for make in CASES:
        write_case(make(), root)


def _same_tree(a: Path, b: Path) -> bool:
    comparison = filecmp.dircmp(a, b)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in comparison.common_dirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if cases/ differs instead of writing it")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as temporary:
            fresh = Path(temporary) / "cases"
            write_all(fresh)
            if not CASES_DIR.exists() or not _same_tree(fresh, CASES_DIR):
                print(f"{CASES_DIR} differs from what the code produces; run {Path(__file__).name} to rewrite it")
                return 1
        print(f"{CASES_DIR} is up to date")
        return 0
    write_all(CASES_DIR)
    print(f"wrote {len(CASES)} cases to {CASES_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
