"""Golden test vectors for archive format version 1 (proto/FORMAT.md, "Test vectors").

Usage, from the repository root:

    python tests/golden/generate_vectors.py          # rewrite tests/golden/vectors.json
    python tests/golden/generate_vectors.py --check  # exit 1 if vectors.json differs from what
                                                      # the current code produces

Everything is fixed: the Ed25519 seed (bytes 0x00..0x1f), the chain id (bytes 0xa0..0xaf), every
time stamp and the three OTLP log records. Ed25519 signatures are deterministic (RFC 8032), so two
runs give byte-identical output. Every value is produced with collector_ext's own functions; the
chain is the one a writer produces: a genesis entry (seq 0) and three log records (seq 1-3) in one
segment object, checkpoint 0 covering that segment, and an idle checkpoint 1 naming checkpoint 0.
A second part, ``sender``, pins format version 2's ``Sender`` (FORMAT.md 7.3a): the same three records
sealed with a fixed sender in a version 2 chain of the same key. A third part, ``run_key``, pins format
version 2's run key (FORMAT.md 7.7, 10.3): a version 2 genesis by the same key, a run key entry by which
it certifies a fixed run key, and the three records signed by that run key. A fourth, ``witness``, pins
a checkpoint note over the four entries and a fixed witness's cosignature of it (FORMAT.md 19.2). All
byte strings are written as lowercase hex.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.seal.chain import ChainHead, chain_entries, genesis_payload, run_key_payload, sign_entry_hashes
from collector_ext.seal.checkpoint import (
    Checkpoint,
    SegmentRef,
    checkpoint_hash,
    encode_checkpoint_body,
    sign_checkpoint,
)
from collector_ext.seal.entry import CHECKPOINT_SIGNATURE_PREFIX, EntryKind, run_key_message
from collector_ext.seal.keys import Ed25519Signer, key_id_for
from collector_ext.seal.layout import checkpoint_key, segment_key, witness_key_tag
from collector_ext.seal.merkle import consistency_proof, inclusion_path, leaf_hash, list_reader, tree_root
from collector_ext.seal.note import (
    COSIGNATURE_ED25519_TYPE,
    checkpoint_text,
    cosign,
    cosignature_message,
    key_hint,
    sign_note,
)
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.segment import encode_segment
from collector_ext.seal.sender import Sender
from collector_ext.witness.protocol import AddCheckpoint
from collector_ext.witness.vkey import witness_vkey

VECTORS_PATH = Path(__file__).with_name("vectors.json")

SEED = bytes(range(0x00, 0x20))
CHAIN_ID = bytes(range(0xA0, 0xB0))
WRITER = "collector-ext/golden host=vectors"
REASON = "sidecar started"

T0 = 1_790_000_000_000_000_000  # 2026-09-21T14:13:20Z, ns since the Unix epoch
GENESIS_SEALED = T0
SEGMENT_CREATED = T0 + 250_000
RECORDS_SEALED = T0 + 1_000_000  # the three log records are one sealing batch: one time
CHECKPOINT_0_TIME = T0 + 2_000_000_000
CHECKPOINT_1_TIME = T0 + 62_000_000_000  # idle checkpoint one interval later
# These vectors pin format version 1, which verifiers still accept (proto/FORMAT.md, "Versions").
FORMAT_VERSION = 1
# The sender part: a version 2 chain (FORMAT.md 7.3a), one fixed sender for the whole request.
SENDER_FORMAT_VERSION = 2
SENDER_ARCHIVE_ID = "s3://golden-bucket/vectors"
# The run key part (FORMAT.md 7.7): the run key's seed, and why the writer certified it.
RUN_KEY_SEED = bytes(range(0x40, 0x60))
RUN_KEY_REASON = "run key for this run"
RUN_KEY_SEALED = T0 + 500_000
# The witness part (FORMAT.md 19.2): a witness's seed and name, and the time it cosigns at.
WITNESS_SEED = bytes(range(0x60, 0x80))
WITNESS_NAME = "witness.example/golden"
WITNESS_TIME = 1_790_000_100
SENDER = Sender(
    peer="[2001:db8::7]:53422",
    token_name="collector-prod",
    certificate_subject="CN=otel-collector,OU=observability,O=Example Corp",
    certificate_sha256=bytes(range(0x40, 0x60)),
)


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def otlp_request() -> ExportLogsServiceRequest:
    """One resource, two scopes, three records (string, kvlist and int bodies)."""
    string_record = LogRecord(
        time_unix_nano=1_789_999_999_000_000_000,
        observed_time_unix_nano=1_789_999_999_500_000_000,
        severity_number=9,  # SEVERITY_NUMBER_INFO
        severity_text="INFO",
        body=AnyValue(string_value="user alice approved payment 4711"),
        attributes=[
            _string("user.id", "alice"),
            KeyValue(key="payment.amount_cents", value=AnyValue(int_value=125_000)),
            KeyValue(key="payment.approved", value=AnyValue(bool_value=True)),
        ],
    )
    kvlist_record = LogRecord(
        time_unix_nano=1_789_999_999_100_000_000,
        observed_time_unix_nano=1_789_999_999_600_000_000,
        severity_number=13,  # SEVERITY_NUMBER_WARN
        severity_text="WARN",
        body=AnyValue(
            kvlist_value=KeyValueList(
                values=[
                    _string("action", "model.invoke"),
                    KeyValue(key="tokens", value=AnyValue(int_value=1024)),
                    KeyValue(key="temperature", value=AnyValue(double_value=0.25)),
                ]
            )
        ),
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        flags=1,
    )
    int_record = LogRecord(
        time_unix_nano=1_789_999_999_200_000_000,
        severity_number=17,  # SEVERITY_NUMBER_ERROR
        body=AnyValue(int_value=-42),
        event_name="audit.exit_code",
    )
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[_string("service.name", "payments"), _string("host.name", "pod-abc")]),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name="audit", version="1.0.0"),
                        schema_url="https://opentelemetry.io/schemas/1.26.0",
                        log_records=[string_record, kvlist_record],
                    ),
                    ScopeLogs(scope=InstrumentationScope(name="exit-codes"), log_records=[int_record]),
                ],
            )
        ]
    )


def build_vectors() -> dict[str, Any]:
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(SEED))
    public_key = signer.public_key
    key_id = key_id_for(public_key.raw)
    assert key_id == signer.key_id

    request = otlp_request()
    request_bytes = request.SerializeToString(deterministic=True)
    payloads = log_payloads(ExportLogsServiceRequest.FromString(request_bytes))
    assert len(payloads) == 3

    # The chain: genesis batch (seq 0), then one batch of three log records (seq 1-3).
    genesis = genesis_payload(public_key, writer=WRITER, reason=REASON)
    first = chain_entries(ChainHead.new(CHAIN_ID), EntryKind.GENESIS, [genesis], key_id, GENESIS_SEALED, FORMAT_VERSION)
    second = chain_entries(first.head, EntryKind.LOG_RECORD, payloads, key_id, RECORDS_SEALED, FORMAT_VERSION)
    entries = first.entries + second.entries
    hashes = first.hashes + second.hashes
    signatures = sign_entry_hashes(signer, hashes)
    kinds = [EntryKind.GENESIS] + [EntryKind.LOG_RECORD] * len(payloads)
    sealed = [GENESIS_SEALED] + [RECORDS_SEALED] * len(payloads)
    all_payloads = [genesis, *payloads]

    # One segment object holding all four entries.
    last_sequence = len(entries) - 1
    segment_object = encode_segment(
        chain_id=CHAIN_ID,
        first_sequence=0,
        created_unix_nano=SEGMENT_CREATED,
        entries=entries,
        signatures=signatures,
        format_version=FORMAT_VERSION,
    )
    segment_sha256 = hashlib.sha256(segment_object).digest()
    segment_object_key = segment_key("", CHAIN_ID, 0, last_sequence, SEGMENT_CREATED)
    ref = SegmentRef(segment_object_key, 0, last_sequence, segment_sha256, len(segment_object))

    # Checkpoint 0 covers the segment; checkpoint 1 is an idle one (no new segment) naming checkpoint 0.
    checkpoints = []
    previous = b""
    for number, (time_unix_nano, segments) in enumerate([(CHECKPOINT_0_TIME, (ref,)), (CHECKPOINT_1_TIME, ())]):
        checkpoint = Checkpoint(
            chain_id=CHAIN_ID,
            checkpoint_number=number,
            previous_checkpoint_sha256=previous,
            last_sequence=last_sequence,
            head_sha256=second.head.head_hash,
            time_unix_nano=time_unix_nano,
            key_id=key_id,
            segments=segments,
            format_version=FORMAT_VERSION,
        )
        body = encode_checkpoint_body(checkpoint)
        signature = signer.sign(CHECKPOINT_SIGNATURE_PREFIX + body)
        checkpoint_object, checkpoint_sha256 = sign_checkpoint(checkpoint, signer)
        assert checkpoint_sha256 == checkpoint_hash(body)
        checkpoints.append(
            {
                "object_key": checkpoint_key("", CHAIN_ID, number, last_sequence),
                "checkpoint_number": number,
                "previous_checkpoint_sha256": previous.hex(),
                "last_sequence": last_sequence,
                "head_sha256": second.head.head_hash.hex(),
                "time_unix_nano": time_unix_nano,
                "segment_object_keys": [s.object_key for s in segments],
                "body": body.hex(),
                "signature": signature.hex(),
                "checkpoint_hash": checkpoint_sha256.hex(),
                "object": checkpoint_object.hex(),
            }
        )
        previous = checkpoint_sha256

    return {
        "about": (
            "Golden vectors for collector_ext archive format version 1 (proto/FORMAT.md); 'sender' holds "
            "version 2 entries whose log records carry a Sender (FORMAT.md 7.3a); 'run_key' a version 2 chain whose "
            "records are signed by a run key its key certifies (FORMAT.md 7.7). "
            "Generated by tests/golden/generate_vectors.py; do not edit by hand. Byte strings are hex."
        ),
        "format_version": FORMAT_VERSION,
        "key": {"seed": SEED.hex(), "public_key": public_key.raw.hex(), "key_id": key_id.hex()},
        "chain_id": CHAIN_ID.hex(),
        "otlp_request": request_bytes.hex(),
        "genesis": {"writer": WRITER, "reason": REASON, "supersedes_chain_id": ""},
        "entries": [
            {
                "sequence": sequence,
                "kind": int(kinds[sequence]),
                "sealed_unix_nano": sealed[sequence],
                "payload": all_payloads[sequence].hex(),
                "entry": entries[sequence].hex(),
                "entry_hash": hashes[sequence].hex(),
                "signature": signatures[sequence].hex(),
            }
            for sequence in range(len(entries))
        ],
        "segment": {
            "object_key": segment_object_key,
            "first_sequence": 0,
            "last_sequence": last_sequence,
            "created_unix_nano": SEGMENT_CREATED,
            "object": segment_object.hex(),
            "sha256": segment_sha256.hex(),
            "size": len(segment_object),
        },
        "checkpoints": checkpoints,
        "sender": build_sender_vectors(signer, request_bytes),
        "run_key": build_run_key_vectors(signer, request_bytes),
        "witness": build_witness_vectors(signer, entries),
        "tree": build_tree_vectors(signer, entries, signatures),
    }


def build_tree_vectors(signer: Ed25519Signer, entries: list[bytes], signatures: list[bytes]) -> dict[str, Any]:
    """The Merkle tree over the four entries above (FORMAT.md 16): leaf hashes, the root at every size,
    every inclusion path and consistency proof at size 4, the checkpoint note of checkpoint 0 with its
    key, the level-0 partial tile of size 4, and the proof file of entry 2."""
    from collector_ext.prove.proof_file import ProofFile, RecordProof, encode_proof
    from collector_ext.seal.layout import checkpoint_note_key, tile_key
    from collector_ext.seal.note import chain_origin
    from collector_ext.seal.tiles import TileBuilder

    leaves = [leaf_hash(entry) for entry in entries]
    reader = list_reader(leaves)
    size = len(leaves)
    origin = chain_origin(SENDER_ARCHIVE_ID, CHAIN_ID)
    note = sign_note(checkpoint_text(origin, size, tree_root(leaves)), origin, signer)
    tiles = TileBuilder()
    tiles.extend(leaves)
    (tile,) = tiles.partial_tiles()
    proof = ProofFile((RecordProof(2, entries[2], signatures[2], inclusion_path(2, size, reader)),), note)
    return {
        "origin": origin,
        "leaf_hashes": [leaf.hex() for leaf in leaves],
        "roots": {str(n): tree_root(leaves[:n]).hex() for n in range(0, size + 1)},
        "inclusion_paths": {str(m): [h.hex() for h in inclusion_path(m, size, reader)] for m in range(size)},
        "consistency_proofs": {
            f"{m}-{size}": [h.hex() for h in consistency_proof(m, size, reader)] for m in range(1, size)
        },
        "note_key": checkpoint_note_key("", CHAIN_ID, 0, size - 1),
        "note": note.hex(),
        "note_key_hint": key_hint(origin, 0x01, signer.public_key.raw).hex(),
        "tile_key": tile_key("", CHAIN_ID, tile.level, tile.index, tile.width),
        "tile": tile.encode().hex(),
        "proof_of_entry_2": encode_proof(proof).hex(),
    }


def build_witness_vectors(signer: Ed25519Signer, entries: list[bytes]) -> dict[str, Any]:
    """A checkpoint note over the four entries above (FORMAT.md 16.4), cosigned by a fixed witness
    (FORMAT.md 19.2): its vkey, the cosigned message and line, and the add-checkpoint body from size 2."""
    witness = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED))
    origin = f"{SENDER_ARCHIVE_ID.split('://', 1)[1]}/{CHAIN_ID.hex()}"
    leaves = [leaf_hash(entry) for entry in entries]
    text = checkpoint_text(origin, len(leaves), tree_root(leaves))
    note = sign_note(text, origin, signer)
    line = cosign(text, WITNESS_NAME, witness, WITNESS_TIME).line()
    proof = consistency_proof(2, len(leaves), list_reader(leaves))
    return {
        "origin": origin,
        "note_text": text.hex(),
        "note": note.hex(),
        "witness": {
            "name": WITNESS_NAME,
            "seed": WITNESS_SEED.hex(),
            "public_key": witness.public_key.raw.hex(),
            "key_hint": key_hint(WITNESS_NAME, COSIGNATURE_ED25519_TYPE, witness.public_key.raw).hex(),
            "vkey": witness_vkey(WITNESS_NAME, witness.public_key),
            "tag": witness_key_tag(WITNESS_NAME),
        },
        "timestamp": WITNESS_TIME,
        "cosignature_message": cosignature_message(text, WITNESS_TIME).hex(),
        "cosignature_line": line.hex(),
        "cosigned_note": (note + line).hex(),
        "tree_size_2_root": tree_root(leaves[:2]).hex(),
        "add_checkpoint_from_2": AddCheckpoint(2, proof, note).encode().hex(),
    }


def build_run_key_vectors(signer: Ed25519Signer, request_bytes: bytes) -> dict[str, Any]:
    """A version 2 genesis (seq 0) and run key entry (seq 1) signed by ``signer``, then the request's three
    records (seq 2-4) signed by the run key it certifies."""
    run_key = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(RUN_KEY_SEED))
    payloads = log_payloads(ExportLogsServiceRequest.FromString(request_bytes))
    genesis = genesis_payload(signer.public_key, writer=WRITER, reason=REASON, archive_id=SENDER_ARCHIVE_ID)
    first = chain_entries(
        ChainHead.new(CHAIN_ID), EntryKind.GENESIS, [genesis], signer.key_id, GENESIS_SEALED, SENDER_FORMAT_VERSION
    )
    certificate = run_key_payload(
        chain_id=CHAIN_ID, sequence=1, certifier=signer, run_key=run_key, reason=RUN_KEY_REASON
    )
    second = chain_entries(
        first.head, EntryKind.RUN_KEY, [certificate], signer.key_id, RUN_KEY_SEALED, SENDER_FORMAT_VERSION
    )
    third = chain_entries(
        second.head, EntryKind.LOG_RECORD, payloads, run_key.key_id, RECORDS_SEALED, SENDER_FORMAT_VERSION
    )
    entries = first.entries + second.entries + third.entries
    hashes = first.hashes + second.hashes + third.hashes
    signatures = sign_entry_hashes(signer, hashes[:2]) + sign_entry_hashes(run_key, hashes[2:])
    all_payloads = [genesis, certificate, *payloads]
    kinds = [EntryKind.GENESIS, EntryKind.RUN_KEY] + [EntryKind.LOG_RECORD] * len(payloads)
    times = [GENESIS_SEALED, RUN_KEY_SEALED] + [RECORDS_SEALED] * len(payloads)
    message = run_key_message(CHAIN_ID, 1, signer.key_id)
    return {
        "proof_of_entry_3": _run_key_proof(signer, entries, signatures).hex(),
        "format_version": SENDER_FORMAT_VERSION,
        "archive_id": SENDER_ARCHIVE_ID,
        "run_key": {
            "seed": RUN_KEY_SEED.hex(),
            "public_key": run_key.public_key.raw.hex(),
            "key_id": run_key.key_id.hex(),
            "certified_at_sequence": 1,
            "reason": RUN_KEY_REASON,
            "message": message.hex(),
            "signature": run_key.sign(message).hex(),
        },
        "entries": [
            {
                "sequence": sequence,
                "kind": int(kinds[sequence]),
                "sealed_unix_nano": times[sequence],
                "payload": all_payloads[sequence].hex(),
                "entry": entries[sequence].hex(),
                "entry_hash": hashes[sequence].hex(),
                "signature": signatures[sequence].hex(),
            }
            for sequence in range(len(entries))
        ],
    }


def _run_key_proof(signer: Ed25519Signer, entries: list[bytes], signatures: list[bytes]) -> bytes:
    """The proof file (FORMAT.md 16.7) of entry 3, signed by the run key, against a note over all five
    entries: it carries the run key entry (seq 1) with its own inclusion path."""
    from collector_ext.prove.proof_file import Certification, ProofFile, RecordProof, encode_proof
    from collector_ext.seal.note import chain_origin

    leaves = [leaf_hash(entry) for entry in entries]
    reader = list_reader(leaves)
    origin = chain_origin(SENDER_ARCHIVE_ID, CHAIN_ID)
    note = sign_note(checkpoint_text(origin, len(leaves), tree_root(leaves)), origin, signer)
    certification = Certification(1, entries[1], signatures[1], tuple(inclusion_path(1, len(leaves), reader)))
    record = RecordProof(3, entries[3], signatures[3], tuple(inclusion_path(3, len(leaves), reader)), certification)
    return encode_proof(ProofFile((record,), note))


def build_sender_vectors(signer: Ed25519Signer, request_bytes: bytes) -> dict[str, Any]:
    """The three records of the request sealed with ``SENDER`` after a version 2 genesis (seq 0)."""
    key_id = signer.key_id
    payloads = log_payloads(ExportLogsServiceRequest.FromString(request_bytes), SENDER)
    genesis = genesis_payload(signer.public_key, writer=WRITER, reason=REASON, archive_id=SENDER_ARCHIVE_ID)
    first = chain_entries(
        ChainHead.new(CHAIN_ID), EntryKind.GENESIS, [genesis], key_id, GENESIS_SEALED, SENDER_FORMAT_VERSION
    )
    second = chain_entries(first.head, EntryKind.LOG_RECORD, payloads, key_id, RECORDS_SEALED, SENDER_FORMAT_VERSION)
    entries = first.entries + second.entries
    hashes = first.hashes + second.hashes
    signatures = sign_entry_hashes(signer, hashes)
    all_payloads = [genesis, *payloads]
    return {
        "format_version": SENDER_FORMAT_VERSION,
        "archive_id": SENDER_ARCHIVE_ID,
        "sender": {
            "peer": SENDER.peer,
            "token_name": SENDER.token_name,
            "certificate_subject": SENDER.certificate_subject,
            "certificate_sha256": SENDER.certificate_sha256.hex(),
            "encoding": SENDER.encode().hex(),
        },
        "entries": [
            {
                "sequence": sequence,
                "kind": int(EntryKind.GENESIS if sequence == 0 else EntryKind.LOG_RECORD),
                "sealed_unix_nano": GENESIS_SEALED if sequence == 0 else RECORDS_SEALED,
                "payload": all_payloads[sequence].hex(),
                "entry": entries[sequence].hex(),
                "entry_hash": hashes[sequence].hex(),
                "signature": signatures[sequence].hex(),
            }
            for sequence in range(len(entries))
        ],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if vectors.json differs instead of writing it")
    args = parser.parse_args(argv)
    text = render(build_vectors())
    if args.check:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else None
        if current != text:
            print(f"{VECTORS_PATH} differs from what the code produces; run {Path(__file__).name} to rewrite it")
            return 1
        print(f"{VECTORS_PATH} is up to date")
        return 0
    VECTORS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
