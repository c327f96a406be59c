"""The golden vectors' witness part, checked from proto/FORMAT.md 19 alone (hashlib, base64, struct and
Ed25519), and by the reference code."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from collector_ext.seal.keys import PublicKey
from collector_ext.seal.merkle import check_consistency
from collector_ext.seal.note import check_cosignature, parse_note
from collector_ext.witness.protocol import parse_add_checkpoint
from collector_ext.witness.vkey import parse_witness_vkey

VECTORS = json.loads((Path(__file__).parents[2] / "golden" / "vectors.json").read_text())["witness"]


def test_cosignature_from_the_format_alone():
    witness = VECTORS["witness"]
    name = witness["name"].encode()
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(witness["seed"]))
    key = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key.hex() == witness["public_key"]
    hint = hashlib.sha256(name + b"\n" + b"\x04" + key).digest()[:4]
    assert hint.hex() == witness["key_hint"]
    typed_key = base64.b64encode(b"\x04" + key).decode()
    assert witness["vkey"] == f"{witness['name']}+{hint.hex()}+{typed_key}"
    assert witness["tag"] == hashlib.sha256(name).hexdigest()[:16]

    note = bytes.fromhex(VECTORS["note"])
    text = note[: note.rindex(b"\n\n") + 1]
    assert text.hex() == VECTORS["note_text"]
    message = b"cosignature/v1\n" + f"time {VECTORS['timestamp']}\n".encode() + text
    assert message.hex() == VECTORS["cosignature_message"]

    line = bytes.fromhex(VECTORS["cosignature_line"])
    assert line.startswith("\u2014 ".encode() + name + b" ") and line.endswith(b"\n")
    blob = base64.b64decode(line.split(b" ")[2].strip(), validate=True)
    assert len(blob) == 4 + 8 + 64 and blob[:4] == hint
    assert struct.unpack(">Q", blob[4:12])[0] == VECTORS["timestamp"]
    Ed25519PublicKey.from_public_bytes(key).verify(blob[12:], message)  # raises if it does not verify
    assert private.sign(message) == blob[12:]  # Ed25519 is deterministic
    assert bytes.fromhex(VECTORS["cosigned_note"]) == note + line


def test_add_checkpoint_body_from_the_format_alone():
    body = bytes.fromhex(VECTORS["add_checkpoint_from_2"])
    lines = body.split(b"\n")
    assert lines[0] == b"old 2"
    blank = lines.index(b"")
    proof = [base64.b64decode(line, validate=True) for line in lines[1:blank]]
    assert all(len(h) == 32 for h in proof)
    note = bytes.fromhex(VECTORS["note"])
    assert body.endswith(b"\n\n" + note)
    root = base64.b64decode(bytes.fromhex(VECTORS["note_text"]).split(b"\n")[2])
    old_root = bytes.fromhex(VECTORS["tree_size_2_root"])
    assert check_consistency(2, 4, old_root, root, proof).ok


def test_reference_code_reads_the_vectors():
    name, key = parse_witness_vkey(VECTORS["witness"]["vkey"])
    assert key == PublicKey.from_raw(bytes.fromhex(VECTORS["witness"]["public_key"]))
    found = check_cosignature(parse_note(bytes.fromhex(VECTORS["cosigned_note"])), name, key)
    assert not isinstance(found, str) and found.timestamp == VECTORS["timestamp"]
    request = parse_add_checkpoint(bytes.fromhex(VECTORS["add_checkpoint_from_2"]))
    assert request.old_size == 2 and request.note == bytes.fromhex(VECTORS["note"])
