"""Signing in worker processes: same signatures as in-process, and a killed worker loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal

from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.seal.chain import sign_entry_hashes
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.signing_pool import SigningPool, available_cpus
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive


def test_process_pool_signatures_equal_in_process_ones(signer: Ed25519Signer) -> None:
    hashes = [bytes([i]) * 32 for i in range(100)]

    async def run() -> bytes:
        pool = SigningPool(signer, workers="processes", count=2)
        try:
            return await pool.sign(hashes)
        finally:
            pool.close()

    assert asyncio.run(run()) == b"".join(sign_entry_hashes(signer, hashes))
    assert available_cpus() >= 1


def test_a_killed_signing_worker_is_replaced_and_nothing_is_lost(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, PipelineSettings(signing_workers="processes"))
        await pipeline.start()
        await pipeline.submit([b"before"] * 10)
        workers = list(pipeline._signing._executor._processes)  # type: ignore[attr-defined]
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        # Wait until the pool has noticed, so the next submit meets a broken pool.
        executor = pipeline._signing._executor  # type: ignore[attr-defined]
        for _ in range(500):
            if executor._broken:
                break
            await asyncio.sleep(0.01)
        assert executor._broken
        await pipeline.submit([b"after"] * 10)
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key], all_signatures=True)
    assert report.findings == ()
    assert report.records_checked == 21


def test_tree_work_runs_in_a_thread_when_a_worker_has_died(signer: Ed25519Signer) -> None:
    """A pool broken by a killed worker still gives the tree's hashes (the signing path restarts it)."""
    from collector_ext.seal.merkle import concatenated_leaf_hashes, leaf_hash

    entries = [b"first entry", b"second"]

    async def run() -> tuple[bytes, bytes]:
        pool = SigningPool(signer, workers="processes", count=1)
        try:
            before = await pool.run(concatenated_leaf_hashes, b"".join(entries), [len(e) for e in entries])
            for pid in list(pool._executor._processes):  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
            after = await pool.run(concatenated_leaf_hashes, b"".join(entries), [len(e) for e in entries])
            return before, after
        finally:
            pool.close()

    expected = b"".join(map(leaf_hash, entries))
    assert asyncio.run(run()) == (expected, expected)
