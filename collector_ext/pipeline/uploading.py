"""Uploading: sealed segments stored in the archive, retried until they are.

Takes ``SegmentToArchive`` items from the ``ArchiveQueue`` (several uploaders with a spool, one
without, so the archive then always holds a prefix of the chain). Reads a segment back from its
spool file when its bytes are no longer in memory, PUTs it under its segment key with its SHA-256,
and produces, on ``ArchivedSegments``, its ref, last entry hash and Merkle leaf hashes for the
checkpointer (waking it).

Guarantees: a segment is reported archived (its ``archived`` future resolved: the acknowledgement
in ``ack="archive"`` mode, and the ``on_archived`` hook called) only once the archive stored it. An
``ArchiveWriter`` PUT is retried with backoff (``retry_async``) for as long as it takes; a permanent
refusal (access denied) is logged and retried slowly rather than dropping sealed records.
``failing_since`` tells health and refusals that writes fail meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError, DeliveryError, PermanentArchiveError
from collector_ext.pipeline.queues import ArchivedSegments, ArchiveQueue, Backlog, SegmentToArchive, resolve
from collector_ext.pipeline.settings import PipelineStats
from collector_ext.retry import RetryPolicy, retry_async
from collector_ext.seal.checkpoint import SegmentRef
from collector_ext.seal.entry import entry_hash
from collector_ext.seal.layout import segment_key
from collector_ext.seal.merkle import leaf_hash
from collector_ext.seal.segment import decode_segment
from collector_ext.spool import Spool

log = logging.getLogger("collector_ext.pipeline")


def segment_leaves(data: bytes) -> bytes:
    """The leaf hashes of a segment object's entries, in order and concatenated (FORMAT.md 16.1)."""
    return b"".join(leaf_hash(record.entry) for record in decode_segment(data).records)


class ArchiveWriter:
    """Every write to the archive (segments, checkpoints, tiles, notes), retried until stored."""

    def __init__(self, store: ArchiveStore, retry: RetryPolicy, stats: PipelineStats) -> None:
        self._store = store
        self._retry = retry
        self._stats = stats
        # time.monotonic() of the first failure of the current run of failed archive writes.
        self.failing_since: float | None = None

    async def put(self, key: str, data: bytes, digest: bytes) -> None:
        def on_retry(error: DeliveryError, attempt: int, delay: float) -> None:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            self._stats.upload_retries += 1
            log.warning(
                "archive write failed; retrying",
                extra={"object_key": key, "attempt": attempt + 1, "delay_s": round(delay, 3), "error": str(error)},
            )

        while True:
            try:
                await retry_async(lambda: self._store.put(key, data, digest), policy=self._retry, on_retry=on_retry)
                self.failing_since = None
                return
            except PermanentArchiveError as exc:
                # Access denied and the like: an operator must act. Keep the records and keep trying
                # slowly rather than drop sealed records; health reports NOT_SERVING meanwhile.
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.error("archive refused a write", extra={"object_key": key, "error": str(exc)})
                await asyncio.sleep(self._retry.max_delay)


class SegmentUploader:
    """Moves segments from the ``ArchiveQueue`` into the archive; see the module docstring."""

    def __init__(
        self,
        to_archive: ArchiveQueue,
        writer: ArchiveWriter,
        archived: ArchivedSegments,
        spool: Spool | None,
        backlog: Backlog,
        stats: PipelineStats,
        *,
        chain_id: Callable[[], bytes],
        merkle_tree: bool,
        stopping: asyncio.Event,
    ) -> None:
        self._to_archive = to_archive
        self._writer = writer
        self._archived = archived
        self._spool = spool
        self._backlog = backlog
        self._stats = stats
        self._chain_id = chain_id
        self._merkle_tree = merkle_tree
        self._stopping = stopping

    async def run(self) -> None:
        """One uploader: take the next segment, store it; the pipeline runs several side by side."""
        while not self._stopping.is_set():
            item = await self._to_archive.get()
            try:
                await self._upload(item)
            except BaseException as exc:
                resolve(item.archived, exc if isinstance(exc, Exception) else ArchiveUnavailableError("interrupted"))
                raise

    async def _upload(self, item: SegmentToArchive) -> None:
        data = item.data
        if data is None:
            assert self._spool is not None
            assert item.spooled is not None
            data = await asyncio.to_thread(self._spool.read, item.spooled)
        last_hash = item.last_hash
        if last_hash is None:
            last_hash = entry_hash(decode_segment(data).records[-1].entry)
        digest = hashlib.sha256(data).digest()
        key = segment_key("", self._chain_id(), item.first_sequence, item.last_sequence, item.created_unix_nano)
        # The tree's leaf hashes: being made on a worker since sealing, or else from the data in a
        # thread (segments re-queued at start; the workers do not import the segment decoder). The
        # checkpoint that covers the segment waits for them; the acknowledgement does not.
        leaves = item.leaves
        if self._merkle_tree and leaves is None:
            leaves = asyncio.ensure_future(asyncio.to_thread(segment_leaves, data))
        try:
            await self._writer.put(key, data, digest)
        except BaseException:
            if leaves is not None:
                leaves.cancel()
            raise
        if leaves is not None and self._merkle_tree:
            self._archived.leaves[item.first_sequence] = leaves
        records = item.last_sequence - item.first_sequence + 1
        self._archived.refs[item.first_sequence] = (
            SegmentRef(key, item.first_sequence, item.last_sequence, digest, len(data)),
            last_hash,
        )
        self._backlog.archived(records)
        self._stats.records_archived += records
        self._stats.segments_archived += 1
        self._archived.due.set()
        resolve(item.archived)
        if item.on_archived is not None:
            item.on_archived()
