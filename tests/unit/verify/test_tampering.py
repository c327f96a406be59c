"""One tamper test per finding kind: each asserts the exact findings (kind, sequence, object)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import sign_entry_hashes
from collector_ext.seal.checkpoint import decode_checkpoint, sign_checkpoint
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, entry_hash
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.findings import FindingKind, Severity, VerificationReport
from tests.archive_builder import BuiltArchive, build_archive, verify_objects

K = FindingKind


Problem = tuple[str, int | None, int | None, str]


def _order(problem: Problem) -> tuple[str, int, str]:
    return problem[0], -1 if problem[1] is None else problem[1], problem[3]


def problems(report: VerificationReport) -> list[Problem]:
    """(kind, first sequence, last sequence, object key) of every finding, in a stable order."""
    return sorted(
        ((f.kind.value, f.first_sequence, f.last_sequence, f.object_key) for f in report.findings),
        key=_order,
    )


@pytest.fixture
def archive(signer: Ed25519Signer) -> BuiltArchive:
    return build_archive(signer)


@pytest.mark.parametrize("all_signatures", [False, True])
def test_clean_archive_has_no_finding(signer: Ed25519Signer, archive: BuiltArchive, all_signatures: bool) -> None:
    report = verify_objects(archive.objects, [signer.public_key], all_signatures=all_signatures)
    assert report.findings == ()
    assert report.clean
    assert report.records_checked == 30
    (chain,) = report.chains
    assert (chain.last_sequence, chain.covered_until, chain.segments, chain.checkpoints) == (29, 29, 3, 3)
    # Fast mode proves segments through checkpoint digests: only the 3 checkpoint signatures are checked.
    assert report.signatures_checked == (33 if all_signatures else 3)


def test_modified_record(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(1)
    entry = bytearray(records[4].entry)
    entry[ENTRY_HEADER_SIZE + 10] ^= 0x01  # one bit of the payload
    records[4] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[4].signature)
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("modified-record", 14, None, archive.segment_keys[1])]
    assert not report.clean


def test_modified_record_with_relinked_successor_is_still_found(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    # The attacker changes record 14 and fixes record 15's link to it; 15's signature then fails too.
    records = archive.segment_records(1)
    entry = bytearray(records[4].entry)
    entry[ENTRY_HEADER_SIZE + 10] ^= 0x01
    records[4] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[4].signature)
    successor = bytearray(records[5].entry)
    successor[28:60] = entry_hash(bytes(entry))
    records[5] = archive_pb2.SealedRecord(entry=bytes(successor), signature=records[5].signature)
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [
        ("modified-record", 14, None, archive.segment_keys[1]),
        ("modified-record", 15, None, archive.segment_keys[1]),
    ]


def test_deleted_record(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(1)
    del records[3]  # seq 13
    archive.rewrite_segment(1, records, record_count=9)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("deleted-records", 13, 13, archive.segment_keys[1])]
    assert report.findings[0].severity is Severity.TAMPERING


def test_deleted_last_record_of_segment(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(1)
    del records[-1]  # seq 19; the header still declares 10 records
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("deleted-records", 19, 19, archive.segment_keys[1])]


def test_inserted_forged_record(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(1)
    forged = bytearray(records[2].entry)  # a copy of seq 12 with changed content, inserted after it
    forged[-1] ^= 0x55
    records.insert(3, archive_pb2.SealedRecord(entry=bytes(forged), signature=bytes(64)))
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("inserted-record", 12, None, archive.segment_keys[1])]


def test_inserted_copy_of_a_record(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(2)
    records.insert(6, records[5])
    archive.rewrite_segment(2, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("inserted-record", 25, None, archive.segment_keys[2])]


def test_reordered_records(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(0)
    records[3], records[4] = records[4], records[3]
    archive.rewrite_segment(0, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("reordered-record", 3, None, archive.segment_keys[0])]


def test_missing_segment(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    del archive.objects[archive.segment_keys[1]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("missing-segment", 10, 19, archive.segment_keys[1])]
    assert report.findings[0].severity is Severity.TAMPERING


def test_replaced_segment_from_another_chain(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    other = build_archive(signer, chain_id=b"\xee" * 16)
    archive.objects[archive.segment_keys[1]] = other.objects[other.segment_keys[1]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("replaced-segment", 10, 19, archive.segment_keys[1])]


def test_replaced_segment_with_same_records_re_encoded(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(2)
    archive.rewrite_segment(2, records, record_count=10)
    original = archive.objects[archive.segment_keys[2]]
    # Re-encode with an unknown field appended inside the body: same records, different bytes.
    body = original[16:] + b"\x78\x01"
    archive.objects[archive.segment_keys[2]] = original[:8] + len(body).to_bytes(8, "big") + body
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("replaced-segment", 20, 29, archive.segment_keys[2])]


def test_bytes_appended_to_segment(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    archive.objects[archive.segment_keys[2]] += b"\x12\x03abc"
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("appended-bytes", None, None, archive.segment_keys[2])]


def test_bytes_appended_to_checkpoint(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    archive.objects[archive.checkpoint_keys[0]] += b"junk"
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("appended-bytes", None, None, archive.checkpoint_keys[0])]


def test_unknown_key(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    # A record signed by a key the auditor did not pin, in an otherwise valid archive.
    archive = build_archive(signer, checkpoints=False)
    records = archive.segment_records(1)
    entry = bytearray(records[0].entry)
    entry[60:68] = other_signer.key_id
    (signature,) = sign_entry_hashes(other_signer, [entry_hash(bytes(entry))])
    records[0] = archive_pb2.SealedRecord(entry=bytes(entry), signature=signature)
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [
        ("uncovered-tail", 0, 29, archive.segment_keys[2]),
        ("unknown-key", 10, 10, archive.segment_keys[1]),
    ]


def test_wrong_pinned_key_reports_unknown_key_for_checkpoints(
    signer: Ed25519Signer, other_signer: Ed25519Signer, archive: BuiltArchive
) -> None:
    report = verify_objects(archive.objects, [other_signer.public_key])
    # One finding that says which key signed the chain, not one per object; and no line that
    # claims a signature was checked.
    assert problems(report) == [("unknown-key", 0, 29, archive.checkpoint_keys[0])]
    (finding,) = report.findings
    assert finding.message.startswith(f"30 record(s) and 3 checkpoint(s) are signed with key id {signer.key_id.hex()}")
    assert other_signer.key_id.hex() in finding.message
    assert report.signatures_checked == 0
    assert not report.clean
    from collector_ext.verify.render import render_text

    text = render_text(report, "archive")
    assert (
        f"none of the pinned keys (key ids {other_signer.key_id.hex()}) signed anything in this archive; it is "
        f"signed with key id(s) {signer.key_id.hex()}" in text
    )


def test_checkpoint_that_does_not_match_the_chain(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    # A validly signed checkpoint naming a head hash the chain does not have (a writer bug or a
    # compromised key): reported at the sequence number it names.
    decoded = decode_checkpoint(archive.objects[archive.checkpoint_keys[1]])
    bad = dataclasses.replace(decoded.checkpoint, head_sha256=hashlib.sha256(b"not the head").digest())
    archive.objects[archive.checkpoint_keys[1]], _ = sign_checkpoint(bad, signer)
    report = verify_objects(archive.objects, [signer.public_key])
    # Checkpoint 2 names the original checkpoint 1 as predecessor, so the checkpoint chain breaks too.
    assert problems(report) == [
        ("checkpoint-mismatch", None, None, archive.checkpoint_keys[2]),
        ("checkpoint-mismatch", 19, None, archive.segment_keys[1]),
    ]


def test_forged_checkpoint(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    data = bytearray(archive.objects[archive.checkpoint_keys[2]])
    data[-5] ^= 0x01  # inside the signature
    archive.objects[archive.checkpoint_keys[2]] = bytes(data)
    report = verify_objects(archive.objects, [signer.public_key])
    # Without its only valid checkpoint, the last segment is checked record by record and is an
    # uncovered tail (a warning); the forged checkpoint itself is tampering.
    assert problems(report) == [
        ("forged-checkpoint", 29, None, archive.checkpoint_keys[2]),
        ("uncovered-tail", 20, 29, archive.segment_keys[2]),
    ]
    assert not report.clean


def test_missing_checkpoint_in_the_middle(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    del archive.objects[archive.checkpoint_keys[1]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("missing-checkpoint", None, None, archive.checkpoint_keys[2])]


def test_truncated_chain_after_a_checkpoint(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    del archive.objects[archive.segment_keys[2]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("truncated-chain", 20, 29, archive.segment_keys[2])]
    assert not report.clean


def test_tail_not_covered_by_a_checkpoint_is_a_warning_not_tampering(
    signer: Ed25519Signer, archive: BuiltArchive
) -> None:
    # A crash after the last segment was written but before its checkpoint.
    del archive.objects[archive.checkpoint_keys[2]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("uncovered-tail", 20, 29, archive.segment_keys[2])]
    assert report.findings[0].severity is Severity.WARNING
    assert report.clean
    assert report.signatures_checked == 2 + 10  # two checkpoints, and each uncovered record


def test_missing_records_not_covered_by_a_checkpoint_are_loss(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, checkpoints=False)
    del archive.objects[archive.segment_keys[1]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [
        ("missing-segment", 10, 19, ""),
        ("uncovered-tail", 0, 29, archive.segment_keys[2]),
    ]
    assert report.findings[0].severity is Severity.LOSS
    assert not report.clean


def test_malformed_object(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    archive.objects[archive.segment_keys[1]] = b"not a segment at all"
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("malformed-object", 10, 19, archive.segment_keys[1])]


def test_every_finding_kind_has_a_test() -> None:
    tested = {
        K.MODIFIED_RECORD,
        K.DELETED_RECORDS,
        K.INSERTED_RECORD,
        K.REORDERED_RECORD,
        K.MISSING_SEGMENT,
        K.REPLACED_SEGMENT,
        K.APPENDED_BYTES,
        K.MALFORMED_OBJECT,
        K.UNKNOWN_KEY,
        K.CHECKPOINT_MISMATCH,
        K.FORGED_CHECKPOINT,
        K.MISSING_CHECKPOINT,
        K.TRUNCATED_CHAIN,
        K.UNCOVERED_TAIL,
        K.FORKED_CHAIN,
        K.UNRECOGNISED_OBJECT,
        # Notes and warnings about a chain's history: test_restarts.py
        K.RESTART,
        K.SUPERSEDED_CHAIN,
        K.WRITTEN_AFTER_SUPERSEDED,
        K.SUPERSEDED_CHAIN_MISSING,
        K.RESENT_RECORDS,
        K.FORMAT_V1,
        # The attacks of issue 9: test_adversary.py
        K.WRONG_KEY,
        K.KEY_OUTSIDE_VALIDITY,
        K.KEY_ROTATION,
        # Run keys (issue 10): tests/golden/conformance (run-key*, uncertified-run-key) and
        # tests/unit/seal/test_token_run_key.py
        K.RUN_KEY,
        K.RUN_KEY_OUTSIDE_RUN,
        K.UNCERTIFIED_RUN_KEY,
        K.RUN_KEY_CHECKPOINT,
        K.FOREIGN_CHAIN,
        K.SUPERSEDED_CHAIN_CUT,
        K.ROLLBACK,
        K.VANISHED_CHAIN,
        K.STALE_CHAIN,
        K.UNREADABLE_OBJECT,
        # The Merkle tree (issue 11): tests/unit/verify/test_proof_tree.py
        K.TREE_MISMATCH,
        # Witnesses and time-stamps (issue 11): tests/unit/witness/test_verify_evidence.py and
        # tests/integration/test_witness_sidecar.py
        K.BAD_COSIGNATURE,
        K.BAD_TIMESTAMP,
        K.UNWITNESSED_CHECKPOINT,
        K.MISSING_TIMESTAMP,
        K.WITNESSED,
        K.TIMESTAMPED,
        K.WITNESS_ROLLBACK,
        # Loki cross-check findings: tests/integration/test_loki_sink.py
        K.LOKI_MISSING,
        K.LOKI_ALTERED,
        K.LOKI_NOT_IN_ARCHIVE,
    }
    assert tested == set(FindingKind)


def test_forked_chain(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    # Two validly signed entries with one sequence number: only a key holder can do this.
    records = archive.segment_records(2)
    entry = bytearray(records[4].entry)
    entry[-1] ^= 0x01
    (signature,) = sign_entry_hashes(signer, [entry_hash(bytes(entry))])
    records.insert(5, archive_pb2.SealedRecord(entry=bytes(entry), signature=signature))
    archive.rewrite_segment(2, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("forked-chain", 24, None, archive.segment_keys[2])]


def test_unrecognised_object_is_a_warning(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    archive.objects["notes/readme.txt"] = b"hello"
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [("unrecognised-object", None, None, "notes/readme.txt")]
    assert report.clean


def test_every_finding_is_reported_not_just_the_first(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    records = archive.segment_records(0)
    records[3], records[4] = records[4], records[3]
    archive.rewrite_segment(0, records)
    archive.objects[archive.segment_keys[2]] += b"x"
    del archive.objects[archive.segment_keys[1]]
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [
        ("appended-bytes", None, None, archive.segment_keys[2]),
        ("missing-segment", 10, 19, archive.segment_keys[1]),
        ("reordered-record", 3, None, archive.segment_keys[0]),
    ]


def test_entry_header_fields_are_checked(signer: Ed25519Signer, archive: BuiltArchive) -> None:
    # A validly signed entry of the wrong kind (a faulty writer holding the key): its header is
    # reported, and the re-signed entry no longer links to its successor.
    records = archive.segment_records(0)
    entry = bytearray(records[5].entry)
    entry[2] = 2  # GENESIS, but not at sequence 0
    (signature,) = sign_entry_hashes(signer, [entry_hash(bytes(entry))])
    records[5] = archive_pb2.SealedRecord(entry=bytes(entry), signature=signature)
    archive.rewrite_segment(0, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert problems(report) == [
        ("forked-chain", 6, None, archive.segment_keys[0]),
        ("malformed-object", 5, None, archive.segment_keys[0]),
    ]
