"""verify-proof with pinned witnesses (FORMAT.md 16.8 step 9, 19.2): k of the pinned witness keys must
have cosigned the note the proof carries; cosignatures of witnesses nobody pinned count for nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.cli import main
from collector_ext.prove.proof_file import ProofFile, RecordProof, check_proof, encode_proof
from collector_ext.seal.chain import ChainHead, chain_entries, sign_entry_hashes
from collector_ext.seal.entry import EntryKind
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.seal.merkle import inclusion_path, leaf_hash, list_reader, tree_root
from collector_ext.seal.note import (
    Cosignature,
    add_signatures,
    chain_origin,
    checkpoint_text,
    cosign,
    sign_note,
    verifier_key,
)
from collector_ext.witness.vkey import witness_vkey

CHAIN_ID = bytes(range(16))
ORIGIN = chain_origin("s3://bucket/audit", CHAIN_ID)


def _signer(seed: int) -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


WRITER, ALICE, BOB, CAROL = _signer(1), _signer(2), _signer(3), _signer(4)


def _proof(*cosigners: tuple[str, Ed25519Signer]) -> bytes:
    """A proof of record 1 of a three-record chain, its note cosigned by ``cosigners``."""
    built = chain_entries(ChainHead.new(CHAIN_ID), EntryKind.LOG_RECORD, [b"a", b"b", b"c"], WRITER.key_id, 1, 1)
    signatures = sign_entry_hashes(WRITER, built.hashes)
    leaves = [leaf_hash(entry) for entry in built.entries]
    note = sign_note(checkpoint_text(ORIGIN, 3, tree_root(leaves)), ORIGIN, WRITER)
    lines = [
        cosign(checkpoint_text(ORIGIN, 3, tree_root(leaves)), name, key, 1_790_000_000 + i)
        for i, (name, key) in enumerate(cosigners)
    ]
    if lines:
        note = add_signatures(note, lines)
    path = tuple(inclusion_path(1, 3, list_reader(leaves)))
    return encode_proof(ProofFile((RecordProof(1, built.entries[1], signatures[1], path),), note))


PINNED: dict[str, PublicKey] = {"w.example/alice": ALICE.public_key, "w.example/bob": BOB.public_key}


def test_k_of_n_pinned_witnesses_must_have_cosigned() -> None:
    both = _proof(("w.example/alice", ALICE), ("w.example/bob", BOB))
    report = check_proof(both, WRITER.public_key, PINNED, 2)
    assert report.ok, report.problems
    assert report.cosignatures == (
        Cosignature("w.example/alice", 1_790_000_000),
        Cosignature("w.example/bob", 1_790_000_001),
    )
    one = _proof(("w.example/alice", ALICE))
    assert check_proof(one, WRITER.public_key, PINNED, 1).ok
    report = check_proof(one, WRITER.public_key, PINNED, 2)
    assert [p.check for p in report.problems] == ["witnesses"]
    assert "1 of the pinned witnesses" in report.problems[0].message and "w.example/bob" in report.problems[0].message
    # Without pinned witnesses the cosignature lines are carried but not required.
    assert check_proof(_proof(), WRITER.public_key).ok


@pytest.mark.parametrize(
    "cosigners",
    [
        (("w.example/carol", CAROL),),  # a witness nobody pinned
        (("w.example/bob", CAROL),),  # bob's name, another key
    ],
)
def test_cosignatures_that_are_not_the_pinned_witnesses_do_not_count(
    cosigners: tuple[tuple[str, Ed25519Signer], ...],
) -> None:
    report = check_proof(_proof(*cosigners), WRITER.public_key, PINNED, 1)
    assert [p.check for p in report.problems] == ["witnesses"]
    assert report.cosignatures == ()


def test_a_cosignature_of_another_checkpoint_does_not_count() -> None:
    data = _proof()
    other = cosign(checkpoint_text(ORIGIN, 2, bytes(32)), "w.example/alice", ALICE, 1_790_000_000)
    head, note = data.split(b"\n\n", 1)
    forged = head + b"\n\n" + add_signatures(note, [other])
    report = check_proof(forged, WRITER.public_key, PINNED, 1)
    assert [p.check for p in report.problems] == ["witnesses"]
    assert "does not verify" in report.problems[0].message


def test_verify_proof_on_the_command_line_with_witness_keys(tmp_path: Path) -> None:
    proof, key = tmp_path / "one.tlog-proof", tmp_path / "writer.pub"
    proof.write_bytes(_proof(("w.example/alice", ALICE)))
    key.write_bytes(WRITER.public_key.pem())
    alice, bob = (witness_vkey(name, k) for name, k in PINNED.items())
    base = ["verify-proof", str(proof), "--public-key", str(key), "--witness-key", alice]
    done = CliRunner().invoke(main, base)
    assert done.exit_code == 0, done.output
    assert "cosigned by witness w.example/alice at 2026-" in done.output
    done = CliRunner().invoke(main, [*base, "--witness-key", bob])  # both required by default
    assert done.exit_code == 1 and "check failed: witnesses" in done.output
    assert CliRunner().invoke(main, [*base, "--witness-key", bob, "--witnesses-required", "1"]).exit_code == 0
    done = CliRunner().invoke(main, [*base, "--witnesses-required", "2"])
    assert done.exit_code == 2 and "--witnesses-required" in done.output
    done = CliRunner().invoke(main, [*base, "--witness-key", verifier_key("w.example/x", BOB.public_key)])
    assert done.exit_code == 2 and "--witness-key" in done.output and "0x04" in done.output
