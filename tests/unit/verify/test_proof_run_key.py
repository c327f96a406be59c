"""Proofs of records signed by a run key (FORMAT.md 7.7, 10.3, 16.7, 16.8): the proof carries the run
key entry that certifies the record's key, and verify-proof, given only the chain's key, accepts it
exactly when that certification is the chain's own, sound, and opens the record's run."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.prove.build import build_proof
from collector_ext.prove.proof_file import (
    ProofFile,
    RecordProof,
    check_proof,
    encode_proof,
    parse_proof,
    verify_proof,
)
from collector_ext.seal.entry import EntryKind, decode_entry_header
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.spool import Spool
from tests.fakes import InMemoryArchive

Chains = tuple[InMemoryArchive, bytes, InMemoryArchive, bytes, Ed25519Signer]


def _settings() -> PipelineSettings:
    return PipelineSettings(
        signing_workers="threads", signing_worker_count=1, max_linger=0.001, checkpoint_min_spacing=0, ack_timeout=5
    )


async def _run(signer: Ed25519Signer, store: InMemoryArchive, spool: Path, batches: list[list[bytes]]) -> bytes:
    pipeline = SealingPipeline(
        signer, store, _settings(), spool=Spool(spool), writer_id="pod-a", archive_id="s3://b/p", run_key=True
    )
    await pipeline.start()
    for batch in batches:
        await pipeline.submit(batch)
    await pipeline.close(drain_timeout=5)
    assert pipeline._spool is not None
    if pipeline.clean_shutdown:
        pipeline._spool.mark_clean_shutdown()
    pipeline._spool.close()
    return pipeline.chain_id


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Chains:
    """Chain A with two runs (genesis, run key, 20 records; restart, run key, 20 records) and chain B,
    another chain of the same chain key."""
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    store_a, store_b = InMemoryArchive(), InMemoryArchive()
    spool_a, spool_b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    chain_a = asyncio.run(_run(signer, store_a, spool_a, [[b"first run %d" % i for i in range(20)]]))
    assert asyncio.run(_run(signer, store_a, spool_a, [[b"second run %d" % i for i in range(20)]])) == chain_a
    chain_b = asyncio.run(_run(signer, store_b, spool_b, [[b"other chain %d" % i for i in range(5)]]))
    return store_a, chain_a, store_b, chain_b, signer


def _built(store: InMemoryArchive, chain: bytes, first: int, last: int) -> ProofFile:
    return asyncio.run(build_proof(store, chain, first, last)).proof


def _kinds(proof: ProofFile) -> list[int]:
    return [decode_entry_header(r.entry).kind for r in proof.records]


def _run_records(chains: Chains) -> tuple[RecordProof, RecordProof]:
    """A record of the first run and one of the second run of chain A, with their certifications."""
    store, chain, _, _, _ = chains
    whole = _built(store, chain, 0, 43)
    logs = [r for r in whole.records if decode_entry_header(r.entry).kind == EntryKind.LOG_RECORD]
    return logs[3], logs[-3]


def test_a_record_signed_by_a_run_key_is_proven_with_its_certification(chains: Chains) -> None:
    store, chain, _, _, signer = chains
    first, second = _run_records(chains)
    for record in (first, second):
        assert decode_entry_header(record.entry).key_id != signer.key_id  # a run key signed it
        assert record.certification is not None and record.certification.index < record.index
        proof = _built(store, chain, record.index, record.index)
        data = encode_proof(proof)
        assert data.startswith(b"c2sp.org/tlog-proof@v1\nextra ")
        assert parse_proof(data) == proof
        report = verify_proof(data, signer.public_key)
        assert [r.index for r in report.records] == [record.index]
    assert first.certification is not None and second.certification is not None
    assert first.certification.index < second.certification.index  # each run has its own
    # A proof of the whole chain: entries signed by the chain key carry no certification.
    whole = _built(store, chain, 0, 43)
    assert verify_proof(encode_proof(whole), signer.public_key).ok
    for record, kind in zip(whole.records, _kinds(whole), strict=True):
        assert (record.certification is not None) == (kind == EntryKind.LOG_RECORD)


def _check(record: RecordProof, store: InMemoryArchive, chain: bytes, signer: Ed25519Signer) -> tuple[str, str]:
    note = _built(store, chain, record.index, record.index).note
    report = check_proof(encode_proof(ProofFile((record,), note)), signer.public_key)
    assert not report.ok
    return report.problems[0].check, report.problems[0].message


def test_a_run_key_record_without_a_sound_certification_is_refused(chains: Chains) -> None:
    store, chain, store_b, chain_b, signer = chains
    first, second = _run_records(chains)
    assert first.certification is not None and second.certification is not None
    # No certification: the record's key id is not the pinned key's.
    check, message = _check(dataclasses.replace(first, certification=None), store, chain, signer)
    assert check == "record signature" and "certification" in message
    # A later run's certification: the record is not inside that run (it comes before it).
    check, message = _check(dataclasses.replace(first, certification=second.certification), store, chain, signer)
    assert check == "run key" and "after the run key entry" in message
    # An earlier run's certification: its run key is not the one that signed the record.
    check, message = _check(dataclasses.replace(second, certification=first.certification), store, chain, signer)
    assert check == "record signature" and "key id" in message
    # A run key certified in another chain (same chain key): refused as another chain's.
    other = next(r for r in _built(store_b, chain_b, 0, 6).records if r.certification is not None)
    check, message = _check(dataclasses.replace(first, certification=other.certification), store, chain, signer)
    assert check == "run key" and "chain" in message
    # A certification whose inclusion path is not the tree's.
    bad_path = dataclasses.replace(first.certification, path=(bytes(32), *first.certification.path[1:]))
    check, message = _check(dataclasses.replace(first, certification=bad_path), store, chain, signer)
    assert check == "run key" and "inclusion" in message
    # A certification under another key: the run key signs a record the pinned key never vouched for.
    other_signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    note = _built(store, chain, first.index, first.index).note
    assert check_proof(encode_proof(ProofFile((first,), note)), other_signer.public_key).problems[0].check == (
        "checkpoint signature"
    )


@pytest.mark.parametrize("cut", [1, 32, 33, 100])
def test_a_truncated_certification_is_a_format_error(chains: Chains, cut: int) -> None:
    store, chain, _, _, signer = chains
    first, _ = _run_records(chains)
    lines = encode_proof(_built(store, chain, first.index, first.index)).split(b"\n")
    blob = base64.b64decode(lines[1][len(b"extra ") :])
    lines[1] = b"extra " + base64.b64encode(blob[:-cut])
    report = check_proof(b"\n".join(lines), signer.public_key)
    assert [p.check for p in report.problems] == ["format"]
    assert "certification" in report.problems[0].message


def test_the_golden_proof_of_a_run_key_record() -> None:
    """tests/golden/vectors.json, run_key.proof_of_entry_3, read as FORMAT.md 16.7 lays it out."""
    vectors = json.loads((Path(__file__).resolve().parents[2] / "golden" / "vectors.json").read_text())
    part = vectors["run_key"]
    data = bytes.fromhex(part["proof_of_entry_3"])
    lines = data.split(b"\n\n", 1)[0].split(b"\n")
    assert lines[0] == b"c2sp.org/tlog-proof@v1" and lines[2] == b"index 3"
    extra = base64.b64decode(lines[1][len(b"extra ") :])
    prefix = b"collector-ext/v2/proof-run-record\x00"
    entry, certifying = (bytes.fromhex(part["entries"][i]["entry"]) for i in (3, 1))
    at = len(prefix) + 4 + len(entry) + 64
    assert extra[: len(prefix)] == prefix and extra[len(prefix) + 4 : at - 64] == entry
    assert extra[at : at + 8] == (1).to_bytes(8, "big")
    assert extra[at + 12 : at + 12 + len(certifying)] == certifying
    key = PublicKey.from_raw(bytes.fromhex(vectors["key"]["public_key"]))
    report = verify_proof(data, key)
    assert report.records[0].certification is not None and report.records[0].certification.index == 1
    # The same bytes with the certification's sequence number changed fail, naming the run key check.
    forged = bytearray(extra)
    forged[at + 7] = 2
    tampered = data.replace(lines[1], b"extra " + base64.b64encode(bytes(forged)))
    assert check_proof(tampered, key).problems[0].check == "run key"


async def _run_many(signer: Ed25519Signer, store: InMemoryArchive, spool: Path, batches: int) -> bytes:
    pipeline = SealingPipeline(
        signer, store, _settings(), spool=Spool(spool), writer_id="pod-a", archive_id="s3://b/p", run_key=True
    )
    await pipeline.start()
    for i in range(batches):
        await pipeline.submit([b"batch %d" % i] * 10)
    await pipeline.close(drain_timeout=5)
    assert pipeline._spool is not None
    pipeline._spool.mark_clean_shutdown()
    pipeline._spool.close()
    return pipeline.chain_id


def test_the_run_s_opening_is_found_without_reading_the_whole_run(tmp_path: Path) -> None:
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    store = InMemoryArchive()
    chain = asyncio.run(_run_many(signer, store, tmp_path, 150))
    asyncio.run(_run_many(signer, store, tmp_path, 150))
    segments = [k for k in store.objects if "/segments/" in k]
    assert len(segments) > 250  # a segment per batch of 10, or close to it
    size = asyncio.run(build_proof(store, chain, 0, 0)).tree.size
    # Records far from their run's start: their tiles' leaves (256 records) do not reach back to it.
    for sequence in (size - 2, size // 2 - 4):
        built = asyncio.run(build_proof(store, chain, sequence, sequence))
        record = built.proof.records[0]
        assert record.certification is not None
        assert verify_proof(encode_proof(built.proof), signer.public_key).ok
        # Besides the segments of its tiles' leaves, about log2(150) segments, not the 100 or more
        # between the leaves and the run's start.
        assert 0 < built.run_segments_read <= 12, (sequence, built.run_segments_read)


def test_a_missing_checkpoint_object_only_costs_reads(chains: Chains) -> None:
    """The checkpoint object tells prove which records need no certification; without it the proof is
    still built (verify-proof never needed it)."""
    store, chain, _, _, signer = chains
    bare = InMemoryArchive()
    bare.objects.update({k: v for k, v in store.objects.items() if "/checkpoints/" not in k})
    whole = _built(bare, chain, 0, 43)
    assert whole == _built(store, chain, 0, 43)
    assert verify_proof(encode_proof(whole), signer.public_key).ok
