"""The golden vectors' ``sender`` part, checked from proto/FORMAT.md alone (7.3, 7.3a, 9).

Only hashlib and an Ed25519 verification: the Sender is encoded by hand, each payload must be the
version 1 payload of the same record followed by field 6, and every entry must hash and verify as
section 9 says. The reference verifier must accept the chain too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector_ext.seal.entry import entry_hash
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.segment import encode_segment
from tests.archive_builder import verify_objects

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
VECTORS: dict[str, Any] = json.loads((GOLDEN / "vectors.json").read_text(encoding="utf-8"))
ENTRY_HASH_PREFIX = b"collector-ext/v1/entry\x00"
RECORD_SIGNATURE_PREFIX = b"collector-ext/v1/record-signature\x00"


def _varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def _ld(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data if data else b""


def test_the_sender_encodes_as_section_7_3a_says() -> None:
    sender = VECTORS["sender"]["sender"]
    by_hand = (
        _ld(1, sender["peer"].encode())
        + _ld(2, sender["token_name"].encode())
        + _ld(3, sender["certificate_subject"].encode())
        + _ld(4, bytes.fromhex(sender["certificate_sha256"]))
    )
    assert by_hand.hex() == sender["encoding"]


def test_each_payload_is_the_plain_payload_followed_by_field_6() -> None:
    part = VECTORS["sender"]
    field_6 = _ld(6, bytes.fromhex(part["sender"]["encoding"]))
    for plain, with_sender in zip(VECTORS["entries"][1:], part["entries"][1:], strict=True):
        assert bytes.fromhex(with_sender["payload"]) == bytes.fromhex(plain["payload"]) + field_6


def test_entries_hash_chain_and_verify_by_section_9() -> None:
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTORS["key"]["public_key"]))
    previous = bytes(32)
    for vector in VECTORS["sender"]["entries"]:
        entry = bytes.fromhex(vector["entry"])
        assert int.from_bytes(entry[0:2], "big") == 2  # format version 2
        assert entry[28:60] == previous  # FORMAT.md 7.1: the previous entry's hash
        assert entry[76:] == bytes.fromhex(vector["payload"])
        digest = hashlib.sha256(ENTRY_HASH_PREFIX + entry).digest()
        assert digest.hex() == vector["entry_hash"] == entry_hash(entry).hex()
        public_key.verify(bytes.fromhex(vector["signature"]), RECORD_SIGNATURE_PREFIX + digest)
        previous = digest


def test_the_reference_verifier_accepts_the_sender_chain() -> None:
    part = VECTORS["sender"]
    entries = [bytes.fromhex(v["entry"]) for v in part["entries"]]
    signatures = [bytes.fromhex(v["signature"]) for v in part["entries"]]
    segment = encode_segment(
        chain_id=bytes.fromhex(VECTORS["chain_id"]),
        first_sequence=0,
        created_unix_nano=VECTORS["segment"]["created_unix_nano"],
        entries=entries,
        signatures=signatures,
        format_version=2,
    )
    key = PublicKey.from_raw(bytes.fromhex(VECTORS["key"]["public_key"]))
    report = verify_objects({VECTORS["segment"]["object_key"]: segment}, [key], all_signatures=True)
    # No checkpoint covers these entries: only the uncovered tail is reported, nothing about the senders.
    assert [(f.kind.value, f.severity.value) for f in report.findings] == [("uncovered-tail", "warning")]
    assert report.records_checked == 4
    assert report.signatures_checked == 4
