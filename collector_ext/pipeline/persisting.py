"""Persisting: closed segments signed, encoded and written to the spool, one at a time.

Takes closed segments from ``ClosedSegments`` in sequence order. For each: waits for its signatures
(``ChainSealer.signatures``), encodes the segment object, starts its Merkle leaf hashes on a worker
(from the entries still in memory), and appends it to the spool with an fsync, retrying with backoff
for as long as the disk is full or failing (requests are refused meanwhile). Produces
``SegmentToArchive`` items on the ``ArchiveQueue``, keeping their bytes in memory up to
``KEEP_IN_MEMORY_BYTES`` (beyond that the uploader reads them back from the spool file).

Guarantees: segments are spooled in sequence order, so the spool always holds a contiguous run of
the chain; a segment's ``spooled`` future (the acknowledgement in ``ack="spool"`` mode) is resolved
only after its file is fsynced, and its stage slot is given back then. Without a spool the segment
goes straight to the uploader, and its slot and memory count are released once it is archived.
"""

from __future__ import annotations

import array
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from collector_ext.errors import ArchiveUnavailableError
from collector_ext.pipeline.queues import ArchiveQueue, Backlog, ClosedSegments, OpenSegment, SegmentToArchive, resolve
from collector_ext.pipeline.settings import PipelineSettings, PipelineStats
from collector_ext.retry import backoff_delay
from collector_ext.seal.merkle import concatenated_leaf_hashes
from collector_ext.seal.segment import encode_segment
from collector_ext.signing_pool import SigningPool
from collector_ext.spool import Spool, SpooledSegment, SpoolError, SpoolFullError

log = logging.getLogger("collector_ext.pipeline")

# Bytes of spooled segments kept in memory for the uploader; beyond this they are read back from disk.
KEEP_IN_MEMORY_BYTES = 8 * 1024 * 1024


# Entries per leaf-hash job on a signing worker: a hand-off costs the event loop about half a
# millisecond, and a job's bytes are held twice in the worker while it runs.
LEAF_CHUNK = 2048


async def _joined(jobs: Sequence[Awaitable[bytes]]) -> bytes:
    return b"".join(await asyncio.gather(*jobs))


class SegmentPersister:
    """Owns the spool's writes and their failure state; see the module docstring."""

    def __init__(
        self,
        closed: ClosedSegments,
        to_archive: ArchiveQueue,
        spool: Spool | None,
        signatures: Callable[[OpenSegment], Awaitable[list[bytes]]],
        signing: SigningPool,
        backlog: Backlog,
        stats: PipelineStats,
        settings: PipelineSettings,
        *,
        chain_id: Callable[[], bytes],
        on_archived: Callable[[list[bytes], list[bytes]], None] | None,
        on_spooled: Callable[[SpooledSegment], None] | None,
        stopping: asyncio.Event,
    ) -> None:
        self._closed = closed
        self._to_archive = to_archive
        self._spool = spool
        self._signatures = signatures
        self._signing = signing
        self._backlog = backlog
        self._stats = stats
        self._settings = settings
        self._chain_id = chain_id
        self._on_archived = on_archived
        self._on_spooled = on_spooled
        self._stopping = stopping
        self.failing_since: float | None = None  # time.monotonic() of the first failed spool write
        self.error = ""  # the newest spool write failure

    async def run(self) -> None:
        """Take closed segments in sequence order: sign, encode, spool (one at a time), then hand to
        the uploader."""
        while not self._stopping.is_set():
            segment = await self._closed.queue.get()
            release_slot = self._slot_release()
            try:
                await self._persist(segment, release_slot)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else ArchiveUnavailableError("archiving was interrupted")
                resolve(segment.spooled, error)
                resolve(segment.archived, error)
                release_slot()
                raise

    def _slot_release(self) -> Callable[[], None]:
        """Gives one segment's stage slot back, once: the error path may follow a normal release (and
        without a spool, resolving ``archived`` runs the upload's release), and a second release would
        let one more segment than ``upload_concurrency`` through."""
        slots = self._closed.slots
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()

        return release

    async def _persist(self, segment: OpenSegment, release_slot: Callable[[], None]) -> None:
        signatures = await self._signatures(segment)
        last_sequence = segment.first_sequence + len(segment.entries) - 1
        data = encode_segment(
            chain_id=self._chain_id(),
            first_sequence=segment.first_sequence,
            created_unix_nano=segment.created_unix_nano,
            entries=segment.entries,
            signatures=signatures,
        )
        item = SegmentToArchive(
            segment.first_sequence,
            last_sequence,
            segment.created_unix_nano,
            data=data,
            last_hash=segment.hashes[-1],
            archived=segment.archived,
            # From the entries in memory (cheaper than decoding the segment object again), on a worker.
            leaves=self._leaf_hashes(segment.entries) if self._settings.merkle_tree else None,
        )
        if self._on_archived is not None:
            entries, on_archived = segment.entries, self._on_archived
            item.on_archived = lambda: on_archived(entries, signatures)
        records, size = len(segment.entries), segment.size
        backlog = self._backlog
        if self._spool is None:
            # The stage slot and the memory count are released when the upload completes.
            def release() -> None:
                backlog.memory_records -= records
                backlog.memory_bytes -= size
                release_slot()

            assert segment.archived is not None
            segment.archived.add_done_callback(lambda _: release())
            self._to_archive.put(item)
            return
        item.spooled = await self._write_spool(segment.first_sequence, last_sequence, segment.created_unix_nano, data)
        backlog.memory_records -= records
        backlog.memory_bytes -= size
        self._stats.records_spooled += records
        release_slot()
        resolve(segment.spooled)
        if self._on_spooled is not None:
            try:
                self._on_spooled(item.spooled)
            except Exception as exc:
                # A notification (the Loki sender's wake-up): the segment is durable and acknowledged,
                # so it still goes to the uploader; the hook's failure is logged, not raised.
                log.error(
                    "on_spooled hook failed",
                    extra={"error": type(exc).__name__, "first_sequence": segment.first_sequence},
                )
        if self._to_archive.in_memory_bytes + len(data) > KEEP_IN_MEMORY_BYTES:
            item.data = None  # the uploader reads it back from the spool file
        self._to_archive.put(item)

    def _leaf_hashes(self, entries: list[bytes]) -> asyncio.Future[bytes]:
        """The entries' leaf hashes, concatenated, made on the workers (the event loop only joins the
        entries), LEAF_CHUNK entries to a job: a segment of 20,000 entries at once raised each
        worker's peak memory by several MiB."""
        jobs = []
        for start in range(0, len(entries), LEAF_CHUNK):
            chunk = entries[start : start + LEAF_CHUNK]
            lengths = array.array("I", map(len, chunk))
            jobs.append(self._signing.run(concatenated_leaf_hashes, b"".join(chunk), lengths))
        return asyncio.ensure_future(_joined(jobs))

    async def _write_spool(self, first: int, last: int, created: int, data: bytes) -> SpooledSegment:
        """Append to the spool, retrying (with backoff, for as long as it takes) while the disk is
        full or failing; requests are refused meanwhile and nothing already spooled is touched."""
        assert self._spool is not None
        attempt = 0
        while True:
            try:
                spooled = await asyncio.to_thread(self._spool.append, self._chain_id(), first, last, created, data)
                if self.failing_since is not None:
                    log.info("spool writable again", extra={"spool": str(self._spool.directory)})
                self.failing_since = None
                return spooled
            except SpoolError as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self.error = str(exc)
                self._stats.spool_write_retries += 1
                delay = backoff_delay(attempt, self._settings.retry, random_fraction=0.5)
                log.error(
                    "spool write failed; retrying" + (" (disk full)" if isinstance(exc, SpoolFullError) else ""),
                    extra={"error": str(exc), "attempt": attempt + 1, "delay_s": round(delay, 3)},
                )
                attempt += 1
                await asyncio.sleep(delay)
