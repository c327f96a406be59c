"""Golden vectors (tests/golden/vectors.json) for archive format version 1.

Two halves:

1. collector_ext reproduces every value of the vectors byte for byte, and its verifier accepts them.
2. ``MiniVerifier``, written from proto/FORMAT.md alone with hashlib, struct and cryptography's
   Ed25519PublicKey (no collector_ext code, no protobuf runtime), parses the objects by hand and
   accepts them, and rejects tampered copies. This is the evidence that FORMAT.md is sufficient to
   write an independent verifier.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
VECTORS: dict[str, Any] = json.loads((GOLDEN / "vectors.json").read_text(encoding="utf-8"))


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def vector_objects() -> dict[str, bytes]:
    objects = {VECTORS["segment"]["object_key"]: h(VECTORS["segment"]["object"])}
    for checkpoint in VECTORS["checkpoints"]:
        objects[checkpoint["object_key"]] = h(checkpoint["object"])
    return objects


# ================================================================================================
# Part 1: the implementation reproduces the vectors
# ================================================================================================


def test_generator_output_matches_the_file() -> None:
    spec = importlib.util.spec_from_file_location("generate_vectors", GOLDEN / "generate_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(module.build_vectors()) == (GOLDEN / "vectors.json").read_text(encoding="utf-8")


def test_fixed_inputs() -> None:
    assert h(VECTORS["key"]["seed"]) == bytes(range(0x00, 0x20))
    assert h(VECTORS["chain_id"]) == bytes(range(0xA0, 0xB0))
    assert VECTORS["format_version"] == 1
    assert [e["kind"] for e in VECTORS["entries"]] == [2, 1, 1, 1]


def test_key_and_key_id() -> None:
    from collector_ext.seal.keys import Ed25519Signer, key_id_for

    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(h(VECTORS["key"]["seed"])))
    assert signer.public_key.raw == h(VECTORS["key"]["public_key"])
    assert signer.key_id == h(VECTORS["key"]["key_id"])
    assert key_id_for(h(VECTORS["key"]["public_key"])) == h(VECTORS["key"]["key_id"])


def test_payloads() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from collector_ext.seal.chain import genesis_payload
    from collector_ext.seal.keys import PublicKey
    from collector_ext.seal.payload import log_payloads

    request = ExportLogsServiceRequest.FromString(h(VECTORS["otlp_request"]))
    assert [p.hex() for p in log_payloads(request)] == [e["payload"] for e in VECTORS["entries"][1:]]
    genesis = VECTORS["genesis"]
    payload = genesis_payload(
        PublicKey.from_raw(h(VECTORS["key"]["public_key"])),
        writer=genesis["writer"],
        reason=genesis["reason"],
        supersedes_chain_id=h(genesis["supersedes_chain_id"]),
    )
    assert payload.hex() == VECTORS["entries"][0]["payload"]


def test_entries_hashes_and_signatures() -> None:
    from collector_ext.seal.chain import ChainHead, chain_entries, sign_entry_hashes
    from collector_ext.seal.entry import EntryKind, decode_entry_header, encode_entry, entry_hash
    from collector_ext.seal.keys import Ed25519Signer

    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(h(VECTORS["key"]["seed"])))
    chain_id = h(VECTORS["chain_id"])
    head = ChainHead.new(chain_id)
    for vector in VECTORS["entries"]:
        entry = encode_entry(
            kind=EntryKind(vector["kind"]),
            chain_id=chain_id,
            sequence=vector["sequence"],
            previous_hash=head.head_hash,
            key_id=signer.key_id,
            sealed_unix_nano=vector["sealed_unix_nano"],
            payload=h(vector["payload"]),
            format_version=VECTORS["format_version"],
        )
        assert entry.hex() == vector["entry"]
        assert entry_hash(entry).hex() == vector["entry_hash"]
        batch = chain_entries(
            head,
            EntryKind(vector["kind"]),
            [h(vector["payload"])],
            signer.key_id,
            vector["sealed_unix_nano"],
            VECTORS["format_version"],
        )
        assert batch.entries == [entry]
        assert batch.hashes == [entry_hash(entry)]
        assert sign_entry_hashes(signer, batch.hashes)[0].hex() == vector["signature"]
        header = decode_entry_header(entry)
        assert (header.sequence, header.kind, header.chain_id) == (vector["sequence"], vector["kind"], chain_id)
        head = batch.head


def test_segment_object() -> None:
    from collector_ext.seal.layout import segment_key
    from collector_ext.seal.segment import decode_segment, encode_segment

    segment = VECTORS["segment"]
    data = encode_segment(
        chain_id=h(VECTORS["chain_id"]),
        first_sequence=segment["first_sequence"],
        created_unix_nano=segment["created_unix_nano"],
        entries=[h(e["entry"]) for e in VECTORS["entries"]],
        signatures=[h(e["signature"]) for e in VECTORS["entries"]],
        format_version=VECTORS["format_version"],
    )
    assert data.hex() == segment["object"]
    assert hashlib.sha256(data).hexdigest() == segment["sha256"]
    assert len(data) == segment["size"]
    key = segment_key(
        "", h(VECTORS["chain_id"]), segment["first_sequence"], segment["last_sequence"], segment["created_unix_nano"]
    )
    assert key == segment["object_key"]
    decoded = decode_segment(data)
    assert [r.entry.hex() for r in decoded.records] == [e["entry"] for e in VECTORS["entries"]]
    assert decoded.appended == 0


def test_checkpoint_objects() -> None:
    from collector_ext.seal.checkpoint import (
        Checkpoint,
        SegmentRef,
        checkpoint_hash,
        decode_checkpoint,
        encode_checkpoint_body,
        sign_checkpoint,
    )
    from collector_ext.seal.entry import CHECKPOINT_SIGNATURE_PREFIX
    from collector_ext.seal.keys import Ed25519Signer
    from collector_ext.seal.layout import checkpoint_key

    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(h(VECTORS["key"]["seed"])))
    segment = VECTORS["segment"]
    refs = {
        segment["object_key"]: SegmentRef(
            segment["object_key"],
            segment["first_sequence"],
            segment["last_sequence"],
            h(segment["sha256"]),
            segment["size"],
        )
    }
    previous = b""
    for vector in VECTORS["checkpoints"]:
        assert vector["previous_checkpoint_sha256"] == previous.hex()
        checkpoint = Checkpoint(
            chain_id=h(VECTORS["chain_id"]),
            checkpoint_number=vector["checkpoint_number"],
            previous_checkpoint_sha256=previous,
            last_sequence=vector["last_sequence"],
            head_sha256=h(vector["head_sha256"]),
            time_unix_nano=vector["time_unix_nano"],
            key_id=signer.key_id,
            segments=tuple(refs[k] for k in vector["segment_object_keys"]),
            format_version=VECTORS["format_version"],
        )
        body = encode_checkpoint_body(checkpoint)
        assert body.hex() == vector["body"]
        assert signer.sign(CHECKPOINT_SIGNATURE_PREFIX + body).hex() == vector["signature"]
        data, digest = sign_checkpoint(checkpoint, signer)
        assert data.hex() == vector["object"]
        assert digest.hex() == checkpoint_hash(body).hex() == vector["checkpoint_hash"]
        key = checkpoint_key("", checkpoint.chain_id, checkpoint.checkpoint_number, checkpoint.last_sequence)
        assert key == vector["object_key"]
        decoded = decode_checkpoint(data)
        assert decoded.checkpoint == checkpoint
        assert decoded.is_signed_by(signer.public_key)
        previous = digest
    assert VECTORS["checkpoints"][-1]["head_sha256"] == VECTORS["entries"][-1]["entry_hash"]


@pytest.mark.parametrize("all_signatures", [False, True])
def test_collector_ext_verifier_accepts_the_vectors(all_signatures: bool) -> None:
    from collector_ext.seal.keys import PublicKey
    from tests.archive_builder import verify_objects

    key = PublicKey.from_raw(h(VECTORS["key"]["public_key"]))
    report = verify_objects(vector_objects(), [key], all_signatures=all_signatures)
    # Version 1 vectors verify under version 1 rules, with a note saying what version 1 cannot prove.
    assert [(f.kind.value, f.severity.value) for f in report.findings] == [("format-v1", "info")]
    assert report.clean
    assert report.records_checked == 4
    # Fast path: the segment's digest is in a signed checkpoint, so only the 2 checkpoint signatures.
    assert report.signatures_checked == (2 + 4 if all_signatures else 2)


def test_collector_ext_verifier_accepts_the_hand_built_restart_chain() -> None:
    # The chain of hand_built_restart_archive (Part 2) is built from FORMAT.md alone; collector_ext
    # must read its restart mark and its genesis's superseded-chain fields as the spec says.
    from collector_ext.seal.keys import PublicKey
    from tests.archive_builder import verify_objects

    key = PublicKey.from_raw(PUBLIC_KEY)
    report = verify_objects(hand_built_restart_archive(), [key])
    assert [(f.kind.value, f.severity.value, f.first_sequence) for f in report.findings] == [
        ("superseded-chain", "info", 0),
        ("restart", "info", 5),
        ("format-v1", "info", None),
        # The superseded chain is not in this archive (version 1: a warning).
        ("superseded-chain-missing", "warning", 0),
    ]
    assert report.clean
    assert "was seen up to seq 41, checkpoint-covered up to 40" in report.findings[0].message
    assert "writer id pod-7 (mini-writer)" in report.findings[1].message
    assert report.signatures_checked == 2


# ================================================================================================
# Part 2: an independent verifier written from proto/FORMAT.md alone
# ================================================================================================
# Nothing below imports collector_ext or the protobuf runtime. Section numbers refer to FORMAT.md.

# Section 2.1, domain-separation prefixes (as the hex given there).
ENTRY_HASH_PREFIX = bytes.fromhex("636f6c6c6563746f722d6578742f76312f656e74727900")
RECORD_SIGNATURE_PREFIX = bytes.fromhex("636f6c6c6563746f722d6578742f76312f7265636f72642d7369676e617475726500")
CHECKPOINT_SIGNATURE_PREFIX = bytes.fromhex(
    "636f6c6c6563746f722d6578742f76312f636865636b706f696e742d7369676e617475726500"
)
CHECKPOINT_HASH_PREFIX = bytes.fromhex("636f6c6c6563746f722d6578742f76312f636865636b706f696e7400")
KEY_ID_PREFIX = bytes.fromhex("636f6c6c6563746f722d6578742f76312f6b65792d696400")
# Section 2.2.
SEGMENT_MAGIC = bytes.fromhex("4358534547007631")
CHECKPOINT_MAGIC = bytes.fromhex("4358434b50007631")
ZERO_HASH = bytes(32)
# Section 7.1.
ENTRY_HEADER = struct.Struct(">HBB16sQ32s8sQ")
# Section 3.
SEGMENT_KEY_RE = re.compile(
    r"(^|/)([0-9a-f]{32})/segments/([0-9]{4})/([0-9]{2})/([0-9]{2})/([0-9]{20})-([0-9]{20})\.cxseg$"
)
CHECKPOINT_KEY_RE = re.compile(r"(^|/)([0-9a-f]{32})/checkpoints/([0-9]{12})-([0-9]{20})\.cxckpt$")


class Rejected(Exception):
    """The mini-verifier found a problem (it stops at the first one)."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Rejected("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse_fields(data: bytes, allowed: dict[int, int]) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a message; ``allowed`` maps field number to wire type.

    Strict, as FORMAT.md section 5 permits: canonical order, known fields only.
    """
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    last_number = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if allowed.get(number) != wire_type:
            raise Rejected(f"unexpected field {number} (wire type {wire_type})")
        if number < last_number:
            raise Rejected(f"field {number} out of order")
        last_number = number
        value: int | bytes
        if wire_type == 0:
            value, pos = read_varint(data, pos)
        else:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise Rejected("length-delimited field runs past the message")
            value, pos = data[pos : pos + length], pos + length
        out.append((number, value))
    return out


def singular(fields: list[tuple[int, int | bytes]], defaults: dict[int, int | bytes]) -> dict[int, Any]:
    """Singular fields with proto3 defaults; a field given twice is rejected."""
    values: dict[int, Any] = dict(defaults)
    seen: set[int] = set()
    for number, value in fields:
        if number in defaults:
            if number in seen:
                raise Rejected(f"field {number} given twice")
            seen.add(number)
            values[number] = value
    return values


def utf8(*values: bytes) -> None:
    """Section 5: a proto3 string holds UTF-8."""
    for value in values:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("a string field is not UTF-8") from None


def int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def unframe(magic: bytes, data: bytes) -> bytes:
    """Section 4: a strict verifier rejects appended bytes outright."""
    if len(data) < 16 or data[:8] != magic:
        raise Rejected("wrong magic or object too short")
    length = struct.unpack(">Q", data[8:16])[0]
    if 16 + length > len(data):
        raise Rejected("frame longer than the object")
    if 16 + length < len(data):
        raise Rejected(f"{len(data) - 16 - length} bytes appended after the frame")
    return data[16 : 16 + length]


def key_id_of(raw_public_key: bytes) -> bytes:
    return hashlib.sha256(KEY_ID_PREFIX + raw_public_key).digest()[:8]


def entry_hash_of(entry: bytes) -> bytes:
    return hashlib.sha256(ENTRY_HASH_PREFIX + entry).digest()


def check_signature(key: Ed25519PublicKey, signature: bytes, message: bytes, what: str) -> None:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise Rejected(f"{what}: signature does not verify") from None


@dataclass
class Result:
    chain_id: bytes = b""
    last_sequence: int = -1
    covered_until: int = -1
    entry_hashes: list[bytes] = field(default_factory=list)
    checkpoint_hashes: list[bytes] = field(default_factory=list)
    record_signatures_checked: int = 0
    uncovered_tail: int = 0
    restart_marks: list[int] = field(default_factory=list)
    supersedes: bytes = b""


class MiniVerifier:
    def __init__(self, pinned_raw_keys: list[bytes], *, check_all_signatures: bool = True) -> None:
        self.keys = {key_id_of(raw): (raw, Ed25519PublicKey.from_public_bytes(raw)) for raw in pinned_raw_keys}
        self.check_all_signatures = check_all_signatures

    def pinned(self, key_id: bytes) -> tuple[bytes, Ed25519PublicKey]:
        if key_id not in self.keys:
            raise Rejected(f"key id {key_id.hex()} is not pinned")
        return self.keys[key_id]

    def verify(self, objects: dict[str, bytes]) -> Result:
        segments: list[tuple[int, int, str, re.Match[str]]] = []
        checkpoints: list[tuple[int, int, str]] = []
        chains: set[str] = set()
        for key in objects:
            if (m := SEGMENT_KEY_RE.search(key)) is not None:
                segments.append((int(m[6]), int(m[7]), key, m))
                chains.add(m[2])
            elif (m := CHECKPOINT_KEY_RE.search(key)) is not None:
                checkpoints.append((int(m[3]), int(m[4]), key))
                chains.add(m[2])
            else:
                raise Rejected(f"unrecognised object {key}")
        if len(chains) != 1:
            raise Rejected("the mini-verifier handles exactly one chain")
        result = Result(chain_id=bytes.fromhex(chains.pop()))
        heads: dict[int, bytes] = {}
        digests: dict[str, tuple[int, int, bytes, int]] = {}
        self.verify_checkpoints(objects, sorted(checkpoints), result, heads, digests)
        self.verify_segments(objects, sorted(segments), result, heads, digests)
        if result.last_sequence < result.covered_until:
            raise Rejected("truncated chain: a checkpoint vouches for records that are not archived")
        result.uncovered_tail = result.last_sequence - result.covered_until
        return result

    # Section 11 and 13.2.
    def verify_checkpoints(
        self,
        objects: dict[str, bytes],
        checkpoints: list[tuple[int, int, str]],
        result: Result,
        heads: dict[int, bytes],
        digests: dict[str, tuple[int, int, bytes, int]],
    ) -> None:
        previous_hash = b""
        previous_last = -1
        for expected_number, (number, last, key) in enumerate(checkpoints):
            if number != expected_number:
                raise Rejected(f"checkpoint number {expected_number} is missing")
            signed = singular(parse_fields(unframe(CHECKPOINT_MAGIC, objects[key]), {1: 2, 2: 2}), {1: b"", 2: b""})
            body_bytes, signature = signed[1], signed[2]
            fields = parse_fields(body_bytes, {1: 0, 2: 2, 3: 0, 4: 2, 5: 0, 6: 2, 7: 0, 8: 2, 9: 2})
            body = singular(fields, {1: 0, 2: b"", 3: 0, 4: b"", 5: 0, 6: b"", 7: 0, 8: b""})
            if body[1] != 1:
                raise Rejected(f"checkpoint format version {body[1]}")
            _raw, public_key = self.pinned(body[8])
            check_signature(public_key, signature, CHECKPOINT_SIGNATURE_PREFIX + body_bytes, key)
            if (body[2], body[3], body[5]) != (result.chain_id, number, last):
                raise Rejected(f"{key}: content does not match the key")
            if body[4] != previous_hash:
                raise Rejected(f"{key}: does not name the previous checkpoint's hash")
            if body[5] < previous_last or len(body[6]) != 32:
                raise Rejected(f"{key}: last_sequence decreases or bad head")
            if heads.setdefault(body[5], body[6]) != body[6]:
                raise Rejected(f"{key}: a different head for sequence {body[5]}")
            int64(body[7])  # time_unix_nano: informational
            for number_, value in fields:
                if number_ == 9:
                    assert isinstance(value, bytes)
                    ref_fields = parse_fields(value, {1: 2, 2: 0, 3: 0, 4: 2, 5: 0})
                    ref = singular(ref_fields, {1: b"", 2: 0, 3: 0, 4: b"", 5: 0})
                    digests[ref[1].decode()] = (ref[2], ref[3], ref[4], ref[5])
            previous_hash = hashlib.sha256(CHECKPOINT_HASH_PREFIX + body_bytes).digest()
            previous_last = body[5]
            result.checkpoint_hashes.append(previous_hash)
            result.covered_until = max(result.covered_until, body[5])

    # Sections 6, 7, 9, 10, 12 and 13.3.
    def verify_segments(
        self,
        objects: dict[str, bytes],
        segments: list[tuple[int, int, str, re.Match[str]]],
        result: Result,
        heads: dict[int, bytes],
        digests: dict[str, tuple[int, int, bytes, int]],
    ) -> None:
        expected = 0
        previous = ZERO_HASH
        for first, last, key, match in segments:
            data = objects[key]
            body = unframe(SEGMENT_MAGIC, data)
            fields = parse_fields(body, {1: 2, 2: 2})
            header_bytes = singular(fields, {1: b""})[1]
            header_fields = parse_fields(header_bytes, {1: 0, 2: 2, 3: 0, 4: 0, 5: 0})
            header = singular(header_fields, {1: 0, 2: b"", 3: 0, 4: 0, 5: 0})
            if header[1] != 1:
                raise Rejected(f"segment format version {header[1]}")
            if header[2] != result.chain_id:
                raise Rejected(f"{key}: segment of another chain")
            records = [value for number, value in fields if number == 2]
            if (header[3], header[3] + header[4] - 1, len(records)) != (first, last, header[4]):
                raise Rejected(f"{key}: header does not match the key or the records")
            if header[3] != expected:
                raise Rejected(f"{key}: sequence {expected}-{header[3] - 1} missing")
            day = time.strftime("%Y/%m/%d", time.gmtime(int64(header[5]) // 1_000_000_000))
            if day != f"{match[3]}/{match[4]}/{match[5]}":
                raise Rejected(f"{key}: date does not match created_unix_nano")
            # Section 12 and 13.4: a segment whose digest a verified checkpoint recorded is authentic.
            authentic = False
            if key in digests:
                if digests[key] != (first, last, hashlib.sha256(data).digest(), len(data)):
                    raise Rejected(f"{key}: differs from the segment digest in the checkpoint")
                authentic = True
            for record in records:
                assert isinstance(record, bytes)
                sealed = singular(parse_fields(record, {1: 2, 2: 2}), {1: b"", 2: b""})
                entry, signature = sealed[1], sealed[2]
                if len(entry) < 76 or len(signature) != 64:
                    raise Rejected(f"{key}: short entry or signature")
                version, kind, reserved, chain_id, sequence, previous_hash, key_id, _sealed = ENTRY_HEADER.unpack_from(
                    entry
                )
                if (version, reserved, chain_id) != (1, 0, result.chain_id):
                    raise Rejected(f"{key}: entry {sequence} has a bad version, reserved byte or chain id")
                if sequence != expected:
                    raise Rejected(f"{key}: expected sequence {expected}, found {sequence}")
                if previous_hash != previous:
                    raise Rejected(f"{key}: entry {sequence} does not link to entry {sequence - 1}")
                raw_key, public_key = self.pinned(key_id)
                # Sections 7.2 and 10: the genesis at 0 only; log records and restart marks after it.
                if kind not in ((2,) if sequence == 0 else (1, 3)):
                    raise Rejected(f"{key}: entry {sequence} has kind {kind}")
                payload = entry[76:]
                if kind == 2:
                    genesis_fields = parse_fields(payload, {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 0, 7: 0})
                    genesis = singular(genesis_fields, {1: b"", 2: b"", 3: b"", 4: b"", 5: b"", 6: 0, 7: 0})
                    if genesis[1] != raw_key:
                        raise Rejected("genesis names another public key")
                    if len(genesis[3]) not in (0, 16):
                        raise Rejected("genesis names a superseded chain id that is not 16 bytes")
                    utf8(genesis[2], genesis[4], genesis[5])
                    result.supersedes = genesis[3]
                elif kind == 3:
                    # Section 7.5: RestartPayload.
                    restart = singular(parse_fields(payload, {1: 2, 2: 2, 3: 0, 4: 2}), {1: b"", 2: b"", 3: 0, 4: b""})
                    utf8(restart[1], restart[2], restart[4])
                    result.restart_marks.append(sequence)
                else:
                    log_fields = parse_fields(payload, {1: 2, 2: 2, 3: 2, 4: 2, 5: 2})
                    if not log_fields or log_fields[-1][0] != 5:
                        raise Rejected(f"{key}: entry {sequence} has no log_record")
                digest = entry_hash_of(entry)
                if self.check_all_signatures or not authentic:
                    check_signature(public_key, signature, RECORD_SIGNATURE_PREFIX + digest, f"{key} seq {sequence}")
                    result.record_signatures_checked += 1
                if heads.get(sequence, digest) != digest:
                    raise Rejected(f"{key}: entry {sequence} differs from the head a checkpoint claims")
                result.entry_hashes.append(digest)
                previous = digest
                expected = sequence + 1
        result.last_sequence = expected - 1


def hand_built_log_payloads(request: bytes) -> list[bytes]:
    """FORMAT.md section 7.3 from the OTLP wire format (ResourceLogs = 1 in the request; resource 1,
    scope_logs 2, schema_url 3 in ResourceLogs; scope 1, log_records 2, schema_url 3 in ScopeLogs)."""

    def ld(number: int, data: bytes) -> bytes:
        return b"" if not data else varint(number << 3 | 2) + varint(len(data)) + data

    def sub(message: bytes) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for number, value in parse_fields(message, {1: 2, 2: 2, 3: 2}):
            assert isinstance(value, bytes)
            out.setdefault(number, []).append(value)
        return out

    payloads = []
    for resource_logs in sub(request).get(1, []):
        r = sub(resource_logs)
        resource = r.get(1, [b""])[0]
        resource_schema = r.get(3, [b""])[0]
        for scope_logs in r.get(2, []):
            s = sub(scope_logs)
            prefix = ld(1, resource) + ld(2, resource_schema) + ld(3, s.get(1, [b""])[0]) + ld(4, s.get(3, [b""])[0])
            for record in s.get(2, []):
                payloads.append(prefix + b"\x2a" + varint(len(record)) + record)
    return payloads


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


PUBLIC_KEY = h(VECTORS["key"]["public_key"])


def ld(number: int, data: bytes) -> bytes:
    """A length-delimited field, omitted when empty (section 5, canonical encoding)."""
    return b"" if not data else varint(number << 3 | 2) + varint(len(data)) + data


def vi(number: int, value: int) -> bytes:
    """A varint field, omitted when 0."""
    return b"" if not value else varint(number << 3) + varint(value)


HAND_CHAIN_ID = bytes(range(0xC0, 0xD0))
SUPERSEDED_CHAIN_ID = bytes(range(0xD0, 0xE0))
HAND_TIME = 1_790_000_000_000_000_000


def hand_built_restart_archive(
    *, restart_at: int = 5, restart_payload: bytes | None = None, restart_kind: int = 3
) -> dict[str, bytes]:
    """A chain built from FORMAT.md alone: a genesis that supersedes another chain (section 7.4),
    log records, a restart mark (7.5) and more log records, in two segments with one checkpoint
    each (sections 6, 11)."""
    private = Ed25519PrivateKey.from_private_bytes(h(VECTORS["key"]["seed"]))
    raw = private.public_key().public_bytes_raw()
    key_id = key_id_of(raw)
    genesis = (
        ld(1, raw)
        + ld(2, b"mini-writer")
        + ld(3, SUPERSEDED_CHAIN_ID)
        + ld(4, b"local state missing")
        + ld(5, b"pod-7")
        + vi(6, 41)
        + vi(7, 40)
    )
    if restart_payload is None:
        restart_payload = ld(1, b"mini-writer") + ld(2, b"pod-7") + vi(3, 0) + ld(4, b"restarted after a crash")
    chain_hex = HAND_CHAIN_ID.hex()
    objects: dict[str, bytes] = {}
    previous = ZERO_HASH
    previous_checkpoint = b""
    for number, (first, last) in enumerate([(0, 7), (8, 11)]):
        records = []
        for sequence in range(first, last + 1):
            if sequence == restart_at:
                kind, payload = restart_kind, restart_payload
            elif sequence == 0:
                kind, payload = 2, genesis
            else:
                kind, payload = 1, ld(5, b"record %d" % sequence)  # LogPayload.log_record only
            entry = ENTRY_HEADER.pack(1, kind, 0, HAND_CHAIN_ID, sequence, previous, key_id, HAND_TIME) + payload
            previous = entry_hash_of(entry)
            signature = private.sign(RECORD_SIGNATURE_PREFIX + previous)
            records.append(ld(1, entry) + ld(2, signature))
        header = vi(1, 1) + ld(2, HAND_CHAIN_ID) + vi(3, first) + vi(4, len(records)) + vi(5, HAND_TIME)
        body = ld(1, header) + b"".join(ld(2, r) for r in records)
        segment = SEGMENT_MAGIC + struct.pack(">Q", len(body)) + body
        day = time.strftime("%Y/%m/%d", time.gmtime(HAND_TIME // 1_000_000_000))
        segment_key = f"{chain_hex}/segments/{day}/{first:020d}-{last:020d}.cxseg"
        objects[segment_key] = segment
        digest = (
            ld(1, segment_key.encode())
            + vi(2, first)
            + vi(3, last)
            + ld(4, hashlib.sha256(segment).digest())
            + vi(5, len(segment))
        )
        checkpoint_body = (
            vi(1, 1)
            + ld(2, HAND_CHAIN_ID)
            + vi(3, number)
            + ld(4, previous_checkpoint)
            + vi(5, last)
            + ld(6, previous)
            + vi(7, HAND_TIME + number)
            + ld(8, key_id)
            + ld(9, digest)
        )
        signed = ld(1, checkpoint_body) + ld(2, private.sign(CHECKPOINT_SIGNATURE_PREFIX + checkpoint_body))
        objects[f"{chain_hex}/checkpoints/{number:012d}-{last:020d}.cxckpt"] = (
            CHECKPOINT_MAGIC + struct.pack(">Q", len(signed)) + signed
        )
        previous_checkpoint = hashlib.sha256(CHECKPOINT_HASH_PREFIX + checkpoint_body).digest()
    return objects


@pytest.mark.parametrize("check_all_signatures", [True, False])
def test_independent_verifier_accepts_the_vectors(check_all_signatures: bool) -> None:
    result = MiniVerifier([PUBLIC_KEY], check_all_signatures=check_all_signatures).verify(vector_objects())
    assert result.chain_id.hex() == VECTORS["chain_id"]
    assert result.last_sequence == result.covered_until == 3
    assert result.uncovered_tail == 0
    assert [d.hex() for d in result.entry_hashes] == [e["entry_hash"] for e in VECTORS["entries"]]
    assert [d.hex() for d in result.checkpoint_hashes] == [c["checkpoint_hash"] for c in VECTORS["checkpoints"]]
    # Fast path (section 13.4): the checkpointed segment needs no record signature checks.
    assert result.record_signatures_checked == (4 if check_all_signatures else 0)


def test_independent_computations_match_the_vectors() -> None:
    private = Ed25519PrivateKey.from_private_bytes(h(VECTORS["key"]["seed"]))
    assert key_id_of(PUBLIC_KEY).hex() == VECTORS["key"]["key_id"]
    public = Ed25519PublicKey.from_public_bytes(PUBLIC_KEY)
    previous = ZERO_HASH
    for vector in VECTORS["entries"]:
        entry = h(vector["entry"])
        header = ENTRY_HEADER.unpack_from(entry)
        assert header == (
            1,
            vector["kind"],
            0,
            h(VECTORS["chain_id"]),
            vector["sequence"],
            previous,
            h(VECTORS["key"]["key_id"]),
            vector["sealed_unix_nano"],
        )
        assert entry[76:].hex() == vector["payload"]
        digest = entry_hash_of(entry)
        assert digest.hex() == vector["entry_hash"]
        # Ed25519 is deterministic: an independent signer gives the same bytes.
        assert private.sign(RECORD_SIGNATURE_PREFIX + digest).hex() == vector["signature"]
        public.verify(h(vector["signature"]), RECORD_SIGNATURE_PREFIX + digest)
        previous = digest
    assert [p.hex() for p in hand_built_log_payloads(h(VECTORS["otlp_request"]))] == [
        e["payload"] for e in VECTORS["entries"][1:]
    ]
    segment = h(VECTORS["segment"]["object"])
    assert hashlib.sha256(segment).hexdigest() == VECTORS["segment"]["sha256"]
    for vector in VECTORS["checkpoints"]:
        body = h(vector["body"])
        assert private.sign(CHECKPOINT_SIGNATURE_PREFIX + body).hex() == vector["signature"]
        assert hashlib.sha256(CHECKPOINT_HASH_PREFIX + body).hexdigest() == vector["checkpoint_hash"]


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _tamper_record_payload(objects: dict[str, bytes]) -> None:
    key = VECTORS["segment"]["object_key"]
    entry = h(VECTORS["entries"][2]["entry"])
    offset = objects[key].index(entry) + len(entry) - 1
    objects[key] = _flip(objects[key], offset)


def _tamper_record_payload_and_checkpoint_digest(objects: dict[str, bytes]) -> None:
    # Without the checkpoint's digest, the altered record is caught by its own signature.
    _tamper_record_payload(objects)
    del objects[VECTORS["checkpoints"][0]["object_key"]]
    del objects[VECTORS["checkpoints"][1]["object_key"]]


TAMPERINGS = {
    "record payload byte flipped": _tamper_record_payload,
    "record flipped, no checkpoints left": _tamper_record_payload_and_checkpoint_digest,
    "byte appended to segment": lambda o: o.update({k: v + b"\x00" for k, v in o.items() if k.endswith(".cxseg")}),
    "byte appended to checkpoint": lambda o: o.update(
        {VECTORS["checkpoints"][1]["object_key"]: h(VECTORS["checkpoints"][1]["object"]) + b"\x00"}
    ),
    "checkpoint signature flipped": lambda o: o.update(
        {VECTORS["checkpoints"][0]["object_key"]: _flip(h(VECTORS["checkpoints"][0]["object"]), -1)}
    ),
    "checkpoint 0 removed": lambda o: o.pop(VECTORS["checkpoints"][0]["object_key"]),
    "segment removed": lambda o: o.pop(VECTORS["segment"]["object_key"]),
    "record signature flipped": lambda o: o.update(
        {
            VECTORS["segment"]["object_key"]: h(VECTORS["segment"]["object"]).replace(
                h(VECTORS["entries"][3]["signature"]), _flip(h(VECTORS["entries"][3]["signature"]), 0)
            )
        }
    ),
}


@pytest.mark.parametrize("check_all_signatures", [True, False])
@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_independent_verifier_rejects_tampering(name: str, check_all_signatures: bool) -> None:
    objects = vector_objects()
    TAMPERINGS[name](objects)
    assert objects != vector_objects()
    with pytest.raises(Rejected):
        MiniVerifier([PUBLIC_KEY], check_all_signatures=check_all_signatures).verify(objects)


@pytest.mark.parametrize("check_all_signatures", [True, False])
def test_independent_verifier_accepts_a_restart_mark(check_all_signatures: bool) -> None:
    result = MiniVerifier([PUBLIC_KEY], check_all_signatures=check_all_signatures).verify(hand_built_restart_archive())
    assert (result.last_sequence, result.covered_until, result.uncovered_tail) == (11, 11, 0)
    assert result.restart_marks == [5]
    assert result.supersedes == SUPERSEDED_CHAIN_ID
    assert result.record_signatures_checked == (12 if check_all_signatures else 0)


@pytest.mark.parametrize(
    ("restart_at", "restart_kind", "restart_payload"),
    [
        (0, 3, None),  # entry 0 must be the genesis
        (5, 4, None),  # kind 4 is reserved
        (5, 3, b"\x0a\xff"),  # the payload runs past its end
        (5, 3, b"\x0a\x02\xff\xfe"),  # writer is not UTF-8
        (5, 3, b"\x18\x01\x0a\x00"),  # fields out of order
    ],
    ids=["restart at 0", "reserved kind", "truncated payload", "not utf-8", "out of order"],
)
def test_independent_verifier_rejects_a_bad_restart_mark(
    restart_at: int, restart_kind: int, restart_payload: bytes | None
) -> None:
    objects = hand_built_restart_archive(
        restart_at=restart_at, restart_kind=restart_kind, restart_payload=restart_payload
    )
    with pytest.raises(Rejected):
        MiniVerifier([PUBLIC_KEY]).verify(objects)


def test_independent_verifier_rejects_an_unpinned_key() -> None:
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key().public_bytes_raw()
    with pytest.raises(Rejected, match="not pinned"):
        MiniVerifier([other]).verify(vector_objects())
