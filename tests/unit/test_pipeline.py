"""The sealing pipeline against an in-memory archive: acks, group commit, outages, checkpoints."""

from __future__ import annotations

import asyncio

import pytest

from collector_ext.errors import ArchiveUnavailableError, CapacityExceededError
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.retry import RetryPolicy
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key
from collector_ext.seal.segment import decode_segment
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive

FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.02)


def _settings(**overrides: object) -> PipelineSettings:
    base: dict[str, object] = {
        "retry": FAST_RETRY,
        "checkpoint_interval": 60.0,
        "checkpoint_min_spacing": 0.0,
        "max_linger": 0.002,
    }
    base.update(overrides)
    return PipelineSettings(**base)  # type: ignore[arg-type]


def _segments(store: InMemoryArchive) -> list[str]:
    return [k for k in store.objects if parse_segment_key(k)]


def _checkpoints(store: InMemoryArchive) -> list[str]:
    return [k for k in store.objects if parse_checkpoint_key(k)]


def test_ack_means_archived_and_the_archive_verifies(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings())
        await pipeline.start()
        await pipeline.submit([b"a", b"b"])
        # Acknowledged: the records' segment is in the archive already.
        assert pipeline.stats.records_archived == 3
        await asyncio.gather(*(pipeline.submit([f"r{i}".encode()] * 10) for i in range(20)))
        assert pipeline.stats.records_archived == 3 + 200
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    assert report.records_checked == 203


def test_concurrent_requests_share_segments(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(max_linger=0.05, upload_concurrency=1))
        await pipeline.start()
        await asyncio.gather(*(pipeline.submit([b"x"]) for _ in range(50)))
        await pipeline.close()

    asyncio.run(run())
    assert len(_segments(store)) <= 3  # genesis, then the 50 requests in one or two group commits


def test_outage_is_retried_and_nothing_is_lost(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings())
        await pipeline.start()
        await pipeline.submit([b"before"])
        store.fail_puts = 5
        await pipeline.submit([b"during"])
        assert pipeline.stats.upload_retries >= 5
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    assert report.records_checked == 3


def test_ack_timeout_answers_unavailable_but_archiving_continues(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(ack_timeout=0.05))
        await pipeline.start()
        await pipeline.submit([b"first"])
        store.fail_puts = 10**9
        with pytest.raises(ArchiveUnavailableError, match="ack_timeout"):
            await pipeline.submit([b"slow"])
        assert not pipeline.ready
        store.fail_puts = 0
        for _ in range(200):
            if pipeline.stats.records_archived == 3:
                break
            await asyncio.sleep(0.01)
        assert pipeline.stats.records_archived == 3
        await pipeline.close()

    asyncio.run(run())
    assert verify_objects(store.objects, [signer.public_key]).records_checked == 3


def test_capacity_refuses_before_sealing(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(max_pending_records=1000, ack_timeout=0.05))
        await pipeline.start()
        await pipeline.submit([b"ok"])
        store.fail_puts = 10**9
        with pytest.raises(ArchiveUnavailableError):
            await pipeline.submit([b"x"] * 900)
        sealed = pipeline.stats.records_sealed
        with pytest.raises(CapacityExceededError, match="max_pending_records"):
            await pipeline.submit([b"y"] * 200)
        assert pipeline.stats.records_sealed == sealed
        store.fail_puts = 0
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    assert report.records_checked == 1 + 1 + 900


def test_idle_checkpoints_are_written_on_schedule(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(checkpoint_interval=0.05))
        await pipeline.start()
        await pipeline.submit([b"one"])
        await asyncio.sleep(0.4)  # idle
        await pipeline.close()

    asyncio.run(run())
    numbers = sorted(parse_checkpoint_key(k).checkpoint_number for k in _checkpoints(store))  # type: ignore[union-attr]
    assert len(numbers) >= 4
    assert numbers == list(range(len(numbers)))
    assert verify_objects(store.objects, [signer.public_key]).findings == ()


def test_shutdown_writes_a_final_checkpoint_covering_everything(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings())
        await pipeline.start()
        for i in range(5):
            await pipeline.submit([f"{i}".encode()] * 3)
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    (chain,) = report.chains
    assert chain.covered_until == chain.last_sequence == 15


def test_checkpoints_after_uploads_are_coalesced(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings(checkpoint_min_spacing=0.3, upload_concurrency=1))
        await pipeline.start()
        for i in range(20):
            await pipeline.submit([f"{i}".encode()])
        await pipeline.close()

    asyncio.run(run())
    assert len(_segments(store)) == 21
    assert len(_checkpoints(store)) <= 4  # not one per segment
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    (chain,) = report.chains
    assert chain.covered_until == 20


@pytest.mark.parametrize("signing_workers", ["threads", "processes"])
def test_no_segment_object_passes_the_format_limit(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch, signing_workers: str
) -> None:
    """A batch that would carry a segment past MAX_SEGMENT_OBJECT_BYTES or MAX_SEGMENT_RECORDS continues in new segments,
    so a verifier never meets a legitimate object it must refuse (FORMAT.md 4.1)."""
    import collector_ext.pipeline.sealing as sealing_module

    limit = 4096
    monkeypatch.setattr(sealing_module, "MAX_SEGMENT_OBJECT_BYTES", limit)
    monkeypatch.setattr(sealing_module, "MAX_SEGMENT_RECORDS", 12)
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(
            signer, store, _settings(max_linger=0.05, signing_workers=signing_workers, signing_worker_count=2)
        )
        await pipeline.start()
        # One request far larger than a segment may be, then several that fill one together.
        await pipeline.submit([bytes([i]) * 300 for i in range(40)])
        await asyncio.gather(*(pipeline.submit([f"r{i}".encode() * 100] * 5) for i in range(10)))
        await pipeline.close()

    asyncio.run(run())
    sizes = [len(store.objects[k]) for k in _segments(store)]
    assert max(sizes) <= limit
    assert max(len(decode_segment(store.objects[k]).records) for k in _segments(store)) <= 12
    assert len(sizes) >= 6
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    assert report.records_checked == 1 + 40 + 50


def test_a_record_too_large_to_seal_is_refused_and_nothing_is_sealed(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector_ext.pipeline as pipeline_module
    from collector_ext.errors import InvalidRequestError

    monkeypatch.setattr(pipeline_module, "MAX_ENTRY_BYTES", 1000)
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, _settings())
        await pipeline.start()
        with pytest.raises(InvalidRequestError, match="log record 1 of the request encodes to 1000 bytes"):
            await pipeline.submit([b"small", b"x" * 1000])
        assert pipeline.next_sequence == 1  # only the genesis
        await pipeline.submit([b"fine"])
        await pipeline.close()

    asyncio.run(run())
    assert verify_objects(store.objects, [signer.public_key]).records_checked == 2


def test_a_checkpoint_lists_at_most_its_share_of_segments(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage many archived segments wait for a checkpoint: they are spread over several, so
    no checkpoint object passes its format limit."""
    import collector_ext.pipeline.checkpointing as checkpointing_module
    from collector_ext.seal.checkpoint import decode_checkpoint

    monkeypatch.setattr(checkpointing_module, "MAX_SEGMENTS_PER_CHECKPOINT", 3)
    store = InMemoryArchive()

    async def run() -> None:
        # Checkpoints at most every 0.5 s: the ten segments archived meanwhile wait for one.
        pipeline = SealingPipeline(signer, store, _settings(checkpoint_min_spacing=0.5))
        await pipeline.start()
        for i in range(10):
            await pipeline.submit([f"r{i}".encode()])
        await pipeline.close()

    asyncio.run(run())
    listed = [len(decode_checkpoint(store.objects[k]).checkpoint.segments) for k in _checkpoints(store)]
    assert max(listed) == 3
    assert sum(listed) == len(_segments(store))
    assert verify_objects(store.objects, [signer.public_key]).findings == ()
