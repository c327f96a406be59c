"""Proof files: built from an archive's tiles, checked offline, and refused naming the failed check."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.pipeline import SealingPipeline
from collector_ext.prove.build import ProveError, build_proof, last_true, newest_note_key
from collector_ext.prove.proof_file import (
    RUN_PROOF_LINE,
    TLOG_PROOF_LINE,
    ProofFileError,
    RecordProof,
    check_proof,
    encode_proof,
    parse_proof,
    verify_proof,
)
from collector_ext.prove.render import render_proof_json, render_proof_text
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_segment_key, parse_tile_key
from collector_ext.seal.note import (
    Cosignature,
    check_cosignature,
    checkpoint_text,
    cosign,
    parse_note,
    parse_tree_head,
    sign_note,
)
from tests.fakes import InMemoryArchive
from tests.unit.test_pipeline import _settings


@pytest.fixture(scope="module")
def archive() -> tuple[InMemoryArchive, bytes, Ed25519Signer]:
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    store = InMemoryArchive()

    async def run() -> bytes:
        pipeline = SealingPipeline(signer, store, _settings(signing_workers="threads"), archive_id="s3://b/p")
        await pipeline.start()
        for i in range(12):
            await pipeline.submit([f"record {i}.{j}".encode() for j in range(250)])
        await pipeline.close()
        return pipeline.chain_id

    return store, asyncio.run(run()), signer


def _proof(archive: tuple[InMemoryArchive, bytes, Ed25519Signer], first: int, last: int) -> bytes:
    store, chain_id, _ = archive
    return encode_proof(asyncio.run(build_proof(store, chain_id, first, last)).proof)


def test_a_proof_of_one_record_is_a_tlog_proof_that_verifies(
    archive: tuple[InMemoryArchive, bytes, Ed25519Signer],
) -> None:
    store, chain_id, signer = archive
    built = asyncio.run(build_proof(store, chain_id, 1234, 1234))
    data = encode_proof(built.proof)
    assert data.startswith(TLOG_PROOF_LINE.encode() + b"\nextra ")
    assert b"\nindex 1234\n" in data
    report = verify_proof(data, signer.public_key)
    assert report.tree is not None and report.tree.size == 3001
    assert [r.index for r in report.records] == [1234]
    # Only what the proof needs was read: the note, a few tiles, the segments around the record.
    assert built.objects_read < 8
    assert "VERIFIED: 1 record" in render_proof_text(report, "p")
    assert render_proof_json(report, "p")["records"][0]["sequence"] == 1234


def test_a_run_of_records_and_the_edges_of_the_tree(archive: tuple[InMemoryArchive, bytes, Ed25519Signer]) -> None:
    _, _, signer = archive
    data = _proof(archive, 250, 260)
    assert data.startswith(RUN_PROOF_LINE.encode())
    assert [r.index for r in verify_proof(data, signer.public_key).records] == list(range(250, 261))
    verify_proof(_proof(archive, 0, 0), signer.public_key)
    verify_proof(_proof(archive, 3000, 3000), signer.public_key)


def test_records_not_yet_checkpointed_or_a_chain_without_notes_are_refused(
    archive: tuple[InMemoryArchive, bytes, Ed25519Signer],
) -> None:
    store, chain_id, _ = archive
    with pytest.raises(ProveError, match="not covered by a checkpoint yet"):
        asyncio.run(build_proof(store, chain_id, 3001, 3001))
    with pytest.raises(ProveError, match="no checkpoint notes"):
        asyncio.run(build_proof(store, bytes(16), 0, 0))


def test_a_damaged_tile_is_caught_when_building(archive: tuple[InMemoryArchive, bytes, Ed25519Signer]) -> None:
    store, chain_id, _ = archive
    damaged = InMemoryArchive()
    damaged.objects = dict(store.objects)
    # The level-1 tile of the newest size (3001 records: 11 hashes); older partial tiles are not read.
    tile = next(k for k in damaged.objects if (t := parse_tile_key(k)) is not None and (t.level, t.width) == (1, 11))
    damaged.objects[tile] = bytes(len(damaged.objects[tile]))
    with pytest.raises(ProveError, match="do not match checkpoint note"):
        asyncio.run(build_proof(damaged, chain_id, 5, 5))
    segment = next(k for k in damaged.objects if (s := parse_segment_key(k)) is not None and s.first_sequence == 0)
    del damaged.objects[segment]
    with pytest.raises(ProveError, match="are not in the archive"):
        asyncio.run(build_proof(damaged, chain_id, 0, 0))


def _check(data: bytes, signer: Ed25519Signer) -> str:
    report = check_proof(data, signer.public_key)
    assert not report.ok
    with pytest.raises(ProofFileError) as caught:
        verify_proof(data, signer.public_key)
    assert caught.value.check == report.problems[0].check
    return report.problems[0].check


def test_bad_proofs_are_refused_naming_the_check(archive: tuple[InMemoryArchive, bytes, Ed25519Signer]) -> None:
    _, _, signer = archive
    good = _proof(archive, 700, 700)
    proof = parse_proof(good)
    record = proof.records[0]
    # Truncated anywhere: in the proof lines, the note text or the signature block.
    for cut in (10, good.index(b"\n\n") + 5, len(good) - 20, len(good) - 1):
        assert _check(good[:cut], signer) in {"format", "checkpoint note", "checkpoint signature"}
    # For another key.
    stranger = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32))
    assert _check(good, stranger) == "checkpoint signature"
    # Inconsistent: another index, a changed path, a changed entry, another record's signature.
    assert _check(good.replace(b"index 700", b"index 701"), signer) == "record"

    def variant(**changes: object) -> bytes:
        fields = {"index": record.index, "entry": record.entry, "signature": record.signature, "path": record.path}
        fields.update(changes)
        return encode_proof(type(proof)((RecordProof(**fields),), proof.note))  # type: ignore[arg-type]

    flipped = (bytes([record.path[0][0] ^ 1]) + record.path[0][1:], *record.path[1:])
    assert _check(variant(path=flipped), signer) == "inclusion"
    assert _check(variant(path=record.path[:-1]), signer) == "inclusion"
    changed = record.entry[:-1] + bytes([record.entry[-1] ^ 1])
    assert _check(variant(entry=changed), signer) == "inclusion"
    assert _check(variant(signature=bytes(64)), signer) == "record signature"
    # A note re-signed by the writer's key over another root: the path no longer leads to it.
    head = parse_tree_head(parse_note(proof.note).text)
    other_note = sign_note(checkpoint_text(head.origin, head.size, bytes(32)), head.origin, signer)
    assert _check(encode_proof(type(proof)(proof.records, other_note)), signer) == "inclusion"
    # A note about another chain.
    origin = head.origin[:-32] + "0" * 32
    foreign = sign_note(checkpoint_text(origin, head.size, head.root), origin, signer)
    assert _check(encode_proof(type(proof)(proof.records, foreign)), signer) == "origin"
    # Not base64, a short hash, an extra that is not ours, garbage.
    assert _check(good.replace(b"\nindex 700\n", b"\nindex 700\n!!!!\n"), signer) == "format"
    assert _check(good.replace(b"\nindex 700\n", b"\nindex 700\nAAAA\n"), signer) == "format"
    bogus_extra = base64.b64encode(b"x" * 80)
    assert (
        _check(good.split(b"\n", 2)[0] + b"\nextra " + bogus_extra + b"\n" + good.split(b"\n", 2)[2], signer)
        == "format"
    )
    assert _check(b"\x00\xff" * 50, signer) == "format"


@pytest.mark.parametrize("newest", [0, 1, 2, 5, 63, 64, 65, 1000, 123_456])
def test_the_parallel_search_finds_the_last_true_number(newest: int) -> None:
    probed: list[int] = []

    async def probe(n: int) -> bool:
        probed.append(n)
        return n <= newest

    assert asyncio.run(last_true(probe)) == newest
    assert len(probed) < 60


def test_the_parallel_search_says_when_nothing_is_there() -> None:
    async def probe(n: int) -> bool:
        return False

    assert asyncio.run(last_true(probe)) is None


def test_witness_cosignatures_beside_the_note_travel_in_the_proof(
    archive: tuple[InMemoryArchive, bytes, Ed25519Signer],
) -> None:
    store, chain_id, signer = archive
    copy = InMemoryArchive()
    copy.objects = dict(store.objects)
    note_key = asyncio.run(newest_note_key(copy, chain_id))
    assert note_key is not None
    text = parse_note(copy.objects[note_key.key]).text
    witness = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32))
    line = cosign(text, "witness.example/w", witness, 1_790_000_000).line()
    copy.objects[f"{note_key.key}.cosig.0011223344556677"] = line
    copy.objects[f"{note_key.key}.cosig.8899aabbccddeeff"] = b"not a signature line\n"
    data = encode_proof(asyncio.run(build_proof(copy, chain_id, 42, 42)).proof)
    verify_proof(data, signer.public_key)
    note = parse_note(parse_proof(data).note)
    assert len(note.signatures) == 2
    assert isinstance(check_cosignature(note, "witness.example/w", witness.public_key), Cosignature)
