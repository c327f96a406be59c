"""The pipeline with a spool, against an in-memory archive: ack on fsync, restarts that continue the
chain, lost local state that supersedes it, a full spool and a full disk."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from collector_ext.errors import CapacityExceededError, ConfigurationError
from collector_ext.pb import archive_pb2
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.seal.entry import EntryKind, decode_entry_header, entry_payload
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_segment_key
from collector_ext.seal.segment import decode_segment
from collector_ext.spool import Spool
from collector_ext.verify.findings import Severity
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive
from tests.unit.test_pipeline import _settings as pipeline_settings


def _settings(**overrides: object) -> PipelineSettings:
    """The plain pipeline tests' settings, with signing on threads and a shorter ack timeout."""
    return pipeline_settings(**{"signing_workers": "threads", "ack_timeout": 2.0, **overrides})


def _entries(store: InMemoryArchive) -> list[tuple[bytes, int, int, bytes]]:
    """(chain id, sequence, kind, payload) of every archived entry, in key order."""
    found = []
    for key in sorted(store.objects):
        if parse_segment_key(key) is None:
            continue
        for record in decode_segment(store.objects[key]).records:
            header = decode_entry_header(record.entry)
            found.append((header.chain_id, header.sequence, header.kind, entry_payload(record.entry)))
    return found


def _pipeline(signer: Ed25519Signer, store: InMemoryArchive, directory: Path, **settings: object) -> SealingPipeline:
    return SealingPipeline(signer, store, _settings(**settings), spool=Spool(directory), writer_id="pod-a")


async def _run(pipeline: SealingPipeline, batches: list[list[bytes]], *, clean: bool = True) -> None:
    await pipeline.start()
    for batch in batches:
        await pipeline.submit(batch)
    if clean:
        await pipeline.close(drain_timeout=5)
        assert pipeline._spool is not None
        if pipeline.clean_shutdown:
            pipeline._spool.mark_clean_shutdown()
        pipeline._spool.close()


def test_ack_on_spool_while_the_archive_is_down_then_everything_is_archived(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = _pipeline(signer, store, tmp_path)
        await pipeline.start()
        store.fail_puts = 10**9
        await pipeline.submit([b"while-down-1", b"while-down-2"])  # acked: fsynced, not archived
        assert pipeline.pending_records >= 2  # (the genesis entry may be unarchived too)
        assert pipeline.ready  # the spool has room: an archive outage alone does not refuse
        store.fail_puts = 0
        await pipeline.close(drain_timeout=5)
        assert pipeline.pending_records == 0

    asyncio.run(run())
    assert [e[3] for e in _entries(store) if e[2] == EntryKind.LOG_RECORD] == [b"while-down-1", b"while-down-2"]
    assert verify_objects(store.objects, [signer.public_key]).clean


def test_restarts_continue_one_chain_with_signed_marks(signer: Ed25519Signer, tmp_path: Path) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"a"], [b"b"]]))
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"c"]]))

    entries = _entries(store)
    assert len({e[0] for e in entries}) == 1
    assert [e[1] for e in entries] == list(range(len(entries)))
    marks = [archive_pb2.RestartPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.RESTART]
    assert len(marks) == 1
    assert marks[0].previous_run_clean
    assert marks[0].writer_id == "pod-a"
    report = verify_objects(store.objects, [signer.public_key])
    assert report.clean, report.findings
    assert [f.kind for f in report.findings if f.severity is Severity.INFO].count("restart") == 1


def test_a_kill_loses_nothing_that_was_acknowledged(signer: Ed25519Signer, tmp_path: Path) -> None:
    """Acked while the archive is down, then the process 'dies' (no close): the next run uploads the
    spooled tail and continues the chain after a restart mark that says the run was not clean."""
    store = InMemoryArchive()

    async def first_run() -> None:
        pipeline = _pipeline(signer, store, tmp_path)
        await pipeline.start()
        store.fail_puts = 10**9
        await pipeline.submit([b"acked-1"])
        await pipeline.submit([b"acked-2"])
        # Simulated kill -9: drop everything without closing (release the lock as the OS would).
        for task in pipeline._tasks:
            task.cancel()
        await asyncio.gather(*pipeline._tasks, return_exceptions=True)
        assert pipeline._spool is not None
        pipeline._spool.close()

    asyncio.run(first_run())
    store.fail_puts = 0
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"after"]]))

    entries = _entries(store)
    payloads = [e[3] for e in entries if e[2] == EntryKind.LOG_RECORD]
    assert payloads == [b"acked-1", b"acked-2", b"after"]
    marks = [archive_pb2.RestartPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.RESTART]
    assert [m.previous_run_clean for m in marks] == [False]
    assert verify_objects(store.objects, [signer.public_key]).clean


def test_lost_local_state_starts_a_chain_that_names_the_one_it_supersedes(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path / "first"), [[b"a", b"b"]]))
    old_chain = _entries(store)[0][0]
    asyncio.run(_run(_pipeline(signer, store, tmp_path / "new-volume"), [[b"c"]]))

    geneses = [
        (e[0], archive_pb2.GenesisPayload.FromString(e[3])) for e in _entries(store) if e[2] == EntryKind.GENESIS
    ]
    assert len(geneses) == 2
    _new_chain, genesis = next(g for g in geneses if g[0] != old_chain)
    assert genesis.supersedes_chain_id == old_chain
    assert genesis.superseded_last_sequence == 2
    assert genesis.superseded_covered_until == 2
    # Version 2: the successor vouches for the old chain's head and newest checkpoint.
    old_head = [e for e in _entries(store) if e[0] == old_chain][-1]
    assert len(genesis.superseded_head_sha256) == 32
    assert len(genesis.superseded_checkpoint_sha256) == 32
    assert old_head[1] == 2
    assert "not found" in genesis.reason
    assert verify_objects(store.objects, [signer.public_key]).clean


def test_another_writer_id_is_never_superseded(signer: Ed25519Signer, tmp_path: Path) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path / "a"), [[b"a"]]))
    other = SealingPipeline(signer, store, _settings(), spool=Spool(tmp_path / "b"), writer_id="pod-b")
    asyncio.run(_run(other, [[b"b"]]))
    geneses = [archive_pb2.GenesisPayload.FromString(e[3]) for e in _entries(store) if e[2] == EntryKind.GENESIS]
    assert sorted(g.writer_id for g in geneses) == ["pod-a", "pod-b"]
    assert all(g.supersedes_chain_id == b"" for g in geneses)


def test_a_spool_signed_with_another_key_is_refused(
    signer: Ed25519Signer, other_signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"a"]]))
    pipeline = _pipeline(other_signer, store, tmp_path)
    with pytest.raises(ConfigurationError, match="signing_key"):
        asyncio.run(pipeline.start())


def test_a_spool_signed_with_a_retired_key_continues_after_a_signed_key_rotation(
    signer: Ed25519Signer, other_signer: Ed25519Signer, tmp_path: Path
) -> None:
    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"old-1"], [b"old-2"]]))
    rotated = SealingPipeline(
        other_signer, store, _settings(), spool=Spool(tmp_path), writer_id="pod-a", retired_signers=[signer]
    )
    asyncio.run(_run(rotated, [[b"new-1"]]))

    entries = _entries(store)
    assert len({e[0] for e in entries}) == 1  # one chain, continued
    kinds = [e[2] for e in entries]
    rotation_at = kinds.index(EntryKind.KEY_ROTATION)
    assert kinds[rotation_at - 1] == EntryKind.RESTART
    rotation = archive_pb2.KeyRotationPayload.FromString(entries[rotation_at][3])
    assert rotation.new_public_key == other_signer.public_key.raw
    # Records up to the rotation are signed by the retired key, everything after it by the new one.
    key_ids = []
    for key in sorted(store.objects):
        if parse_segment_key(key) is not None:
            key_ids += [decode_entry_header(r.entry).key_id for r in decode_segment(store.objects[key]).records]
    assert set(key_ids[: rotation_at + 1]) == {signer.key_id}
    assert set(key_ids[rotation_at + 1 :]) == {other_signer.key_id}
    report = verify_objects(store.objects, [signer.public_key, other_signer.public_key])
    assert report.clean, report.findings
    assert [f.first_sequence for f in report.findings if f.kind == "key-rotation"] == [rotation_at]
    # Pinning only the new key does not verify what the retired key signed.
    assert not verify_objects(store.objects, [other_signer.public_key]).clean


def test_the_checkpoint_of_a_clean_shutdown_is_final(signer: Ed25519Signer, tmp_path: Path) -> None:
    from collector_ext.seal.checkpoint import decode_checkpoint
    from collector_ext.seal.layout import parse_checkpoint_key

    store = InMemoryArchive()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"a"]]))
    checkpoints = sorted(k for k in store.objects if parse_checkpoint_key(k) is not None)
    finals = [decode_checkpoint(store.objects[k]).checkpoint.final for k in checkpoints]
    assert finals[-1] is True
    assert not any(finals[:-1])


def test_a_full_spool_refuses_before_sealing_and_recovers(signer: Ed25519Signer, tmp_path: Path) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = _pipeline(signer, store, tmp_path, spool_max_bytes=4096, checkpoint_interval=0.05)
        await pipeline.start()
        store.fail_puts = 10**9
        refused = None
        for _ in range(100):
            try:
                await pipeline.submit([b"x" * 200])
            except CapacityExceededError as exc:
                refused = exc
                break
        assert refused is not None
        assert "spool.max_bytes=4096" in str(refused)
        sealed = pipeline.stats.records_sealed
        assert not pipeline.ready
        with pytest.raises(CapacityExceededError):
            await pipeline.submit([b"y" * 200])
        assert pipeline.stats.records_sealed == sealed  # refused before sealing
        store.fail_puts = 0  # the archive is back: checkpoints let the spool shrink
        for _ in range(200):
            if pipeline.ready:
                break
            await asyncio.sleep(0.02)
        assert pipeline.ready
        await pipeline.submit([b"after"])
        await pipeline.close(drain_timeout=5)

    asyncio.run(run())
    assert verify_objects(store.objects, [signer.public_key]).clean


def test_disk_full_refuses_new_requests_and_recovers_when_space_returns(
    signer: Ed25519Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InMemoryArchive()
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def run() -> None:
        pipeline = _pipeline(signer, store, tmp_path, ack_timeout=0.3)
        await pipeline.start()
        await pipeline.submit([b"before"])
        monkeypatch.setattr(os, "fsync", no_space)
        waiting = asyncio.create_task(pipeline.submit([b"during"]))
        for _ in range(100):
            if pipeline.spool_failing_since is not None:
                break
            await asyncio.sleep(0.01)
        assert not pipeline.ready
        with pytest.raises(CapacityExceededError, match="no space left"):
            await pipeline.submit([b"y" * 200])
        monkeypatch.setattr(os, "fsync", real_fsync)
        await waiting  # the retried write succeeds well within ack_timeout once space is back
        await pipeline.submit([b"after"])
        await pipeline.close(drain_timeout=5)

    asyncio.run(run())
    payloads = [e[3] for e in _entries(store) if e[2] == EntryKind.LOG_RECORD]
    assert payloads == [b"before", b"during", b"after"]
    assert verify_objects(store.objects, [signer.public_key]).clean


def test_without_a_spool_each_start_supersedes_the_last_chain_of_the_writer(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run_once(payload: bytes) -> None:
        pipeline = SealingPipeline(signer, store, _settings(), writer_id="pod-a")
        assert pipeline.ack_mode == "archive"
        await pipeline.start()
        await pipeline.submit([payload])
        await pipeline.close(drain_timeout=5)

    asyncio.run(run_once(b"first"))
    asyncio.run(run_once(b"second"))
    entries = _entries(store)
    geneses = {e[0]: archive_pb2.GenesisPayload.FromString(e[3]) for e in entries if e[2] == EntryKind.GENESIS}
    assert len(geneses) == 2
    (first,) = [chain for chain, g in geneses.items() if not g.supersedes_chain_id]
    (second,) = [chain for chain, g in geneses.items() if g.supersedes_chain_id]
    assert geneses[second].supersedes_chain_id == first
    report = verify_objects(store.objects, [signer.public_key])
    assert report.clean
    assert "superseded-chain" in [f.kind for f in report.findings]


class _SlowTiles(InMemoryArchive):
    """Reading a tree tile takes a while, as from an archive slow to answer at start-up."""

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if "/tile/" in key:
            await asyncio.sleep(0.5)
        return await super().get(key, max_bytes)


def test_no_checkpoint_goes_out_without_its_tree_while_the_tree_is_still_being_read(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    from collector_ext.seal.layout import checkpoint_note_key, parse_checkpoint_key

    store = _SlowTiles()
    asyncio.run(_run(_pipeline(signer, store, tmp_path), [[b"a"], [b"b"]]))
    # Idle checkpoints are due every 50 ms while the restart reads the tiles for 500 ms.
    fast = {"checkpoint_interval": 0.05, "checkpoint_min_spacing": 0.0}
    asyncio.run(_run(_pipeline(signer, store, tmp_path, **fast), [[b"c"]]))

    checkpoints = [parsed for key in store.objects if (parsed := parse_checkpoint_key(key)) is not None]
    assert len(checkpoints) >= 3
    for parsed in checkpoints:
        note = checkpoint_note_key(
            "", bytes.fromhex(parsed.chain_id_hex), parsed.checkpoint_number, parsed.last_sequence
        )
        assert note in store.objects, f"checkpoint {parsed.checkpoint_number} has no note"
    assert verify_objects(store.objects, [signer.public_key]).clean
