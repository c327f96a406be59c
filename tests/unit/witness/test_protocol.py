"""The witness's verdicts (C2SP tlog-witness): cosigning extensions, refusing rollbacks and forks."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.merkle import consistency_proof, leaf_hash, list_reader, tree_root
from collector_ext.seal.note import check_cosignature, checkpoint_text, parse_note, sign_note
from collector_ext.witness.protocol import (
    AddCheckpoint,
    AddCheckpointError,
    OriginState,
    TrustedLog,
    decide,
    parse_add_checkpoint,
)

ORIGIN = "archive.example/prod/0123456789abcdef0123456789abcdef"
WITNESS = "witness.example/team-b"


def _signer() -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.generate())


LOG = _signer()
OTHER_LOG = _signer()
WITNESS_KEY = _signer()
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(40)]
FORKED = LEAVES[:7] + [leaf_hash(f"forged {i}".encode()) for i in range(7, 40)]


def note(size: int, leaves: list[bytes] = LEAVES, signer: Ed25519Signer = LOG, origin: str = ORIGIN) -> bytes:
    return sign_note(checkpoint_text(origin, size, tree_root(leaves[:size])), origin, signer)


def request(old: int, new: int, leaves: list[bytes] = LEAVES, **kwargs: object) -> AddCheckpoint:
    return AddCheckpoint(old, consistency_proof(old, new, list_reader(leaves)), note(new, leaves, **kwargs))  # type: ignore[arg-type]


def run(req: AddCheckpoint, states: dict[str, OriginState] | None = None, logs: list[TrustedLog] | None = None):
    logs = logs if logs is not None else [TrustedLog("archive.example/prod/", LOG.public_key)]
    return decide(req, logs, states or {}, witness_name=WITNESS, signer=WITNESS_KEY, now=1_700_000_000)


def held(size: int, leaves: list[bytes] = LEAVES) -> dict[str, OriginState]:
    return {ORIGIN: OriginState(size, tree_root(leaves[:size]))}


def test_first_checkpoint_is_cosigned_and_the_cosignature_verifies():
    verdict = run(request(0, 5))
    assert verdict.status == 200
    assert verdict.new_state == OriginState(5, tree_root(LEAVES[:5]))
    cosigned = parse_note(note(5) + verdict.body)
    found = check_cosignature(cosigned, WITNESS, WITNESS_KEY.public_key)
    assert not isinstance(found, str) and found.timestamp == 1_700_000_000


def test_extension_with_a_valid_proof_is_cosigned():
    for old, new in [(5, 8), (8, 9), (1, 40), (16, 33), (7, 7)]:
        verdict = run(request(old, new), held(old))
        assert verdict.status == 200, (old, new, verdict.reason)
        assert verdict.new_state is not None and verdict.new_state.size == new


def test_rollback_gets_409_with_the_held_size_and_is_evidence():
    verdict = run(request(5, 5), held(9))
    assert verdict.status == 409
    assert verdict.body == b"9\n"
    assert verdict.content_type == "text/x.tlog.size"
    assert verdict.evidence
    assert verdict.new_state is None


def test_old_size_beyond_the_checkpoint_is_400():
    verdict = run(AddCheckpoint(9, (), note(5)), held(9))
    assert verdict.status == 400 and verdict.new_state is None and verdict.evidence  # a rollback, too
    assert not run(AddCheckpoint(9, (), note(5))).evidence


def test_a_log_that_lost_track_learns_the_size_without_evidence():
    verdict = run(request(0, 12), held(9))
    assert verdict.status == 409 and verdict.body == b"9\n" and not verdict.evidence


def test_fork_is_refused_with_422_and_is_evidence():
    # Same first 7 entries, different later ones: signed by the trusted log, but not an extension.
    verdict = run(request(9, 12, FORKED), held(9))
    assert verdict.status == 422 and verdict.evidence and verdict.new_state is None
    same_size = run(AddCheckpoint(9, (), note(9, FORKED)), held(9))
    assert same_size.status == 422 and same_size.evidence


def test_a_proof_from_another_tree_is_refused():
    good = request(9, 12)
    bad = AddCheckpoint(9, tuple(reversed(good.proof)), good.note)
    assert run(bad, held(9)).status == 422
    assert run(AddCheckpoint(0, (hashlib.sha256(b"x").digest(),), note(3))).status == 422


def test_unknown_origin_is_404_and_untrusted_key_is_403():
    assert run(request(0, 3, origin="elsewhere.example/log")).status == 404
    assert run(request(0, 3, signer=OTHER_LOG)).status == 403


def test_a_tampered_note_is_refused():
    tampered = note(5).replace(b"\n5\n", b"\n6\n")
    assert run(AddCheckpoint(0, (), tampered)).status == 403


def test_empty_checkpoint_needs_the_empty_root():
    empty = sign_note(checkpoint_text(ORIGIN, 0, hashlib.sha256(b"").digest()), ORIGIN, LOG)
    assert run(AddCheckpoint(0, (), empty)).status == 200
    wrong = sign_note(checkpoint_text(ORIGIN, 0, hashlib.sha256(b"x").digest()), ORIGIN, LOG)
    assert run(AddCheckpoint(0, (), wrong)).status == 422


def test_a_named_log_key_checks_that_name():
    logs = [TrustedLog("archive.example/", LOG.public_key, key_name="archive.example/writer")]
    named = sign_note(checkpoint_text(ORIGIN, 2, tree_root(LEAVES[:2])), "archive.example/writer", LOG)
    assert run(AddCheckpoint(0, (), named), logs=logs).status == 200
    assert run(request(0, 2), logs=logs).status == 403


def test_body_round_trip_and_malformed_bodies():
    req = request(5, 12)
    assert parse_add_checkpoint(req.encode()) == req
    for body in [
        b"",
        b"old 5",
        b"old 05\n\n" + req.note,
        b"old -1\n\n" + req.note,
        b"old 5\nnot base64!\n\n" + req.note,
        b"old 5\n" + base64.b64encode(b"short") + b"\n\n" + req.note,
        b"old 5\n" + b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(64)) + b"\n" + req.note,
        b"old 5\n" + base64.b64encode(bytes(32)) + b"\n",
    ]:
        with pytest.raises(AddCheckpointError):
            parse_add_checkpoint(body)
