"""C2SP signed notes and checkpoint texts: the spec's own vector, signing, parsing and refusals."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.note import (
    Cosignature,
    NoteError,
    add_signatures,
    check_cosignature,
    check_note_signature,
    checkpoint_text,
    cosign,
    key_hint,
    parse_note,
    parse_tree_head,
    parse_verifier_key,
    sign_note,
    verifier_key,
    verify_note_signature,
)

SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()
ORIGIN = "archive.example/a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"


def _signer(seed: int) -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def test_the_signed_note_spec_example_verifies() -> None:
    name, kind, key = parse_verifier_key(SPEC_VKEY)
    assert (name, kind) == ("example.com/foo", 1)
    note = parse_note(SPEC_NOTE)
    assert note.text == b"This is an example message.\n"
    assert note.signatures[0].key_hint.hex() == "530d903a"
    verify_note_signature(note, name, key)
    assert verifier_key(name, key) == SPEC_VKEY
    assert note.encode() == SPEC_NOTE


def test_a_checkpoint_note_round_trips_and_names_its_signer() -> None:
    signer = _signer(1)
    root = bytes(range(32))
    text = checkpoint_text(ORIGIN, 20852163, root)
    assert text == f"{ORIGIN}\n20852163\n{base64.b64encode(root).decode()}\n".encode()
    signed = sign_note(text, ORIGIN, signer)
    note = parse_note(signed)
    assert check_note_signature(note, ORIGIN, signer.public_key) is None
    head = parse_tree_head(note.text)
    assert (head.origin, head.size, head.root, head.extensions) == (ORIGIN, 20852163, root, ())
    assert note.signatures[0].key_hint == key_hint(ORIGIN, 1, signer.public_key.raw)


def test_another_key_or_a_changed_text_is_refused() -> None:
    signer = _signer(1)
    signed = sign_note(checkpoint_text(ORIGIN, 5, bytes(32)), ORIGIN, signer)
    other = _signer(2).public_key
    assert "another key" in str(check_note_signature(parse_note(signed), ORIGIN, other))
    tampered = signed.replace(b"\n5\n", b"\n6\n")
    assert "does not verify" in str(check_note_signature(parse_note(tampered), ORIGIN, signer.public_key))
    with pytest.raises(NoteError):
        verify_note_signature(parse_note(tampered), ORIGIN, signer.public_key)


@pytest.mark.parametrize(
    "data",
    [
        b"origin\n5\n",  # no signature block
        b"origin\n5\nAAAA\n\n",  # empty block: cut before the signature line's end
        b"origin\n5\nAAAA\n\n\xe2\x80\x94 origin AAAA",  # no final newline
        b"origin\n5\nAAAA\n\n- origin AAAAAAAA\n",  # hyphen, not em dash
        b"origin\n5\nAAAA\n\n\xe2\x80\x94 origin !!!!\n",  # not base64
        b"origin\n5\nAAAA\n\n\xe2\x80\x94 origin AAAA\n",  # shorter than hint + signature
        b"ori\x01gin\n5\nAAAA\n\n\xe2\x80\x94 origin AAAAAAAA\n",  # control character
    ],
)
def test_malformed_notes_are_refused(data: bytes) -> None:
    with pytest.raises(NoteError):
        parse_note(data)


@pytest.mark.parametrize(
    "text",
    [b"origin\n5\n", b"origin\n05\n" + base64.b64encode(bytes(32)) + b"\n", b"origin\n5\nAAAA\n", b"o\n-1\nAAAA\n"],
)
def test_malformed_checkpoint_texts_are_refused(text: bytes) -> None:
    with pytest.raises(NoteError):
        parse_tree_head(text)


def test_cosignatures_append_and_verify() -> None:
    log, witness = _signer(1), _signer(3)
    signed = sign_note(checkpoint_text(ORIGIN, 9, bytes(32)), ORIGIN, log)
    line = cosign(parse_note(signed).text, "witness.example/w1", witness, 1_790_000_000)
    assert len(base64.b64decode(line.line().split(b" ")[-1])) == 4 + 8 + 64
    both = add_signatures(signed, [line.line()])
    assert add_signatures(both, [line]) == both  # not repeated
    note = parse_note(both)
    assert check_note_signature(note, ORIGIN, log.public_key) is None
    assert check_cosignature(note, "witness.example/w1", witness.public_key) == Cosignature(
        "witness.example/w1", 1_790_000_000
    )
    assert isinstance(check_cosignature(note, "witness.example/w1", log.public_key), str)
    vkey = verifier_key("witness.example/w1", witness.public_key, 0x04)
    assert parse_verifier_key(vkey)[1] == 0x04
    # A cosignature is not a log signature: the message differs.
    assert isinstance(check_cosignature(parse_note(signed), "witness.example/w1", witness.public_key), str)


def test_verifier_key_with_a_wrong_hint_is_refused() -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(SPEC_VKEY.replace("530d903a", "530d903b"))
    with pytest.raises(NoteError):
        parse_verifier_key("example.com/foo+530d903a")


def test_a_verifier_key_whose_base64_holds_a_plus_parses() -> None:
    # Seed 8's key encodes to base64 with a '+' in it; only the first two '+' separate fields.
    for kind in (0x01, 0x04):
        vkey = verifier_key("log.example/a", _signer(8).public_key, kind)
        assert "+" in vkey.split("+", 2)[2]
        assert parse_verifier_key(vkey) == ("log.example/a", kind, _signer(8).public_key)
    with pytest.raises(NoteError):
        parse_verifier_key("+" + vkey.split("+", 1)[1])  # no name
