"""verify's rules for cosignatures beside checkpoint notes (FORMAT.md 19.4), on notes built in memory."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import NoteKey, checkpoint_note_key, witness_key_tag
from collector_ext.seal.merkle import leaf_hash, tree_root
from collector_ext.seal.note import checkpoint_text, cosign, sign_note
from collector_ext.verify.findings import FindingKind, Severity
from collector_ext.verify.witnesses import NoteEvidence, WitnessPolicy, check_outside_evidence

CHAIN = "ab" * 16
ORIGIN = f"bucket/prod/{CHAIN}"
LOG = Ed25519Signer(Ed25519PrivateKey.generate())
A = Ed25519Signer(Ed25519PrivateKey.generate())
B = Ed25519Signer(Ed25519PrivateKey.generate())
STRANGER = Ed25519Signer(Ed25519PrivateKey.generate())
LEAVES = [leaf_hash(bytes([i])) for i in range(50)]
NOW = 1_800_000_000 * 10**9


def evidence(number: int, size: int, by: dict[str, Ed25519Signer], *, age_seconds: float | None = None) -> NoteEvidence:
    text = checkpoint_text(ORIGIN, size, tree_root(LEAVES[:size]))
    note = sign_note(text, ORIGIN, LOG)
    key = checkpoint_note_key("", bytes.fromhex(CHAIN), number, size - 1)
    cosignatures = {
        witness_key_tag(name): cosign(text, name, signer, 1_800_000_000).line() for name, signer in by.items()
    }
    time = None if age_seconds is None else NOW - int(age_seconds * 1e9)
    return NoteEvidence(NoteKey(key, CHAIN, number, size - 1), note, cosignatures, None, time)


def policy(required: int, grace: float = 0) -> WitnessPolicy:
    return WitnessPolicy({"a": A.public_key, "b": B.public_key}, required, grace_seconds=grace)


def kinds(findings) -> dict[FindingKind, list]:
    found: dict[FindingKind, list] = {}
    for finding in findings:
        found.setdefault(finding.kind, []).append(finding)
    return found


def test_k_of_n_counts_distinct_pinned_witnesses_on_the_newest_tree():
    notes = [evidence(0, 10, {"a": A, "b": B}), evidence(1, 20, {"a": A})]
    assert kinds(check_outside_evidence(CHAIN, notes, policy(1), NOW)).keys() == {FindingKind.WITNESSED}
    found = kinds(check_outside_evidence(CHAIN, notes, policy(2), NOW))
    (unwitnessed,) = found[FindingKind.UNWITNESSED_CHECKPOINT]
    assert unwitnessed.severity is Severity.LOSS
    assert (unwitnessed.first_sequence, unwitnessed.last_sequence) == (10, 19)


def test_a_larger_witnessed_tree_covers_an_older_unwitnessed_note():
    notes = [evidence(0, 10, {}), evidence(1, 30, {"a": A, "b": B})]
    assert FindingKind.UNWITNESSED_CHECKPOINT not in kinds(check_outside_evidence(CHAIN, notes, policy(2), NOW))


def test_an_unpinned_witness_does_not_count_and_is_not_checked():
    notes = [evidence(0, 10, {"stranger.example": STRANGER})]
    found = kinds(check_outside_evidence(CHAIN, notes, policy(1), NOW))
    assert found.keys() == {FindingKind.UNWITNESSED_CHECKPOINT}


def test_an_altered_cosignature_or_note_is_tampering():
    good = evidence(0, 10, {"a": A, "b": B})
    tag = witness_key_tag("a")
    line = good.cosignatures[tag]
    flipped = line[:-6] + (b"AAAA" if line[-6:-2] != b"AAAA" else b"BBBB") + line[-2:]
    altered = NoteEvidence(good.key, good.note, {**good.cosignatures, tag: flipped}, None)
    found = kinds(check_outside_evidence(CHAIN, [altered], policy(1), NOW))
    assert [f.severity for f in found[FindingKind.BAD_COSIGNATURE]] == [Severity.TAMPERING]
    assert found[FindingKind.BAD_COSIGNATURE][0].object_key.endswith(f".cosig.{tag}")
    # The same cosignatures beside another note (a replaced note) do not verify either.
    other = evidence(0, 11, {})
    moved = NoteEvidence(other.key, other.note, good.cosignatures, None)
    assert len(kinds(check_outside_evidence(CHAIN, [moved], policy(0), NOW))[FindingKind.BAD_COSIGNATURE]) == 2
    garbage = NoteEvidence(good.key, good.note, {tag: b"not a signature line\n"}, None)
    assert FindingKind.BAD_COSIGNATURE in kinds(check_outside_evidence(CHAIN, [garbage], policy(0), NOW))


def test_the_grace_period_spares_the_newest_checkpoint_only_while_it_is_young():
    notes = [evidence(0, 10, {"a": A, "b": B}), evidence(1, 20, {}, age_seconds=30)]
    assert FindingKind.UNWITNESSED_CHECKPOINT not in kinds(check_outside_evidence(CHAIN, notes, policy(2, 600), NOW))
    old = [notes[0], evidence(1, 20, {}, age_seconds=900)]
    assert FindingKind.UNWITNESSED_CHECKPOINT in kinds(check_outside_evidence(CHAIN, old, policy(2, 600), NOW))


def test_nothing_is_required_without_a_policy_and_nothing_is_read_wrongly():
    notes = [evidence(0, 10, {})]
    assert check_outside_evidence(CHAIN, notes, WitnessPolicy(), NOW) == []
    unreadable = NoteEvidence(notes[0].key, None, {}, None)
    assert check_outside_evidence(CHAIN, [unreadable], policy(1), NOW) == []


def test_a_required_timestamp_that_is_missing_is_loss(tmp_path):
    from collector_ext.witness.timestamp import TsaTrust
    from tests.tsa_server import make_tsa_certificates

    bundle = make_tsa_certificates(tmp_path, "unit TSA")[3]
    trust = TsaTrust.from_pem_bundle(bundle.read_bytes(), "--tsa-cert")
    required = WitnessPolicy(tsa=trust, require_timestamp=True, grace_seconds=0)
    found = kinds(check_outside_evidence(CHAIN, [evidence(0, 10, {})], required, NOW))
    assert [f.severity for f in found[FindingKind.MISSING_TIMESTAMP]] == [Severity.LOSS]
    garbled = NoteEvidence(evidence(0, 10, {}).key, evidence(0, 10, {}).note, {}, b"\x30\x00")
    found = kinds(check_outside_evidence(CHAIN, [garbled], required, NOW))
    assert FindingKind.BAD_TIMESTAMP in found and FindingKind.MISSING_TIMESTAMP in found
