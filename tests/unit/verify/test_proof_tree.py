"""The writer's Merkle tree (tiles and checkpoint notes) and the verifier's checks of it (FORMAT.md 16)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.pipeline import SealingPipeline
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_note_key, parse_segment_key, parse_tile_key, tile_key
from collector_ext.seal.merkle import leaf_hash, tree_root
from collector_ext.seal.note import checkpoint_text, parse_note, parse_tree_head, sign_note
from collector_ext.seal.segment import decode_segment
from collector_ext.spool import Spool
from collector_ext.verify.findings import FindingKind, Severity
from collector_ext.verify.run import ArchiveCheck, check_archive_with_state
from collector_ext.verify.state import VerifierState, dump_state, load_state
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive
from tests.unit.test_pipeline import _settings

ARCHIVE_ID = "s3://audit/prod"


def _leaves(objects: dict[str, bytes]) -> list[bytes]:
    parsed = [p for p in map(parse_segment_key, objects) if p is not None]
    keys = [p.key for p in sorted(parsed, key=lambda p: p.first_sequence)]
    return [leaf_hash(r.entry) for key in keys for r in decode_segment(objects[key]).records]


def _notes(objects: dict[str, bytes]) -> list[str]:
    return sorted(k for k in objects if parse_note_key(k) is not None)


def _write(signer: Ed25519Signer, batches: int, **settings: object) -> tuple[InMemoryArchive, list[tuple[int, int]]]:
    store = InMemoryArchive()
    announced: list[tuple[int, int]] = []

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(**settings), archive_id=ARCHIVE_ID)
        pipeline.subscribe_checkpoints(lambda note, size, previous: announced.append((size, previous)))
        await pipeline.start()
        for i in range(batches):
            await pipeline.submit([f"record {i}.{j}".encode() for j in range(300)])
            await asyncio.sleep(0.01)
        await pipeline.close()

    asyncio.run(run())
    return store, announced


def test_notes_state_the_tree_of_the_entries_and_the_archive_verifies(signer: Ed25519Signer) -> None:
    store, announced = _write(signer, 5)
    leaves = _leaves(store.objects)
    notes = _notes(store.objects)
    assert notes, "a note per checkpoint"
    newest = parse_note(store.objects[notes[-1]])
    head = parse_tree_head(newest.text)
    assert head.size == len(leaves) == 1 + 5 * 300
    assert head.root == tree_root(leaves)
    assert head.origin == f"audit/prod/{notes[-1].split('/')[0]}"
    assert any(parse_tile_key(k) is not None for k in store.objects)
    # Every note is announced with the size before it; sizes never shrink.
    assert announced[-1][0] == head.size
    assert all(previous <= size for size, previous in announced)
    assert [size for size, _ in announced] == sorted(size for size, _ in announced)
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()


def test_the_tree_can_be_turned_off_for_measurement(signer: Ed25519Signer) -> None:
    store, announced = _write(signer, 1, merkle_tree=False)
    assert not _notes(store.objects) and announced == []
    assert verify_objects(store.objects, [signer.public_key]).findings == ()


def test_a_resigned_note_with_another_root_is_tampering(signer: Ed25519Signer) -> None:
    store, _ = _write(signer, 2)
    key = _notes(store.objects)[-1]
    head = parse_tree_head(parse_note(store.objects[key]).text)
    store.objects[key] = sign_note(checkpoint_text(head.origin, head.size, bytes(32)), head.origin, signer)
    report = verify_objects(store.objects, [signer.public_key])
    [finding] = report.findings
    assert (finding.kind, finding.severity, finding.object_key) == (FindingKind.TREE_MISMATCH, Severity.TAMPERING, key)
    assert finding.first_sequence == head.size - 1


def test_an_altered_or_foreign_note_is_reported(signer: Ed25519Signer) -> None:
    store, _ = _write(signer, 2)
    key = _notes(store.objects)[-1]
    original = store.objects[key]
    head = parse_tree_head(parse_note(original).text)
    store.objects[key] = original.replace(b"\n\n", b"\nextension\n\n", 1)
    kinds = {f.kind for f in verify_objects(store.objects, [signer.public_key]).findings}
    assert kinds == {FindingKind.FORGED_CHECKPOINT}
    stranger = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32))
    store.objects[key] = sign_note(parse_note(original).text, head.origin, stranger)
    kinds = {f.kind for f in verify_objects(store.objects, [signer.public_key]).findings}
    assert kinds == {FindingKind.UNKNOWN_KEY}
    store.objects[key] = original[:-10]
    kinds = {f.kind for f in verify_objects(store.objects, [signer.public_key]).findings}
    assert kinds == {FindingKind.MALFORMED_OBJECT}
    # A note of another chain's origin stored under this chain.
    other = head.origin.replace(head.origin[-32:], "0" * 32)
    store.objects[key] = sign_note(checkpoint_text(other, head.size, head.root), other, signer)
    kinds = {f.kind for f in verify_objects(store.objects, [signer.public_key]).findings}
    assert kinds == {FindingKind.TREE_MISMATCH}


def test_a_restarted_writer_resumes_the_tree_from_its_tiles_or_from_the_segments(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()

    async def run(batch: int) -> None:
        spool = Spool(tmp_path / "spool")
        pipeline = SealingPipeline(
            signer, store, _settings(signing_workers="threads"), spool=spool, archive_id=ARCHIVE_ID
        )
        await pipeline.start()
        await pipeline.submit([f"run {batch} record {j}".encode() for j in range(700)])
        await pipeline.close(drain_timeout=5)
        spool.mark_clean_shutdown()
        spool.close()

    asyncio.run(run(0))
    asyncio.run(run(1))
    # Tiles lost (say, a writer that had the tree switched off): the tree is computed from segments.
    for key in [k for k in store.objects if parse_tile_key(k) is not None]:
        del store.objects[key]
    asyncio.run(run(2))
    head = parse_tree_head(parse_note(store.objects[_notes(store.objects)[-1]]).text)
    leaves = _leaves(store.objects)
    assert head.size == len(leaves) and head.root == tree_root(leaves)
    findings = verify_objects(store.objects, [signer.public_key]).findings
    assert {f.kind for f in findings} == {FindingKind.RESTART}


def _state_run(store: InMemoryArchive, signer: Ed25519Signer, state: VerifierState | None) -> ArchiveCheck:
    check = asyncio.run(check_archive_with_state(store, {signer.public_key.key_id: signer.public_key}, state))
    return ArchiveCheck(check.report, load_state(dump_state(check.state), "state.json", store.description))


def test_an_incremental_audit_proves_the_new_tree_extends_the_remembered_one(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()

    async def run(batch: int, records: int) -> bytes:
        spool = Spool(tmp_path / "spool")
        pipeline = SealingPipeline(
            signer, store, _settings(signing_workers="threads"), spool=spool, archive_id=ARCHIVE_ID
        )
        await pipeline.start()
        await pipeline.submit([f"run {batch} record {j}".encode() for j in range(records)])
        await pipeline.close(drain_timeout=5)
        spool.mark_clean_shutdown()
        spool.close()
        return pipeline.chain_id

    chain_id = asyncio.run(run(0, 700))
    first = _state_run(store, signer, None)
    assert first.report.findings == ()
    remembered = first.state.chains[chain_id.hex()].checkpoint
    assert remembered is not None
    assert remembered["tree"]["size"] == 701  # the genesis and 700 records
    asyncio.run(run(1, 300))
    grown = dict(store.objects)
    second = _state_run(store, signer, first.state)
    assert second.report.incremental
    assert {f.kind for f in second.report.findings} == {FindingKind.RESTART}
    newest = second.state.chains[chain_id.hex()].checkpoint
    assert newest is not None
    assert newest["tree"]["size"] == 1002  # and a restart mark and 300 more
    # A damaged tile on the consistency proof's path: the incremental run says the new tree is not
    # shown to extend the remembered one (the full walk still agrees with every note).
    size = newest["tree"]["size"]
    level1 = tile_key("", chain_id, 1, 0, size // 256)
    store.objects[level1] = bytes(len(store.objects[level1]))
    damaged = _state_run(store, signer, first.state)
    assert [f.kind for f in damaged.report.findings if f.severity == Severity.TAMPERING] == [FindingKind.TREE_MISMATCH]
    # A note re-signed over another root is caught against the remembered tree too.
    store.objects = dict(grown)
    key = _notes(store.objects)[-1]
    head = parse_tree_head(parse_note(store.objects[key]).text)
    store.objects[key] = sign_note(checkpoint_text(head.origin, head.size, bytes(32)), head.origin, signer)
    forged = _state_run(store, signer, first.state)
    assert FindingKind.TREE_MISMATCH in {f.kind for f in forged.report.findings}


def test_a_changed_record_is_reported_once_not_again_as_every_later_tree(signer: Ed25519Signer) -> None:
    store, _ = _write(signer, 3)
    key = next(
        k for k in sorted(store.objects) if parse_segment_key(k) is not None and b"record 1.5" in store.objects[k]
    )
    store.objects[key] = store.objects[key].replace(b"record 1.5", b"record 1.6", 1)
    kinds = [f.kind for f in verify_objects(store.objects, [signer.public_key]).findings]
    assert FindingKind.MODIFIED_RECORD in kinds
    assert FindingKind.TREE_MISMATCH not in kinds
