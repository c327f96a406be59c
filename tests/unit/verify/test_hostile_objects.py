"""Objects built to exhaust the verifier: many tiny fields cost a finding, not memory (FORMAT.md 4.1)."""

from __future__ import annotations

import tracemalloc

from collector_ext.pb import archive_pb2
from collector_ext.seal.framing import (
    CHECKPOINT_MAGIC,
    MAX_SEGMENT_RECORDS,
    MAX_SEGMENTS_PER_CHECKPOINT,
    SEGMENT_MAGIC,
    frame,
)
from collector_ext.seal.keys import Ed25519Signer
from tests.archive_builder import build_archive, verify_objects


def _peak_mib(run: object) -> float:
    tracemalloc.start()
    try:
        assert callable(run)
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_segment_of_too_many_tiny_records_is_malformed_and_cheap(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    key = archive.segment_keys[2]
    header = archive_pb2.SegmentHeader(format_version=2, chain_id=archive.chain_id, first_sequence=20, record_count=10)
    tiny = b"\x12\x00"  # an empty SealedRecord, over and over: 2 bytes each
    body = b"\x0a" + bytes([len(header.SerializeToString())]) + header.SerializeToString()
    archive.objects[key] = frame(SEGMENT_MAGIC, body + tiny * (MAX_SEGMENT_RECORDS * 8))
    reports = []
    peak = _peak_mib(lambda: reports.append(verify_objects(archive.objects, [signer.public_key])))
    (report,) = reports
    assert [(f.kind.value, f.object_key) for f in report.findings] == [("malformed-object", key)]
    assert f"more than {MAX_SEGMENT_RECORDS} records" in report.findings[0].message
    # Python objects for the records read up to the limit, not for the 2 million in the object.
    assert peak < 120, peak


def test_a_checkpoint_of_too_many_digests_is_malformed_before_it_is_parsed(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    key = archive.checkpoint_keys[2]
    body = archive_pb2.CheckpointBody(
        format_version=2, chain_id=archive.chain_id, checkpoint_number=2
    ).SerializeToString()
    body += b"\x4a\x00" * (MAX_SEGMENTS_PER_CHECKPOINT * 100)  # a million empty SegmentDigests
    signed = archive_pb2.SignedCheckpoint(body=body, signature=bytes(64)).SerializeToString()
    archive.objects[key] = frame(CHECKPOINT_MAGIC, signed)
    reports = []
    peak = _peak_mib(lambda: reports.append(verify_objects(archive.objects, [signer.public_key])))
    (report,) = reports
    malformed = [f for f in report.findings if f.kind.value == "malformed-object"]
    assert [(f.object_key, f.message) for f in malformed] == [
        (key, f"checkpoint lists more than {MAX_SEGMENTS_PER_CHECKPOINT} segments (FORMAT.md 4.1)")
    ]
    assert peak < 60, peak
