"""Run key mode (FORMAT.md 7.7, 10.3) against an in-memory archive: the chain's key (a token's, here a
file key stands in for it) certifies a fresh key per run, which signs the log records; restarts certify
a new one; the verifier, given only the chain's key, accepts exactly that."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.pb import archive_pb2
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.recovery import find_predecessor
from collector_ext.seal.chain import run_key_payload, sign_entry_hashes
from collector_ext.seal.checkpoint import decode_checkpoint
from collector_ext.seal.entry import (
    EntryKind,
    decode_entry_header,
    entry_hash,
    entry_payload,
    run_key_message,
)
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key
from collector_ext.seal.segment import decode_segment, encode_segment
from collector_ext.spool import Spool
from collector_ext.token_signer import ed25519_point
from collector_ext.verify.findings import FindingKind, Severity
from collector_ext.verify.run import ArchiveCheck, check_archive_with_state
from collector_ext.verify.state import VerifierState, dump_state, load_state
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive


def _settings() -> PipelineSettings:
    return PipelineSettings(
        signing_workers="threads", signing_worker_count=1, max_linger=0.001, checkpoint_min_spacing=0, ack_timeout=5
    )


def _pipeline(signer: Ed25519Signer, store: InMemoryArchive, spool: Path | None = None) -> SealingPipeline:
    return SealingPipeline(
        signer,
        store,
        _settings(),
        spool=Spool(spool) if spool is not None else None,
        writer_id="pod-a",
        run_key=True,
    )


async def _run(pipeline: SealingPipeline, batches: list[list[bytes]]) -> None:
    await pipeline.start()
    for batch in batches:
        await pipeline.submit(batch)
    await pipeline.close(drain_timeout=5)
    if pipeline._spool is not None:
        if pipeline.clean_shutdown:
            pipeline._spool.mark_clean_shutdown()
        pipeline._spool.close()


def _entries(store: InMemoryArchive) -> list[tuple[int, int, bytes, bytes]]:
    """(sequence, kind, key id, payload) of every archived entry, in key order."""
    found = []
    for key in sorted(store.objects):
        if parse_segment_key(key) is None:
            continue
        for record in decode_segment(store.objects[key]).records:
            header = decode_entry_header(record.entry)
            found.append((header.sequence, header.kind, header.key_id, entry_payload(record.entry)))
    return found


def _checkpointed_up_to(store: InMemoryArchive) -> int:
    return max(
        (
            decode_checkpoint(data).checkpoint.last_sequence
            for key, data in store.objects.items()
            if parse_checkpoint_key(key)
        ),
        default=-1,
    )


def _checkpoint_key_ids(store: InMemoryArchive) -> set[bytes]:
    return {
        decode_checkpoint(data).checkpoint.key_id
        for key, data in store.objects.items()
        if parse_checkpoint_key(key) is not None
    }


def test_records_are_signed_by_a_run_key_the_chain_key_certifies(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store), [[b"a"] * 5, [b"b"] * 7]))

    entries = _entries(store)
    assert [kind for _, kind, _, _ in entries[:2]] == [EntryKind.GENESIS, EntryKind.RUN_KEY]
    assert {key_id for _, kind, key_id, _ in entries if kind != EntryKind.LOG_RECORD} == {signer.key_id}
    certified = archive_pb2.RunKeyPayload.FromString(entries[1][3])
    run_key = PublicKey.from_raw(certified.run_public_key)
    assert run_key.key_id != signer.key_id
    assert run_key.is_valid_signature(
        certified.run_key_signature, run_key_message(store_chain(store), 1, signer.key_id)
    )
    assert {key_id for _, kind, key_id, _ in entries if kind == EntryKind.LOG_RECORD} == {run_key.key_id}
    # Checkpoints stay with the chain's key.
    assert _checkpoint_key_ids(store) == {signer.key_id}
    for all_signatures in (False, True):
        report = verify_objects(store.objects, [signer.public_key], all_signatures=all_signatures)
        assert report.clean, report.findings
        assert [f.kind for f in report.findings] == [FindingKind.RUN_KEY]
        assert report.records_checked == 14


def store_chain(store: InMemoryArchive) -> bytes:
    (chain_id,) = {p.chain_id_hex for key in store.objects if (p := parse_segment_key(key)) is not None}
    return bytes.fromhex(chain_id)


def test_each_restart_certifies_a_new_run_key(signer: Ed25519Signer, tmp_path: Path) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"a"] * 3]))
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"b"] * 3]))
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"c"] * 3]))

    entries = _entries(store)
    assert [s for s, *_ in entries] == list(range(len(entries)))
    kinds = [kind for _, kind, _, _ in entries]
    assert kinds.count(EntryKind.RESTART) == 2
    run_keys = [
        archive_pb2.RunKeyPayload.FromString(p).run_public_key for _, k, _, p in entries if k == EntryKind.RUN_KEY
    ]
    assert len(set(run_keys)) == 3
    # Every restart mark is followed at once by its run's certification.
    for index, kind in enumerate(kinds):
        if kind == EntryKind.RESTART:
            assert kinds[index + 1] == EntryKind.RUN_KEY
    report = verify_objects(store.objects, [signer.public_key], all_signatures=True)
    assert report.clean, report.findings
    assert sorted(f.kind for f in report.findings) == sorted([FindingKind.RUN_KEY] * 3 + [FindingKind.RESTART] * 2)


def test_a_spool_of_run_key_records_continues_after_a_crash(signer: Ed25519Signer, tmp_path: Path) -> None:
    """The spool's newest entry is signed by the dead run's key: the chain is still recognised as the
    chain key's (by its newest checkpoint) and continued, not refused."""
    store = InMemoryArchive()

    async def crashed_run() -> None:
        pipeline = _pipeline(signer, store, tmp_path)
        await pipeline.start()
        await pipeline.submit([b"first"] * 4)
        for _ in range(200):  # wait for a checkpoint, which trims the spool
            if _checkpoint_key_ids(store):
                break
            await asyncio.sleep(0.01)
        await pipeline.submit([b"acked, not archived"] * 2)
        # A kill: nothing is closed. (The loops also watch _stopping: on Python 3.11 a cancellation can
        # be lost inside asyncio.wait_for.)
        pipeline._stopping.set()
        for task in pipeline._tasks:
            task.cancel()
        await asyncio.gather(*pipeline._tasks, return_exceptions=True)
        pipeline._signing.close()
        assert pipeline._spool is not None
        pipeline._spool.close()

    asyncio.run(crashed_run())
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"after"]]))

    payloads = [p for _, kind, _, p in _entries(store) if kind == EntryKind.LOG_RECORD]
    assert payloads.count(b"after") == 1 and payloads.count(b"first") == 4
    report = verify_objects(store.objects, [signer.public_key], all_signatures=True)
    assert report.clean, report.findings


def test_a_run_key_entry_whose_run_key_did_not_sign_is_malformed(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store), [[b"a"] * 3]))
    first_key = min(k for k in store.objects if parse_segment_key(k) is not None)
    segment = decode_segment(store.objects[first_key])
    entries = [r.entry for r in segment.records]
    # Replace the certification by one whose proof of possession is made for another sequence number.
    run_key = Ed25519Signer(Ed25519PrivateKey.generate())
    forged = run_key_payload(chain_id=segment.chain_id, sequence=7, certifier=signer, run_key=run_key, reason="x")
    entries[1] = entries[1][:76] + forged
    store.objects[first_key] = encode_segment(
        chain_id=segment.chain_id,
        first_sequence=segment.first_sequence,
        created_unix_nano=segment.created_unix_nano,
        entries=entries,
        signatures=sign_entry_hashes(signer, [entry_hash(e) for e in entries]),
    )
    report = verify_objects(store.objects, [signer.public_key], all_signatures=True)
    kinds = {f.kind for f in report.findings if f.severity is Severity.TAMPERING}
    assert FindingKind.MALFORMED_OBJECT in kinds
    assert not report.clean


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"\x04\x20" + bytes(range(32)), bytes(range(32))), (bytes(range(32)), bytes(range(32)))],
)
def test_ec_point_of_an_ed25519_key_is_read_in_both_forms(value: bytes, expected: bytes) -> None:
    assert ed25519_point(value) == expected


@pytest.mark.parametrize("value", [b"", b"\x04\x21" + bytes(33), bytes(31), b"\x03\x20" + bytes(32)])
def test_ec_point_of_another_size_or_form_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        ed25519_point(value)


def test_verify_with_state_resumes_inside_a_run(signer: Ed25519Signer) -> None:
    """--state resumes after the newest checkpoint, in the middle of a run: the state remembers the run
    key, so the run's later records verify (FORMAT.md 13.9)."""
    store = InMemoryArchive()

    async def verify(state: VerifierState | None) -> ArchiveCheck:
        reader = InMemoryArchive()
        reader.objects = dict(store.objects)
        return await check_archive_with_state(reader, {signer.key_id: signer.public_key}, state)

    async def run() -> tuple[ArchiveCheck, ArchiveCheck]:
        pipeline = _pipeline(signer, store)
        await pipeline.start()
        await pipeline.submit([b"before"] * 5)
        for _ in range(500):  # until a checkpoint covers them (the pipeline writes one after uploads)
            if _checkpointed_up_to(store) >= pipeline.next_sequence - 1:
                break
            await asyncio.sleep(0.01)
        first = await verify(None)
        await pipeline.submit([b"after"] * 5)
        await pipeline.close(drain_timeout=5)
        saved = load_state(dump_state(first.state), "state.json", first.state.archive)
        return first, await verify(saved)

    first, second = asyncio.run(run())
    assert first.report.clean, first.report.findings
    (remembered,) = first.state.chains.values()
    assert remembered.checkpoint is not None and len(bytes.fromhex(remembered.checkpoint["run_public_key"])) == 32
    assert second.report.clean, second.report.findings
    assert second.report.records_checked == 5


def test_a_lost_writer_finds_the_head_its_run_key_signed(signer: Ed25519Signer) -> None:
    """After a crash without local state, the chain's last records (signed by the dead run's run key,
    past the newest checkpoint) still give the superseded chain's head: the run key's certification is
    found and checked (recovery), so the successor's genesis names the true head (FORMAT.md 7.4)."""
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store), [[b"a"] * 3, [b"b"] * 3]))
    # As if the writer died before its last checkpoints: keep only checkpoint 0 (the genesis segment).
    for key in [k for k in store.objects if (parsed := parse_checkpoint_key(k)) and parsed.checkpoint_number > 0]:
        del store.objects[key]
    last_key = max((k for k in store.objects if parse_segment_key(k)), key=lambda k: parse_segment_key(k).last_sequence)  # type: ignore[union-attr]
    last_entry = decode_segment(store.objects[last_key]).records[-1].entry

    found = asyncio.run(find_predecessor(store, "pod-a", [signer.public_key]))
    assert found is not None
    assert found.last_sequence == decode_entry_header(last_entry).sequence > found.covered_until
    assert found.head_sha256 == entry_hash(last_entry)
