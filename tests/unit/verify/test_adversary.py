"""The attacks of issue 9, one group per class: each builds a tampered archive the way an adversary
would (read, add, rename, rewrite or delete objects, without the current signing key) and asserts
the exact findings (kind, severity, sequence range, object key) the verifier must produce, with a
clean control where the attack changes something a valid archive may also show.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector_ext.errors import KeyFileError
from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import genesis_payload, key_rotation_payload, sign_entry_hashes
from collector_ext.seal.checkpoint import decode_checkpoint, sign_checkpoint
from collector_ext.seal.entry import CHECKPOINT_SIGNATURE_PREFIX, ENTRY_HEADER_SIZE, EntryKind, entry_hash
from collector_ext.seal.framing import CHECKPOINT_MAGIC, SEGMENT_MAGIC, frame
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.seal.segment import decode_segment
from collector_ext.verify.findings import FindingKind, VerificationReport
from collector_ext.verify.keys import Keyring, PinnedKey, parse_keyring
from collector_ext.verify.render import render_text
from collector_ext.verify.run import ArchiveCheck, VerifyOptions, check_archive, check_archive_with_state
from collector_ext.verify.state import StateFileError, VerifierState, dump_state, load_state
from tests.archive_builder import BASE_TIME, BuiltArchive, build_archive, restart_mark, verify_objects
from tests.fakes import InMemoryArchive

OLD = bytes.fromhex("0a" * 16)
NEW = bytes.fromhex("0b" * 16)
CHAIN = bytes(range(16)).hex()  # build_archive's default chain id
HOUR_NS = 3_600 * 1_000_000_000

Row = tuple[str, str, int | None, int | None, str]


def _order(row: Row) -> tuple[str, int, int, str]:
    return row[0], -1 if row[2] is None else row[2], -1 if row[3] is None else row[3], row[4]


def findings(report: VerificationReport) -> list[Row]:
    """(kind, severity, first, last, object key) of every finding, in a stable order."""
    return sorted(
        ((f.kind.value, f.severity.value, f.first_sequence, f.last_sequence, f.object_key) for f in report.findings),
        key=_order,
    )


def _keys(keys: Keyring | Sequence[PublicKey]) -> Keyring | dict[bytes, PublicKey]:
    return keys if isinstance(keys, Keyring) else {key.key_id: key for key in keys}


def run(
    store: InMemoryArchive,
    keys: Keyring | Sequence[PublicKey],
    state: VerifierState | None = None,
    options: VerifyOptions | None = None,
) -> ArchiveCheck:
    return asyncio.run(check_archive_with_state(store, _keys(keys), state, options))


def check(
    objects: dict[str, bytes], keys: Keyring | Sequence[PublicKey], options: VerifyOptions | None = None
) -> VerificationReport:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return asyncio.run(check_archive(store, _keys(keys), options))


def _with_header(data: bytes, *, created_unix_nano: int) -> bytes:
    """The segment object re-encoded with another creation time in its header, records untouched."""
    old = decode_segment(data)
    header = archive_pb2.SegmentHeader(
        format_version=old.format_version,
        chain_id=old.chain_id,
        first_sequence=old.first_sequence,
        record_count=old.record_count,
        created_unix_nano=created_unix_nano,
    )
    return frame(
        SEGMENT_MAGIC,
        archive_pb2.Segment(
            header=header,
            records=[archive_pb2.SealedRecord(entry=r.entry, signature=r.signature) for r in old.records],
        ).SerializeToString(),
    )


def _with_unknown_field(data: bytes) -> bytes:
    """The segment body with an unknown varint field (15) appended: same records, other bytes."""
    body = data[16:] + b"\x78\x01"
    return data[:8] + len(body).to_bytes(8, "big") + body


def _reordered_fields(data: bytes) -> bytes:
    """The same Segment message encoded with its records before its header (protobuf accepts any
    field order): every record and header field as stored, other bytes."""
    old = archive_pb2.Segment.FromString(data[16:])
    records = archive_pb2.Segment(records=old.records).SerializeToString()
    return frame(SEGMENT_MAGIC, records + archive_pb2.Segment(header=old.header).SerializeToString())


REWRITES = {
    "header-time": lambda data: _with_header(data, created_unix_nano=BASE_TIME + 7),
    "unknown-field": _with_unknown_field,
    "re-encoded": _reordered_fields,
}


def _resign_checkpoint(archive: BuiltArchive, index: int, signer: Ed25519Signer, **changes: object) -> None:
    decoded = decode_checkpoint(archive.objects[archive.checkpoint_keys[index]])
    changed = dataclasses.replace(decoded.checkpoint, **changes)  # type: ignore[arg-type]
    archive.objects[archive.checkpoint_keys[index]], _ = sign_checkpoint(changed, signer)


# -- 1. notes do not hide byte changes ------------------------------------------------------------


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
@pytest.mark.parametrize("all_signatures", [False, True])
def test_rewritten_segment_with_a_restart_mark_is_a_replaced_segment(
    signer: Ed25519Signer, rewrite: str, all_signatures: bool
) -> None:
    archive = build_archive(signer, special={15: restart_mark()})
    key = archive.segment_keys[1]
    original = archive.objects[key]
    archive.objects[key] = REWRITES[rewrite](original)
    assert archive.objects[key] != original
    assert list(decode_segment(archive.objects[key]).records) == list(decode_segment(original).records)
    report = verify_objects(archive.objects, [signer.public_key], all_signatures=all_signatures)
    # Every record verifies and the mark is still a note, but the object is not the one checkpoint 1
    # recorded.
    assert findings(report) == [
        ("replaced-segment", "tampering", 10, 19, key),
        ("restart", "info", 15, None, key),
    ]
    assert not report.clean


def test_restart_mark_segment_control_is_clean(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, special={15: restart_mark()})
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("restart", "info", 15, None, archive.segment_keys[1])]


def _successor(
    signer: Ed25519Signer, old: BuiltArchive, *, last: int, covered: int, checkpoint_number: int
) -> BuiltArchive:
    """A version 2 chain NEW whose genesis supersedes ``old`` as a writer does: naming its head at
    ``last`` and its checkpoint ``checkpoint_number``."""
    genesis = genesis_payload(
        signer.public_key,
        writer="collector-ext/test",
        reason="local state missing",
        writer_id="pod-0",
        supersedes_chain_id=old.chain_id,
        superseded_last_sequence=last,
        superseded_covered_until=covered,
        superseded_head_sha256=old.entry_hash_at(last),
        superseded_checkpoint_number=checkpoint_number,
        superseded_checkpoint_sha256=old.checkpoint_hash_at(checkpoint_number),
    )
    return build_archive(signer, chain_id=NEW, genesis=genesis, segments=2)


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_rewritten_segment_with_a_superseding_genesis_is_a_replaced_segment(
    signer: Ed25519Signer, rewrite: str
) -> None:
    old = build_archive(signer, chain_id=OLD, checkpointed_segments=2)
    new = _successor(signer, old, last=29, covered=19, checkpoint_number=1)
    key = new.segment_keys[0]
    new.objects[key] = REWRITES[rewrite](new.objects[key])
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("replaced-segment", "tampering", 0, 9, key),
        ("superseded-chain", "info", 0, None, key),
        ("uncovered-tail", "info", 20, 29, old.segment_keys[2]),
    ]


# -- 2. a successor's signed claims about the chain it superseded ---------------------------------


def _pair(signer: Ed25519Signer) -> tuple[BuiltArchive, BuiltArchive]:
    """OLD crashed after segment 2 was archived but before its checkpoint; NEW took over."""
    old = build_archive(signer, chain_id=OLD, checkpointed_segments=2)
    return old, _successor(signer, old, last=29, covered=19, checkpoint_number=1)


def test_intact_superseded_pair_is_clean_with_the_tail_as_a_note(signer: Ed25519Signer) -> None:
    old, new = _pair(signer)
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("uncovered-tail", "info", 20, 29, old.segment_keys[2]),
    ]
    assert report.clean


def test_superseded_chain_cut_to_its_genesis_segment(signer: Ed25519Signer) -> None:
    old, new = _pair(signer)
    for key in (*old.segment_keys[1:], *old.checkpoint_keys[1:]):
        del old.objects[key]
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    # What is left is a consistent chain 0-9 with checkpoint 0; only NEW's genesis shows it reached 29
    # with checkpoint 1 covering 0-19: three broken claims.
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
    ]
    assert {f.chain_id for f in report.of_kind(FindingKind.SUPERSEDED_CHAIN_CUT)} == {OLD.hex()}
    assert not report.clean


def test_superseded_chain_with_its_tail_segment_deleted(signer: Ed25519Signer) -> None:
    old, new = _pair(signer)
    del old.objects[old.segment_keys[2]]
    # Without the successor this is a valid archive: a chain 0-19, all of it checkpointed.
    assert verify_objects(old.objects, [signer.public_key]).findings == ()
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-cut", "tampering", 20, 29, ""),
    ]
    (cut,) = report.of_kind(FindingKind.SUPERSEDED_CHAIN_CUT)
    assert "ends at seq 19" in cut.message
    assert cut.chain_id == OLD.hex()


def test_superseded_chain_with_its_newest_checkpoint_deleted(signer: Ed25519Signer) -> None:
    old, new = _pair(signer)
    del old.objects[old.checkpoint_keys[1]]
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    # The records are all there (the tail note now starts after checkpoint 0), but NEW's genesis
    # names checkpoint 1 covering 0-19: coverage and checkpoint number both fall short.
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-cut", "tampering", None, None, ""),
        ("superseded-chain-cut", "tampering", None, None, ""),
        ("uncovered-tail", "info", 10, 29, old.segment_keys[2]),
    ]
    messages = " | ".join(f.message for f in report.of_kind(FindingKind.SUPERSEDED_CHAIN_CUT))
    assert "cover seq 0-9" in messages
    assert "newest valid checkpoint is number 0" in messages


def test_superseded_chain_with_its_tail_and_newest_checkpoint_deleted(signer: Ed25519Signer) -> None:
    # The rollback of FORMAT.md 17 inside the old chain: the successor acts as its checkpoint.
    old, new = _pair(signer)
    for key in (old.segment_keys[2], old.segment_keys[1], old.checkpoint_keys[1]):
        del old.objects[key]
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
        ("superseded-chain-cut", "tampering", 10, 29, ""),
    ]


def test_loss_in_a_superseded_chain_before_its_claimed_end_is_tampering(signer: Ed25519Signer) -> None:
    old = build_archive(signer, chain_id=OLD, checkpointed_segments=1)
    new = _successor(signer, old, last=29, covered=9, checkpoint_number=0)
    del old.objects[old.segment_keys[1]]
    # Alone, records 10-19 missing where no checkpoint vouched for them could be a crash: loss.
    alone = verify_objects(old.objects, [signer.public_key])
    assert ("missing-segment", "loss", 10, 19, "") in findings(alone)
    # NEW's signed genesis vouches that OLD reached 29: they were removed.
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("missing-segment", "tampering", 10, 19, ""),
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("uncovered-tail", "info", 10, 29, old.segment_keys[2]),
    ]
    assert not report.clean


def test_superseded_chain_deleted_entirely(signer: Ed25519Signer) -> None:
    _old, new = _pair(signer)
    report = verify_objects(new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-missing", "tampering", 0, None, ""),
    ]
    assert report.of_kind(FindingKind.SUPERSEDED_CHAIN_MISSING)[0].chain_id == NEW.hex()


# -- 3. every chain is bound to its key -----------------------------------------------------------


def _resign_record(
    archive: BuiltArchive, segment: int, position: int, signer: Ed25519Signer, *, payload: bytes | None = None
) -> None:
    records = archive.segment_records(segment)
    entry = bytearray(records[position].entry)
    if payload is not None:
        entry[ENTRY_HEADER_SIZE:] = payload
    entry[60:68] = signer.key_id
    (signature,) = sign_entry_hashes(signer, [entry_hash(bytes(entry))])
    records[position] = archive_pb2.SealedRecord(entry=bytes(entry), signature=signature)
    archive.rewrite_segment(segment, records)


@pytest.mark.parametrize("all_signatures", [False, True])
def test_other_pinned_key_rewriting_a_record_is_wrong_key(
    signer: Ed25519Signer, other_signer: Ed25519Signer, all_signatures: bool
) -> None:
    # The chain is bound to other_signer (its genesis names it); signer, a retired key the auditor
    # still pins for older chains, rewrites record 24.
    archive = build_archive(other_signer)
    _resign_record(archive, 2, 4, signer, payload=b"forged by the retired key")
    keys = [signer.public_key, other_signer.public_key]
    report = verify_objects(archive.objects, keys, all_signatures=all_signatures)
    assert findings(report) == [("wrong-key", "tampering", 24, None, archive.segment_keys[2])]
    assert signer.key_id.hex() in report.findings[0].message
    assert other_signer.key_id.hex() in report.findings[0].message


def _extended_by(signer: Ed25519Signer, owner: Ed25519Signer) -> tuple[BuiltArchive, dict[str, bytes]]:
    """``owner``'s chain of 3 segments, and what ``signer`` forges to extend it: segment 3 (seq 30-39)
    linked to the real head, and checkpoint 3 naming checkpoint 2 (keyed as in the returned archive)."""
    honest = build_archive(owner)
    forged = build_archive(owner, segments=4, key_for=lambda sequence: owner if sequence < 30 else signer)
    extension = dataclasses.replace(
        decode_checkpoint(forged.objects[forged.checkpoint_keys[3]]).checkpoint,
        previous_checkpoint_sha256=honest.checkpoint_hash_at(2),
    )
    checkpoint, _ = sign_checkpoint(extension, signer)
    return forged, {
        forged.segment_keys[3]: forged.objects[forged.segment_keys[3]],
        forged.checkpoint_keys[3]: checkpoint,
    }


def test_other_pinned_key_extending_a_chain_is_wrong_key(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    forged, added = _extended_by(signer, other_signer)
    del added[forged.checkpoint_keys[3]]
    report = verify_objects(build_archive(other_signer).objects | added, [signer.public_key, other_signer.public_key])
    # One finding per record (FORMAT.md 13.3 step 8.5a).
    assert findings(report) == [
        ("wrong-key", "tampering", sequence, None, forged.segment_keys[3]) for sequence in range(30, 40)
    ]


def test_other_pinned_key_extending_a_chain_with_a_checkpoint_is_wrong_key(
    signer: Ed25519Signer, other_signer: Ed25519Signer
) -> None:
    forged, added = _extended_by(signer, other_signer)
    report = verify_objects(build_archive(other_signer).objects | added, [signer.public_key, other_signer.public_key])
    assert sorted(findings(report), key=lambda row: (row[2], row[4])) == [
        *(("wrong-key", "tampering", sequence, None, forged.segment_keys[3]) for sequence in range(30, 39)),
        ("wrong-key", "tampering", 39, None, forged.checkpoint_keys[3]),
        ("wrong-key", "tampering", 39, None, forged.segment_keys[3]),
    ]


def test_a_checkpoint_of_another_pinned_key_does_not_spare_the_genesis_segment_its_signatures(
    signer: Ed25519Signer, other_signer: Ed25519Signer
) -> None:
    # The chain is bound to other_signer. The other pinned key rewrites the last record of the only
    # segment (no later link breaks) and re-signs checkpoint 0 over the new bytes and head. The digest
    # then matches, but it vouches only under the chain's own key: every record signature is checked.
    archive = build_archive(other_signer, segments=1)
    records = archive.segment_records(0)
    entry = bytearray(records[-1].entry)
    entry[-1] ^= 0x01
    records[-1] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[-1].signature)
    archive.rewrite_segment(0, records)
    data = archive.objects[archive.segment_keys[0]]
    decoded = decode_checkpoint(archive.objects[archive.checkpoint_keys[0]]).checkpoint
    ref = dataclasses.replace(decoded.segments[0], sha256=hashlib.sha256(data).digest(), size=len(data))
    _resign_checkpoint(archive, 0, signer, segments=(ref,), head_sha256=entry_hash(bytes(entry)), key_id=signer.key_id)
    report = verify_objects(archive.objects, [signer.public_key, other_signer.public_key])
    assert findings(report) == [
        ("modified-record", "tampering", 9, None, archive.segment_keys[0]),
        ("wrong-key", "tampering", 9, None, archive.checkpoint_keys[0]),
    ]
    assert report.signatures_checked == 1 + 10


def test_other_pinned_key_signing_a_checkpoint_is_wrong_key(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    archive = build_archive(other_signer)
    _resign_checkpoint(archive, 2, signer, key_id=signer.key_id)
    report = verify_objects(archive.objects, [signer.public_key, other_signer.public_key])
    # The checkpoint is reported; segment 2, unchanged, is proven record by record instead.
    assert findings(report) == [("wrong-key", "tampering", 29, None, archive.checkpoint_keys[2])]


def _rotating(
    signer: Ed25519Signer, successor: Ed25519Signer, at: int, *, payload: bytes | None = None
) -> BuiltArchive:
    """A chain signed by ``signer`` up to the key rotation entry at ``at``, by ``successor`` after it."""
    rotation = payload or key_rotation_payload(
        chain_id=bytes(range(16)), sequence=at, retired=signer, successor=successor, reason="scheduled rotation"
    )
    return build_archive(
        signer,
        special={at: (EntryKind.KEY_ROTATION, rotation)},
        key_for=lambda sequence: signer if sequence <= at else successor,
    )


@pytest.mark.parametrize("at", [15, 19, 20])
@pytest.mark.parametrize("all_signatures", [False, True])
def test_key_rotation_verifies_clean_with_a_note(
    signer: Ed25519Signer, other_signer: Ed25519Signer, at: int, all_signatures: bool
) -> None:
    archive = _rotating(signer, other_signer, at)
    keys = [signer.public_key, other_signer.public_key]
    report = verify_objects(archive.objects, keys, all_signatures=all_signatures)
    assert findings(report) == [("key-rotation", "info", at, None, archive.segment_keys[at // 10])]
    assert report.clean
    (note,) = report.findings
    assert f"from seq {at + 1} on the chain is signed by key id {other_signer.key_id.hex()}" in note.message
    assert "scheduled rotation" in note.message
    assert report.chains[0].signing_key_id == other_signer.key_id.hex()


def test_after_a_rotation_the_retired_key_cannot_write(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    archive = _rotating(signer, other_signer, 15)
    _resign_record(archive, 2, 3, signer, payload=b"written with the retired key")
    report = verify_objects(archive.objects, [signer.public_key, other_signer.public_key])
    assert findings(report) == [
        ("key-rotation", "info", 15, None, archive.segment_keys[1]),
        ("wrong-key", "tampering", 23, None, archive.segment_keys[2]),
    ]


def test_key_rotation_with_a_bad_new_key_signature_is_malformed(
    signer: Ed25519Signer, other_signer: Ed25519Signer
) -> None:
    good = archive_pb2.KeyRotationPayload.FromString(
        key_rotation_payload(chain_id=bytes(range(16)), sequence=15, retired=signer, successor=other_signer, reason="x")
    )
    bad = archive_pb2.KeyRotationPayload(
        new_public_key=good.new_public_key, new_key_signature=bytes(64), reason="x"
    ).SerializeToString()
    # The rotation does not take: the chain stays bound to signer, which signs on.
    archive = build_archive(signer, special={15: (EntryKind.KEY_ROTATION, bad)})
    report = verify_objects(archive.objects, [signer.public_key, other_signer.public_key])
    assert findings(report) == [("malformed-object", "tampering", 15, None, archive.segment_keys[1])]
    assert "does not verify" in report.findings[0].message


def test_key_rotation_entry_does_not_exist_in_format_version_1(
    signer: Ed25519Signer, other_signer: Ed25519Signer
) -> None:
    rotation = key_rotation_payload(
        chain_id=bytes(range(16)), sequence=15, retired=signer, successor=other_signer, reason="x"
    )
    archive = build_archive(signer, special={15: (EntryKind.KEY_ROTATION, rotation)}, format_version=1)
    report = verify_objects(archive.objects, [signer.public_key, other_signer.public_key])
    assert findings(report) == [
        ("format-v1", "info", None, None, ""),
        ("malformed-object", "tampering", 15, None, archive.segment_keys[1]),
    ]


def _window(signer: Ed25519Signer, **limits: object) -> Keyring:
    return Keyring([PinnedKey(signer.public_key, **limits)])  # type: ignore[arg-type]


def test_keyring_window_that_covers_the_chain_is_clean(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    report = check(archive.objects, _window(signer, not_before=BASE_TIME, not_after=BASE_TIME + 2))
    assert report.findings == ()


def test_records_and_checkpoint_after_the_keys_not_after(signer: Ed25519Signer) -> None:
    # Segment i is sealed and checkpointed at BASE_TIME + i: segment 2 falls after the window.
    archive = build_archive(signer)
    report = check(archive.objects, _window(signer, not_after=BASE_TIME + 1))
    assert findings(report) == [
        ("key-outside-validity", "tampering", 20, 29, archive.segment_keys[2]),
        ("key-outside-validity", "tampering", 29, None, archive.checkpoint_keys[2]),
    ]
    assert not report.clean


def test_records_and_checkpoint_before_the_keys_not_before(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    report = check(archive.objects, _window(signer, not_before=BASE_TIME + 1))
    assert findings(report) == [
        ("key-outside-validity", "tampering", 0, 9, archive.segment_keys[0]),
        ("key-outside-validity", "tampering", 9, None, archive.checkpoint_keys[0]),
    ]


def test_key_signing_for_a_writer_id_the_keyring_does_not_allow(signer: Ed25519Signer) -> None:
    genesis = genesis_payload(signer.public_key, writer="test", reason="test", writer_id="pod-0")
    archive = build_archive(signer, genesis=genesis)
    assert check(archive.objects, _window(signer, writer_ids=frozenset({"pod-0"}))).findings == ()
    report = check(archive.objects, _window(signer, writer_ids=frozenset({"pod-1"})))
    assert findings(report) == [("key-outside-validity", "tampering", 0, None, archive.segment_keys[0])]
    assert "pod-0" in report.findings[0].message


def test_restart_mark_for_a_writer_id_the_keyring_does_not_allow(signer: Ed25519Signer) -> None:
    genesis = genesis_payload(signer.public_key, writer="test", reason="test", writer_id="pod-1")
    archive = build_archive(signer, genesis=genesis, special={15: restart_mark()})  # the mark says pod-0
    report = check(archive.objects, _window(signer, writer_ids=frozenset({"pod-1"})))
    assert findings(report) == [
        ("key-outside-validity", "tampering", 15, None, archive.segment_keys[1]),
        ("restart", "info", 15, None, archive.segment_keys[1]),
    ]


def _pem(key: PublicKey) -> str:
    public = Ed25519PublicKey.from_public_bytes(key.raw)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _indented(pem: str) -> str:
    return "".join(f"      {line}\n" for line in pem.splitlines())


def test_parse_keyring(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    document = (
        "keys:\n"
        "  - public_key: |\n" + _indented(_pem(signer.public_key)) + "    not_before: 2026-01-01T00:00:00Z\n"
        "    not_after: 2026-07-01T00:00:00+02:00\n"
        "    writer_ids: [pod-0, pod-1]\n"
        "    comment: retired in July\n"
        "  - public_key: keys/current.pub\n"
    )
    files = {"keys/current.pub": _pem(other_signer.public_key).encode()}
    keyring = parse_keyring(document.encode(), "keyring.yaml", files.__getitem__)
    assert keyring.key_ids == sorted([signer.key_id.hex(), other_signer.key_id.hex()])
    retired = keyring.pinned(signer.key_id)
    assert retired is not None
    assert retired.not_before == 1_767_225_600 * 1_000_000_000
    assert retired.not_after == (1_782_864_000 - 2 * 3600) * 1_000_000_000
    assert retired.writer_ids == frozenset({"pod-0", "pod-1"})
    current = keyring.pinned(other_signer.key_id)
    assert current is not None
    assert (current.not_before, current.not_after, current.writer_ids) == (None, None, None)
    assert keyring.windowed


def _entry(pem: str, extra: str = "") -> str:
    return "  - public_key: |\n" + _indented(pem) + extra


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        ("  - 42\n", "keys[1]: expected a mapping"),
        ("  - public_key: ''\n", "keys[1].public_key"),
        ("  - public_key: missing.pub\n", "keys[1].public_key: cannot read missing.pub"),
        ("  - public_key: |\n      -----BEGIN PUBLIC KEY-----\n      AAAA\n", "keys[1]"),
        ("OTHER\n    not_before: yesterday\n", "keys[1].not_before: 'yesterday' is not an RFC 3339 time"),
        ("OTHER\n    not_after: 2026-01-01T00:00:00\n", "keys[1].not_after: give a time zone"),
        ("OTHER\n    not_before: 2026-02-01T00:00:00Z\n    not_after: 2026-01-01T00:00:00Z\n", "keys[1]: not_after"),
        ("OTHER\n    writer_ids: pod-0\n", "keys[1].writer_ids: expected a list"),
        ("OTHER\n    expires: 2026-01-01T00:00:00Z\n", "keys[1]: unknown field(s) expires"),
        ("FIRST\n", "keys[1]: key id"),
    ],
    ids=[
        "not-a-mapping",
        "empty-key",
        "unreadable-path",
        "bad-pem",
        "bad-time",
        "naive-time",
        "inverted-window",
        "writer-ids-not-a-list",
        "unknown-field",
        "duplicate-key",
    ],
)
def test_parse_keyring_errors_name_the_entry(
    signer: Ed25519Signer, other_signer: Ed25519Signer, second: str, problem: str
) -> None:
    first = _entry(_pem(signer.public_key))
    if second.startswith("OTHER"):
        second = _entry(_pem(other_signer.public_key)) + second.removeprefix("OTHER\n")
    elif second.startswith("FIRST"):
        second = first

    def read_file(name: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", name)

    with pytest.raises(KeyFileError) as raised:
        parse_keyring(("keys:\n" + first + second).encode(), "keyring.yaml", read_file)
    assert str(raised.value).startswith("keyring.yaml")
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    "document", [b"keys: [", b"keys: []\n", b"- a list\n", b"{}"], ids=["yaml", "empty", "list", "no-keys"]
)
def test_parse_keyring_rejects_a_document_without_keys(document: bytes) -> None:
    with pytest.raises(KeyFileError, match=r"^keyring\.yaml: "):
        parse_keyring(document, "keyring.yaml", lambda name: b"")


# -- 4. chains bound to their archive -------------------------------------------------------------


def _named(signer: Ed25519Signer, archive_id: str, chain_id: bytes = bytes(range(16))) -> BuiltArchive:
    genesis = genesis_payload(signer.public_key, writer="test", reason="test", archive_id=archive_id)
    return build_archive(signer, genesis=genesis, chain_id=chain_id)


def test_chain_copied_from_another_archive_is_foreign(signer: Ed25519Signer) -> None:
    archive = _named(signer, "s3://bucket/a")
    report = check(archive.objects, [signer.public_key], VerifyOptions(archive_id="s3://bucket/b"))
    assert findings(report) == [("foreign-chain", "tampering", 0, None, "")]
    assert report.findings[0].chain_id == CHAIN
    assert "'s3://bucket/a'" in report.findings[0].message
    assert not report.clean


def test_chain_naming_the_archive_verified_is_clean(signer: Ed25519Signer) -> None:
    archive = _named(signer, "s3://bucket/a")
    report = check(archive.objects, [signer.public_key], VerifyOptions(archive_id="s3://bucket/a"))
    assert report.findings == ()
    assert report.chains[0].archive_id == "s3://bucket/a"


def test_chains_naming_different_archives_without_an_expected_id_are_warnings(signer: Ed25519Signer) -> None:
    a = _named(signer, "s3://bucket/a", chain_id=OLD)
    b = _named(signer, "s3://bucket/b", chain_id=NEW)
    report = check(a.objects | b.objects, [signer.public_key])
    assert findings(report) == [
        ("foreign-chain", "warning", 0, None, ""),
        ("foreign-chain", "warning", 0, None, ""),
    ]
    assert sorted(f.chain_id for f in report.findings) == [OLD.hex(), NEW.hex()]
    assert report.clean
    # One archive named by every chain: nothing to say.
    assert check(a.objects | _named(signer, "s3://bucket/a", chain_id=NEW).objects, [signer.public_key]).findings == ()


def test_remembered_archive_id_catches_a_chain_copied_in_later(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()
    store.objects = dict(_named(signer, "s3://bucket/a", chain_id=OLD).objects)
    first = run(store, [signer.public_key])
    assert first.report.findings == ()
    assert first.state.archive_id == "s3://bucket/a"
    store.objects |= _named(signer, "s3://bucket/b", chain_id=NEW).objects
    report = run(store, [signer.public_key], first.state).report
    assert findings(report) == [("foreign-chain", "tampering", 0, None, "")]
    assert report.findings[0].chain_id == NEW.hex()


# -- 5. rollback, against what an earlier run remembered ------------------------------------------


def _store(objects: dict[str, bytes]) -> InMemoryArchive:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return store


def _roundtrip(state: VerifierState) -> VerifierState:
    return load_state(dump_state(state), "state.json", "memory://archive")


def _grown(signer: Ed25519Signer) -> tuple[InMemoryArchive, BuiltArchive, VerifierState]:
    """An archive verified at 3 segments, then grown to 5 and verified again (incrementally)."""
    small = build_archive(signer)
    store = _store(small.objects)
    first = run(store, [signer.public_key])
    assert first.report.findings == ()
    assert not first.report.incremental
    assert first.report.objects_read == 6
    large = build_archive(signer, segments=5)
    assert all(large.objects[key] == data for key, data in small.objects.items())
    store.objects |= {key: data for key, data in large.objects.items() if key not in small.objects}
    second = run(store, [signer.public_key], _roundtrip(first.state))
    assert second.report.findings == ()
    return store, large, _roundtrip(second.state)


def test_incremental_run_reads_only_what_is_new(signer: Ed25519Signer) -> None:
    small = build_archive(signer)
    store = _store(small.objects)
    first = run(store, [signer.public_key])
    large = build_archive(signer, segments=5)
    store.objects |= {key: data for key, data in large.objects.items() if key not in small.objects}
    second = run(store, [signer.public_key], _roundtrip(first.state))
    report = second.report
    assert report.findings == ()
    assert report.incremental
    # The remembered checkpoint 2 (read to see it is unchanged), then segments 3-4 and checkpoints 3-4.
    assert report.objects_read == 5
    assert report.records_checked == 20
    (chain,) = report.chains
    assert (chain.resumed_from, chain.last_sequence, chain.covered_until) == (2, 49, 49)
    remembered = second.state.chains[CHAIN].checkpoint
    assert remembered is not None
    assert (remembered["number"], remembered["last_sequence"]) == (4, 49)
    assert second.state.runs == 2


def test_incremental_run_of_an_unchanged_archive_reads_one_checkpoint(signer: Ed25519Signer) -> None:
    store, _large, state = _grown(signer)
    report = run(store, [signer.public_key], state).report
    assert report.findings == ()
    assert (report.objects_read, report.records_checked) == (1, 0)


@pytest.mark.parametrize("keep", [2, 3], ids=["to-checkpoint-2", "to-checkpoint-3"])
def test_rollback_to_an_older_consistent_archive(signer: Ed25519Signer, keep: int) -> None:
    store, large, state = _grown(signer)
    for index in range(keep + 1, 5):
        del store.objects[large.segment_keys[index]]
        del store.objects[large.checkpoint_keys[index]]
    # Alone, the shorter archive is consistent: only the state shows it was longer.
    assert run(store, [signer.public_key]).report.findings == ()
    report = run(store, [signer.public_key], state).report
    assert findings(report) == [("rollback", "tampering", 49, None, large.checkpoint_keys[4])]
    assert report.findings[0].chain_id == CHAIN
    assert not report.clean


def test_rollback_by_replacing_the_remembered_checkpoint(signer: Ed25519Signer) -> None:
    store, large, state = _grown(signer)
    decoded = decode_checkpoint(store.objects[large.checkpoint_keys[4]])
    changed = dataclasses.replace(decoded.checkpoint, time_unix_nano=decoded.checkpoint.time_unix_nano + 1)
    store.objects[large.checkpoint_keys[4]], _ = sign_checkpoint(changed, signer)
    report = run(store, [signer.public_key], state).report
    assert findings(report) == [("rollback", "tampering", 49, None, large.checkpoint_keys[4])]
    assert "replaced" in report.findings[0].message


def test_rolled_back_chain_is_reported_again_on_the_next_run(signer: Ed25519Signer) -> None:
    store, large, state = _grown(signer)
    for index in (3, 4):
        del store.objects[large.segment_keys[index]]
        del store.objects[large.checkpoint_keys[index]]
    after = run(store, [signer.public_key], state)
    assert [f.kind for f in after.report.findings] == [FindingKind.ROLLBACK]
    again = run(store, [signer.public_key], _roundtrip(after.state)).report
    assert findings(again) == [("rollback", "tampering", 49, None, large.checkpoint_keys[4])]


def test_vanished_chain(signer: Ed25519Signer) -> None:
    kept = build_archive(signer, chain_id=OLD)
    gone = build_archive(signer, chain_id=NEW)
    store = _store(kept.objects | gone.objects)
    first = run(store, [signer.public_key])
    assert first.report.findings == ()
    for key in gone.objects:
        del store.objects[key]
    assert run(store, [signer.public_key]).report.findings == ()
    report = run(store, [signer.public_key], _roundtrip(first.state)).report
    assert findings(report) == [("vanished-chain", "tampering", None, None, "")]
    assert report.findings[0].chain_id == NEW.hex()
    assert not report.clean


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "is damaged (not JSON"),
        (b'{"format": "something else"}', "is not a collector-ext verify state file"),
        (b"[]", "is not a collector-ext verify state file"),
    ],
    ids=["not-json", "other-format", "not-a-mapping"],
)
def test_damaged_state_file_is_an_error(data: bytes, problem: str) -> None:
    with pytest.raises(StateFileError) as raised:
        load_state(data, "audit/state.json", "memory://archive")
    assert "--state audit/state.json" in str(raised.value)
    assert problem in str(raised.value)


def test_state_file_with_a_damaged_chain_entry_is_an_error(signer: Ed25519Signer) -> None:
    _, _, state = _grown(signer)
    data = dump_state(state).replace(b'"number": 4', b'"number": -4')
    assert data != dump_state(state)
    with pytest.raises(StateFileError, match="is damaged"):
        load_state(data, "state.json", "memory://archive")


def test_state_file_of_another_archive_is_an_error(signer: Ed25519Signer) -> None:
    store = _store(build_archive(signer).objects)
    state = run(store, [signer.public_key]).state
    with pytest.raises(StateFileError, match="was written for archive 'memory://archive', not 's3://other'"):
        load_state(dump_state(state), "state.json", "s3://other")


def _finalised(signer: Ed25519Signer) -> BuiltArchive:
    """A chain whose newest checkpoint was stored at a clean shutdown."""
    archive = build_archive(signer)
    _resign_checkpoint(archive, 2, signer, final=True)
    return archive


STALE = VerifyOptions(stale_after_seconds=24 * 3600, now_unix_nano=BASE_TIME + 48 * HOUR_NS)


def test_open_chain_with_an_old_newest_checkpoint_is_stale(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    report = check(archive.objects, [signer.public_key], STALE)
    assert findings(report) == [("stale-chain", "warning", 29, None, "")]
    assert report.findings[0].chain_id == CHAIN
    assert "48.0 hours old" in report.findings[0].message
    assert report.clean


def test_open_chain_with_a_recent_checkpoint_is_not_stale(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    options = dataclasses.replace(STALE, now_unix_nano=BASE_TIME + 23 * HOUR_NS)
    assert check(archive.objects, [signer.public_key], options).findings == ()
    assert check(archive.objects, [signer.public_key]).findings == ()  # opt-in


def test_final_chain_is_never_stale(signer: Ed25519Signer) -> None:
    archive = _finalised(signer)
    report = check(archive.objects, [signer.public_key], STALE)
    assert report.findings == ()
    assert report.chains[0].final


def test_final_checkpoint_in_format_version_1_is_malformed(signer: Ed25519Signer) -> None:
    # sign_checkpoint refuses a final version 1 checkpoint; an attacker's encoder would not.
    archive = build_archive(signer, format_version=1)
    decoded = decode_checkpoint(archive.objects[archive.checkpoint_keys[2]])
    body = archive_pb2.CheckpointBody.FromString(decoded.body)
    body.final = True
    signed = body.SerializeToString(deterministic=True)
    message = archive_pb2.SignedCheckpoint(body=signed, signature=signer.sign(CHECKPOINT_SIGNATURE_PREFIX + signed))
    archive.objects[archive.checkpoint_keys[2]] = frame(CHECKPOINT_MAGIC, message.SerializeToString())
    report = check(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("format-v1", "info", None, None, ""),
        ("malformed-object", "tampering", None, None, archive.checkpoint_keys[2]),
        ("uncovered-tail", "warning", 20, 29, archive.segment_keys[2]),
    ]


# -- 6. one verdict where FORMAT.md had to be guessed ---------------------------------------------


@pytest.mark.parametrize("position", [0, 4, 9])
def test_entry_shorter_than_a_header_is_reported_where_it_stands(signer: Ed25519Signer, position: int) -> None:
    archive = build_archive(signer)
    records = archive.segment_records(1)
    records[position] = archive_pb2.SealedRecord(entry=b"short", signature=records[position].signature)
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("modified-record", "tampering", 10 + position, None, archive.segment_keys[1])]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 2),
        (0, 1),
        (0, 2),
    ],
)
def test_two_swapped_segments_are_two_replaced_segments(signer: Ed25519Signer, a: int, b: int) -> None:
    archive = build_archive(signer)
    key_a, key_b = archive.segment_keys[a], archive.segment_keys[b]
    archive.objects[key_a], archive.objects[key_b] = archive.objects[key_b], archive.objects[key_a]
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("replaced-segment", "tampering", a * 10, a * 10 + 9, key_a),
        ("replaced-segment", "tampering", b * 10, b * 10 + 9, key_b),
    ]


def test_two_swapped_segments_without_checkpoints(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, checkpoints=False)
    key_a, key_b = archive.segment_keys[1], archive.segment_keys[2]
    archive.objects[key_a], archive.objects[key_b] = archive.objects[key_b], archive.objects[key_a]
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("replaced-segment", "tampering", 10, 19, key_a),
        ("replaced-segment", "tampering", 20, 29, key_b),
        ("uncovered-tail", "warning", 0, 29, key_a),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_segment_renamed_into_another_date_directory(signer: Ed25519Signer, index: int) -> None:
    archive = build_archive(signer)
    listed = archive.segment_keys[index]
    assert "/2026/09/21/" in listed
    renamed = listed.replace("/2026/09/21/", "/2026/09/22/")
    archive.objects[renamed] = archive.objects.pop(listed)
    report = verify_objects(archive.objects, [signer.public_key])
    # The records are all there, under a key no checkpoint lists: the finding names the listed key.
    assert findings(report) == [("replaced-segment", "tampering", index * 10, index * 10 + 9, listed)]


def test_listed_segment_that_cannot_be_read_is_one_finding(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    store = _store(archive.objects)
    key = archive.segment_keys[1]
    del store.objects[key]
    store.unreadable[key] = "is a FIFO, not a regular file"
    report = run(store, [signer.public_key]).report
    assert findings(report) == [("unreadable-object", "tampering", 10, 19, key)]
    assert "FIFO" in report.findings[0].message


# -- 7. output an auditor cannot misread ----------------------------------------------------------


@pytest.mark.parametrize("checkpoints", [True, False])
def test_wrong_public_key_is_one_finding_per_chain(
    signer: Ed25519Signer, other_signer: Ed25519Signer, checkpoints: bool
) -> None:
    a = build_archive(signer, chain_id=OLD, checkpoints=checkpoints)
    b = build_archive(signer, chain_id=NEW, checkpoints=checkpoints)
    report = verify_objects(a.objects | b.objects, [other_signer.public_key])
    first_key = a.checkpoint_keys[0] if checkpoints else a.segment_keys[0]
    second_key = b.checkpoint_keys[0] if checkpoints else b.segment_keys[0]
    assert findings(report) == [
        ("unknown-key", "tampering", 0, 29, first_key),
        ("unknown-key", "tampering", 0, 29, second_key),
    ]
    assert [f.chain_id for f in report.findings] == [OLD.hex(), NEW.hex()]
    for finding in report.findings:
        checkpoints_counted = 3 if checkpoints else 0
        assert finding.message.startswith(
            f"30 record(s) and {checkpoints_counted} checkpoint(s) are signed with key id {signer.key_id.hex()}"
        )
        assert f"pinned key ids: {other_signer.key_id.hex()}" in finding.message
    assert report.signatures_checked == 0
    assert not report.of_kind(FindingKind.UNCOVERED_TAIL)
    text = render_text(report, "memory://archive")
    assert "0 signatures checked" in text
    assert text.count("unknown-key") == 2
    assert text.splitlines()[-1] != "verdict: VERIFIED"
