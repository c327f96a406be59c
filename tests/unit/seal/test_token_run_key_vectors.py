"""The run key part of tests/golden/vectors.json checked from proto/FORMAT.md alone (7.1, 7.7, 8, 9,
10.3: hashlib, struct and Ed25519, no collector_ext code), then by the reference verifier with only the
certifying key pinned."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import segment_key
from collector_ext.seal.segment import encode_segment
from tests.archive_builder import verify_objects

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "golden" / "vectors.json").read_text(encoding="utf-8"))
ENTRY_HASH_PREFIX = b"collector-ext/v1/entry\x00"
RECORD_SIGNATURE_PREFIX = b"collector-ext/v1/record-signature\x00"
KEY_ID_PREFIX = b"collector-ext/v1/key-id\x00"
RUN_KEY_PREFIX = b"collector-ext/v2/run-key\x00"
HEADER = struct.Struct(">HBB16sQ32s8sQ")


def _key_id(raw: bytes) -> bytes:
    return hashlib.sha256(KEY_ID_PREFIX + raw).digest()[:8]


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return value, offset
        shift += 7


def _fields(message: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a protobuf message (all RunKeyPayload's fields are)."""
    found, offset = {}, 0
    while offset < len(message):
        tag, offset = _varint(message, offset)
        assert tag & 7 == 2
        length, offset = _varint(message, offset)
        found[tag >> 3] = message[offset : offset + length]
        offset += length
    return found


@pytest.fixture
def part() -> dict[str, Any]:
    return dict(VECTORS["run_key"])


def test_run_key_part_from_the_document_alone(part: dict[str, Any]) -> None:
    chain_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["key"]["seed"])).public_key()
    chain_key_raw = bytes.fromhex(VECTORS["key"]["public_key"])
    run = part["run_key"]
    run_raw = bytes.fromhex(run["public_key"])
    run_key = Ed25519PublicKey.from_public_bytes(run_raw)
    assert Ed25519PrivateKey.from_private_bytes(bytes.fromhex(run["seed"])).public_key().public_bytes_raw() == run_raw
    assert _key_id(run_raw).hex() == run["key_id"]
    chain_id = bytes.fromhex(VECTORS["chain_id"])
    # 7.7: RUN_KEY_PREFIX || chain id || u64 sequence || certifying key id, 25 + 16 + 8 + 8 bytes.
    message = RUN_KEY_PREFIX + chain_id + struct.pack(">Q", 1) + _key_id(chain_key_raw)
    assert len(message) == 57 and message.hex() == run["message"]
    run_key.verify(bytes.fromhex(run["signature"]), message)

    previous = bytes(32)
    for sequence, vector in enumerate(part["entries"]):
        entry = bytes.fromhex(vector["entry"])
        version, kind, reserved, entry_chain, entry_sequence, link, key_id, sealed = HEADER.unpack_from(entry)
        assert (version, reserved, entry_chain, entry_sequence, link) == (2, 0, chain_id, sequence, previous)
        assert (kind, sealed) == (vector["kind"], vector["sealed_unix_nano"])
        assert entry[HEADER.size :].hex() == vector["payload"]
        digest = hashlib.sha256(ENTRY_HASH_PREFIX + entry).digest()
        assert digest.hex() == vector["entry_hash"]
        # 10.3: the genesis and the certification are signed by the chain's key, the records by the run key.
        signer, signer_raw = (chain_key, chain_key_raw) if sequence < 2 else (run_key, run_raw)
        assert key_id == _key_id(signer_raw)
        signer.verify(bytes.fromhex(vector["signature"]), RECORD_SIGNATURE_PREFIX + digest)
        previous = digest
    certification = part["entries"][1]
    assert certification["kind"] == 5
    fields = _fields(bytes.fromhex(certification["payload"]))
    assert fields == {1: run_raw, 2: bytes.fromhex(run["signature"]), 3: run["reason"].encode()}


def test_the_reference_verifier_accepts_the_run_key_part_with_the_chain_key_alone(part: dict[str, Any]) -> None:
    chain_id = bytes.fromhex(VECTORS["chain_id"])
    entries = [bytes.fromhex(v["entry"]) for v in part["entries"]]
    signatures = [bytes.fromhex(v["signature"]) for v in part["entries"]]
    created = part["entries"][-1]["sealed_unix_nano"]
    data = encode_segment(
        chain_id=chain_id, first_sequence=0, created_unix_nano=created, entries=entries, signatures=signatures
    )
    objects = {segment_key("", chain_id, 0, len(entries) - 1, created): data}
    chain_key = PublicKey.from_raw(bytes.fromhex(VECTORS["key"]["public_key"]))
    report = verify_objects(objects, [chain_key], all_signatures=True)
    assert [f.kind.value for f in report.findings] == ["run-key", "uncovered-tail"]
    assert report.clean
    # Pinning the run key alone verifies nothing: the genesis and certification are not its own.
    run_key = PublicKey.from_raw(bytes.fromhex(part["run_key"]["public_key"]))
    assert not verify_objects(objects, [run_key], all_signatures=True).clean
