"""The persister's stage slots when the ``on_spooled`` hook fails after a segment is spooled."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector_ext.pipeline import SealingPipeline
from collector_ext.seal.entry import EntryKind, decode_entry_header, entry_payload
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_segment_key
from collector_ext.seal.segment import decode_segment
from collector_ext.spool import Spool, SpooledSegment
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive
from tests.unit.test_pipeline_spool import _settings


def _logged_payloads(store: InMemoryArchive) -> list[bytes]:
    payloads = []
    for key in sorted(store.objects):
        if parse_segment_key(key) is None:
            continue
        for record in decode_segment(store.objects[key]).records:
            if decode_entry_header(record.entry).kind == EntryKind.LOG_RECORD:
                payloads.append(entry_payload(record.entry))
    return payloads


async def _free_slots(slots: asyncio.Semaphore, at_most: int) -> int:
    """How many slots can be taken without waiting (up to ``at_most`` + 1); gives them back."""
    taken = 0
    while taken <= at_most and not slots.locked():
        await slots.acquire()
        taken += 1
    for _ in range(taken):
        slots.release()
    return taken


def test_a_failing_on_spooled_hook_gives_the_stage_slot_back_once(signer: Ed25519Signer, tmp_path: Path) -> None:
    """The hook raises for every segment: each slot is given back exactly once (before the fix the
    error path released it a second time, and the persister stopped), and the spooled segments are
    still archived."""
    store = InMemoryArchive()
    hooked: list[SpooledSegment] = []

    def failing_hook(spooled: SpooledSegment) -> None:
        hooked.append(spooled)
        raise RuntimeError("the hook failed")

    async def run() -> None:
        pipeline = SealingPipeline(
            signer, store, _settings(upload_concurrency=1), spool=Spool(tmp_path), on_spooled=failing_hook
        )
        await pipeline.start()  # the genesis segment is spooled and the hook has raised once
        try:
            assert len(hooked) == 1
            assert await _free_slots(pipeline._persister._closed.slots, at_most=1) == 1
            await pipeline.submit([b"first"])
            await pipeline.submit([b"second"])
            assert len(hooked) == 3
            assert await _free_slots(pipeline._persister._closed.slots, at_most=1) == 1
        finally:
            await pipeline.close(drain_timeout=5)
        assert pipeline.clean_shutdown
        assert pipeline.pending_records == 0
        assert pipeline._spool is not None
        pipeline._spool.close()

    asyncio.run(run())
    assert _logged_payloads(store) == [b"first", b"second"]
    assert verify_objects(store.objects, [signer.public_key]).clean
