"""The pipeline hands hashes to the signing pool in a few large chunks while its workers are busy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from collector_ext.pipeline import SIGNING_BATCH, PipelineSettings, SealingPipeline
from collector_ext.retry import RetryPolicy
from collector_ext.seal.keys import Ed25519Signer
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive


def test_requests_arriving_while_the_workers_sign_share_chunks(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()
    chunk_sizes: list[int] = []
    requests, per_request = 40, 100

    async def run() -> None:
        settings = PipelineSettings(
            retry=RetryPolicy(initial_delay=0.01, max_delay=0.02),
            max_linger=0.2,
            signing_workers="threads",
            signing_worker_count=2,
        )
        pipeline = SealingPipeline(signer, store, settings)
        pool_sign = pipeline._signing.sign

        def counting_sign(hashes: Sequence[bytes]) -> asyncio.Future[bytes]:
            chunk_sizes.append(len(hashes))
            return pool_sign(hashes)

        pipeline._signing.sign = counting_sign  # type: ignore[method-assign]
        await pipeline.start()
        await asyncio.gather(
            *(pipeline.submit([f"{r}-{i}".encode() for i in range(per_request)]) for r in range(requests))
        )
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    assert sum(chunk_sizes) >= requests * per_request
    # One or two chunks per request (80 here) without batching; with it, the first request goes to
    # the idle workers at once and the rest in chunks of about SIGNING_BATCH / 2 hashes.
    assert len(chunk_sizes) <= 4 + 2 * (requests * per_request // SIGNING_BATCH + 1)
