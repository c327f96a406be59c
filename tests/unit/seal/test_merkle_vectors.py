"""The tree vectors (tests/golden/vectors.json, part ``tree``) checked from proto/FORMAT.md 16 alone.

Only hashlib, base64 and an Ed25519 verifier: no collector_ext code, so a mistake shared by the
writer and this check would have to be a mistake in reading the document.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VECTORS = Path(__file__).resolve().parents[2] / "golden" / "vectors.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())  # type: ignore[no-any-return]


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _mth(hashes: list[bytes]) -> bytes:  # 16.1
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return _node(_mth(hashes[:k]), _mth(hashes[k:]))


def _check_inclusion(m: int, n: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:  # 16.2
    if m >= n:
        return False
    fn, sn, r = m, n - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def _check_consistency(m: int, n: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:  # 16.3
    if not proof or not 0 < m < n:
        return False
    if m & (m - 1) == 0:
        proof = [root1, *proof]
    fn, sn = m - 1, n - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def test_leaves_roots_paths_and_consistency_proofs(vectors: dict[str, Any]) -> None:
    tree = vectors["tree"]
    entries = [bytes.fromhex(e["entry"]) for e in vectors["entries"]]
    leaves = [hashlib.sha256(b"\x00" + e).digest() for e in entries]
    assert [leaf.hex() for leaf in leaves] == tree["leaf_hashes"]
    for n, root in tree["roots"].items():
        assert _mth(leaves[: int(n)]).hex() == root
    root = bytes.fromhex(tree["roots"]["4"])
    for m, path in tree["inclusion_paths"].items():
        assert _check_inclusion(int(m), 4, leaves[int(m)], [bytes.fromhex(h) for h in path], root)
    for sizes, proof in tree["consistency_proofs"].items():
        m, n = map(int, sizes.split("-"))
        assert _check_consistency(m, n, _mth(leaves[:m]), root, [bytes.fromhex(h) for h in proof])


def test_the_note_and_the_tile(vectors: dict[str, Any]) -> None:
    tree = vectors["tree"]
    public = bytes.fromhex(vectors["key"]["public_key"])
    origin = f"golden-bucket/vectors/{vectors['chain_id']}"  # 16.4: the archive id without its scheme
    assert tree["origin"] == origin
    note = bytes.fromhex(tree["note"])
    text, block = note.split(b"\n\n")
    root = bytes.fromhex(tree["roots"]["4"])
    assert text + b"\n" == f"{origin}\n4\n{base64.b64encode(root).decode()}\n".encode()
    dash, name, blob = block.decode().rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", origin)
    signature = base64.b64decode(blob)
    hint = hashlib.sha256(origin.encode() + b"\n\x01" + public).digest()[:4]
    assert signature[:4] == hint == bytes.fromhex(tree["note_key_hint"])
    Ed25519PublicKey.from_public_bytes(public).verify(signature[4:], text + b"\n")
    assert tree["note_key"] == f"{vectors['chain_id']}/notes/{0:012d}-{3:020d}.note"
    # 16.5: four leaves leave a partial level-0 tile of width 4 holding the leaf hashes.
    assert tree["tile_key"] == f"{vectors['chain_id']}/tile/0/000.p/4"
    assert tree["tile"] == "".join(tree["leaf_hashes"])


def test_the_proof_file_of_entry_2(vectors: dict[str, Any]) -> None:
    tree = vectors["tree"]
    data = bytes.fromhex(tree["proof_of_entry_2"])
    head, note = data.split(b"\n\n", 1)
    assert note == bytes.fromhex(tree["note"])
    lines = head.decode().split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    extra = base64.b64decode(lines[1].removeprefix("extra "))
    prefix = b"collector-ext/v1/proof-record\x00"
    assert extra.startswith(prefix)
    (length,) = struct.unpack(">I", extra[len(prefix) : len(prefix) + 4])
    entry = extra[len(prefix) + 4 : len(prefix) + 4 + length]
    signature = extra[len(prefix) + 4 + length :]
    assert entry.hex() == vectors["entries"][2]["entry"]
    assert signature.hex() == vectors["entries"][2]["signature"]
    assert lines[2] == "index 2"
    path = [base64.b64decode(line) for line in lines[3:]]
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    assert _check_inclusion(2, 4, leaf, path, bytes.fromhex(tree["roots"]["4"]))
