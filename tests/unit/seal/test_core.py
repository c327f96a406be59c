"""Unit tests of the pure sealing core: entries, chain, signatures, segments, checkpoints, layout."""

from __future__ import annotations

import dataclasses

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.errors import KeyFileError, MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import ChainHead, chain_entries, sign_entry_hashes
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, decode_checkpoint, sign_checkpoint
from collector_ext.seal.entry import (
    CHECKPOINT_SIGNATURE_PREFIX,
    ENTRY_HEADER_SIZE,
    ZERO_HASH,
    EntryKind,
    decode_entry_header,
    entry_hash,
    entry_payload,
    record_signature_message,
)
from collector_ext.seal.keys import Ed25519Signer, generate_key_pair, load_private_key_pem, load_public_key_pem
from collector_ext.seal.layout import checkpoint_key, parse_checkpoint_key, parse_segment_key, segment_key
from collector_ext.seal.payload import count_log_records, log_payloads
from collector_ext.seal.segment import decode_segment, encode_segment

CHAIN = bytes(range(16))


def _request() -> ExportLogsServiceRequest:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="svc"))])
    scope = InstrumentationScope(name="audit", version="1")
    records = [
        LogRecord(time_unix_nano=10, body=AnyValue(string_value="a"), event_name="user.action"),
        LogRecord(time_unix_nano=11, body=AnyValue(int_value=7), trace_id=b"\x01" * 16, span_id=b"\x02" * 8),
    ]
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource,
                schema_url="https://opentelemetry.io/schemas/1.30.0",
                scope_logs=[ScopeLogs(scope=scope, schema_url="s", log_records=records)],
            ),
            ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(severity_number=9)])]),
        ]
    )


def test_payload_covers_resource_scope_and_record_completely() -> None:
    request = _request()
    payloads = log_payloads(request)
    assert len(payloads) == count_log_records(request) == 3
    decoded = archive_pb2.LogPayload.FromString(payloads[1])
    assert Resource.FromString(decoded.resource) == request.resource_logs[0].resource
    assert decoded.resource_schema_url == "https://opentelemetry.io/schemas/1.30.0"
    assert InstrumentationScope.FromString(decoded.scope) == request.resource_logs[0].scope_logs[0].scope
    assert decoded.scope_schema_url == "s"
    assert LogRecord.FromString(decoded.log_record) == request.resource_logs[0].scope_logs[0].log_records[1]
    # The hand-written encoding is exactly what protobuf itself writes for the same message.
    assert payloads[1] == decoded.SerializeToString(deterministic=True)


def test_payload_of_an_empty_record_still_carries_the_record_field() -> None:
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord()])])])
    assert log_payloads(request) == [b"\x2a\x00"]


def test_payload_keeps_unknown_fields_of_a_record() -> None:
    record = LogRecord(body=AnyValue(string_value="x"))
    raw = record.SerializeToString() + b"\xf8\x07\x2a"  # field 127, varint 42: unknown to this schema
    request = ExportLogsServiceRequest.FromString(
        b"\x0a" + bytes([len(raw) + 4]) + b"\x12" + bytes([len(raw) + 2]) + b"\x12" + bytes([len(raw)]) + raw
    )
    (payload,) = log_payloads(request)
    assert archive_pb2.LogPayload.FromString(payload).log_record.endswith(b"\xf8\x07\x2a")


def test_chain_links_sequence_and_hashes(signer: Ed25519Signer) -> None:
    head = ChainHead.new(CHAIN)
    first = chain_entries(head, EntryKind.LOG_RECORD, [b"p0", b"p1"], signer.key_id, 123)
    second = chain_entries(first.head, EntryKind.LOG_RECORD, [b"p2"], signer.key_id, 124)
    entries = first.entries + second.entries
    headers = [decode_entry_header(e) for e in entries]
    assert [h.sequence for h in headers] == [0, 1, 2]
    assert headers[0].previous_hash == ZERO_HASH
    assert headers[1].previous_hash == entry_hash(entries[0])
    assert headers[2].previous_hash == entry_hash(entries[1])
    assert [entry_payload(e) for e in entries] == [b"p0", b"p1", b"p2"]
    assert all(h.chain_id == CHAIN and h.key_id == signer.key_id for h in headers)
    assert second.head == ChainHead(CHAIN, 3, entry_hash(entries[2]))
    assert len(entries[0]) == ENTRY_HEADER_SIZE + 2


def test_entry_hash_covers_every_header_field(signer: Ed25519Signer) -> None:
    (entry,) = chain_entries(ChainHead.new(CHAIN), EntryKind.LOG_RECORD, [b"x"], signer.key_id, 5).entries
    original = entry_hash(entry)
    for offset in range(len(entry)):
        changed = bytearray(entry)
        changed[offset] ^= 0x01
        assert entry_hash(bytes(changed)) != original, offset


def test_record_signature_is_domain_separated_from_checkpoint_signature(signer: Ed25519Signer) -> None:
    batch = chain_entries(ChainHead.new(CHAIN), EntryKind.LOG_RECORD, [b"x"], signer.key_id, 5)
    (signature,) = sign_entry_hashes(signer, batch.hashes)
    key = signer.public_key
    assert key.is_valid_signature(signature, record_signature_message(batch.hashes[0]))
    assert not key.is_valid_signature(signature, CHECKPOINT_SIGNATURE_PREFIX + batch.hashes[0])
    assert not key.is_valid_signature(signature, batch.hashes[0])


def test_decode_entry_header_rejects_short_and_unknown_versions() -> None:
    with pytest.raises(MalformedObjectError, match="shorter"):
        decode_entry_header(b"\x00\x01")
    with pytest.raises(MalformedObjectError, match="version 3"):
        decode_entry_header(b"\x00\x03" + bytes(ENTRY_HEADER_SIZE))


def test_segment_round_trip(signer: Ed25519Signer) -> None:
    batch = chain_entries(ChainHead.new(CHAIN), EntryKind.LOG_RECORD, [b"a" * 300, b"b"], signer.key_id, 5)
    signatures = sign_entry_hashes(signer, batch.hashes)
    data = encode_segment(
        chain_id=CHAIN, first_sequence=0, created_unix_nano=9, entries=batch.entries, signatures=signatures
    )
    segment = decode_segment(data)
    assert (segment.chain_id, segment.first_sequence, segment.record_count, segment.appended) == (CHAIN, 0, 2, 0)
    assert [(r.entry, r.signature) for r in segment.records] == list(zip(batch.entries, signatures, strict=True))
    assert decode_segment(data + b"tail").appended == 4
    with pytest.raises(MalformedObjectError):
        decode_segment(data[:-1])
    with pytest.raises(MalformedObjectError):
        decode_segment(b"CXCKP\x00v1" + data[8:])


def test_segment_encoding_refuses_wrong_signature_sizes() -> None:
    with pytest.raises(ValueError, match="64"):
        encode_segment(chain_id=CHAIN, first_sequence=0, created_unix_nano=0, entries=[b"e"], signatures=[b"short"])


def test_checkpoint_round_trip_and_signature(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    checkpoint = Checkpoint(
        chain_id=CHAIN,
        checkpoint_number=3,
        previous_checkpoint_sha256=b"\x01" * 32,
        last_sequence=41,
        head_sha256=b"\x02" * 32,
        time_unix_nano=77,
        key_id=signer.key_id,
        segments=(SegmentRef("k/segments/x.cxseg", 30, 41, b"\x03" * 32, 999),),
    )
    data, checkpoint_hash = sign_checkpoint(checkpoint, signer)
    decoded = decode_checkpoint(data)
    assert decoded.checkpoint == checkpoint
    assert decoded.sha256 == checkpoint_hash
    assert decoded.is_signed_by(signer.public_key)
    assert not decoded.is_signed_by(other_signer.public_key)
    tampered = decode_checkpoint(sign_checkpoint(dataclasses.replace(checkpoint, last_sequence=40), signer)[0])
    assert not signer.public_key.is_valid_signature(decoded.signature, CHECKPOINT_SIGNATURE_PREFIX + tampered.body)


def test_layout_keys_round_trip() -> None:
    key = segment_key("prod/", CHAIN, 5, 17, 1_790_000_000 * 10**9)
    assert key == f"prod/{CHAIN.hex()}/segments/2026/09/21/{5:020d}-{17:020d}.cxseg"
    parsed = parse_segment_key(key)
    assert parsed is not None
    assert (parsed.chain_id_hex, parsed.first_sequence, parsed.last_sequence) == (CHAIN.hex(), 5, 17)
    ckey = checkpoint_key("", CHAIN, 2, 17)
    parsed_checkpoint = parse_checkpoint_key(ckey)
    assert parsed_checkpoint is not None
    assert (parsed_checkpoint.checkpoint_number, parsed_checkpoint.last_sequence) == (2, 17)
    assert parse_segment_key("prod/readme.txt") is None
    assert parse_checkpoint_key(key) is None


def test_keys_round_trip_through_pem_and_name_their_source_on_error() -> None:
    pair = generate_key_pair()
    signer = load_private_key_pem(pair.private_pem, "signing_key (a.key)")
    public = load_public_key_pem(pair.public_pem, "b.pub")
    assert signer.key_id == public.key_id == pair.key_id
    assert len(pair.key_id) == 8
    with pytest.raises(KeyFileError, match=r"a\.key") as error:
        load_private_key_pem(b"not a key", "a.key")
    assert "PRIVATE" not in str(error.value)
    with pytest.raises(KeyFileError, match=r"b\.pub"):
        load_public_key_pem(pair.private_pem, "b.pub")
    assert "PRIVATE" not in repr(signer)


def test_object_keys_take_ascii_digits_only_and_no_trailing_newline() -> None:
    from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key

    chain = "0" * 32
    segment = f"{chain}/segments/2026/09/21/{0:020d}-{9:020d}.cxseg"
    checkpoint = f"{chain}/checkpoints/{0:012d}-{9:020d}.cxckpt"
    assert parse_segment_key(segment) is not None
    assert parse_checkpoint_key(checkpoint) is not None
    assert parse_segment_key(segment + "\n") is None
    assert parse_checkpoint_key(checkpoint + "\n") is None
    arabic_zero = "\u0660"
    assert parse_segment_key(segment.replace("2026", arabic_zero * 4)) is None
    assert parse_checkpoint_key(checkpoint.replace("0" * 12, arabic_zero * 12, 1)) is None
