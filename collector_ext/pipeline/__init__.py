"""The sealing pipeline: seal -> group into segments -> spool -> archive -> checkpoint.

One ``SealingPipeline`` owns one chain. ``submit`` appends a request's records to the chain at once
(sequence numbers and links are assigned on the event loop, so the order is total), hands the
signatures to a SigningPool (worker processes by default), and returns when the segment holding
those records is durable: written and fsynced to the local spool (``ack="spool"``) or stored in
the archive (``ack="archive"``). That is the acknowledgement rule.

The stages, each in its module, and the queues between them (``queues``):

    submit -> sealing.ChainSealer        chain entries, open segment, signing hand-offs
                 | ClosedSegments        (in sequence order; stage slots bound them)
              persisting.SegmentPersister   signatures, encode, spool write + fsync
                 | ArchiveQueue          (bytes in memory up to KEEP_IN_MEMORY_BYTES, else the spool file)
              uploading.SegmentUploader  archive PUTs, retried (ArchiveWriter)
                 | ArchivedSegments      (refs and Merkle leaves not yet in a checkpoint)
              checkpointing.Checkpointer    tiles, signed note, checkpoint; subscribers told
                 | covered_through
              trimming.SpoolTrimmer      spool files a checkpoint covers and Loki has
    start -> resuming.ChainStart         continue the spool's chain, or a new one (genesis)

Group commit: records of concurrent requests share the open segment. A segment closes when it is
full (records or bytes) or its first record has waited ``max_linger``; while the stage after it is
busy (``upload_concurrency`` segments being signed and spooled, or uploaded when there is no spool)
the open segment keeps filling, so batches grow with load. Segments are spooled one at a time in
sequence order, so the spool always holds a contiguous run of the chain; the uploader then reads
them back from the spool (memory stays bounded however long the archive is away). Without a spool
segments are uploaded one at a time, so the archive always holds a prefix of the chain. A
checkpoint covering every contiguously archived segment is written after uploads complete (at most
one per ``checkpoint_min_spacing``) and on a timer when idle; a stored checkpoint lets the spool
drop the files it covers once the Loki sender has them too.

Restarts: a spool that holds a chain is continued (a signed RESTART entry marks the seam) after the
checkpoint state is read back from the archive, and the spooled segments no checkpoint covers yet
are uploaded again (same keys, same bytes). Without a usable spool a new chain starts, and its
genesis names the chain this writer last wrote, found in the archive (``recovery``).

Failure handling: uploads and spool writes are retried with backoff until they succeed or the
pipeline shuts down. A request not durable within ``ack_timeout`` gets ``ArchiveUnavailableError``
(the receiver answers UNAVAILABLE, so the collector retries; its records are still kept, so a
resend appears twice in the chain: see README, "Resends"). New requests are refused before
sealing (``CapacityExceededError``) while the spool is full or failing, or too many records wait in
memory.

This module is the composition: it builds the stages and the queues between them, runs their loops,
admits requests and shuts down in order. The stages' work is in their modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext import __version__
from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import (
    ArchiveUnavailableError,
    CapacityExceededError,
    DeliveryError,
    InvalidRequestError,
    PermanentArchiveError,
)
from collector_ext.pipeline.checkpointing import Checkpointer
from collector_ext.pipeline.persisting import KEEP_IN_MEMORY_BYTES, SegmentPersister
from collector_ext.pipeline.queues import ArchivedSegments, ArchiveQueue, Backlog, ClosedSegments
from collector_ext.pipeline.resuming import ChainStart
from collector_ext.pipeline.sealing import MIN_SIGNING_CHUNK, SIGNING_BATCH, ChainSealer
from collector_ext.pipeline.settings import AckMode, CheckpointHook, PipelineSettings, PipelineStats
from collector_ext.pipeline.trimming import TRIM_INTERVAL, SpoolTrimmer
from collector_ext.pipeline.uploading import ArchiveWriter, SegmentUploader
from collector_ext.seal.chain import ChainHead
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind
from collector_ext.seal.framing import MAX_ENTRY_BYTES
from collector_ext.seal.keys import Ed25519Signer, Signer
from collector_ext.signing_pool import SigningPool
from collector_ext.spool import Spool, SpooledSegment

__all__ = [
    "KEEP_IN_MEMORY_BYTES",
    "MIN_SIGNING_CHUNK",
    "SIGNING_BATCH",
    "TRIM_INTERVAL",
    "AckMode",
    "CheckpointHook",
    "PipelineSettings",
    "PipelineStats",
    "SealingPipeline",
]

log = logging.getLogger(__name__)


class SealingPipeline:
    """Seals records into one chain, spools and archives them; see the module docstring."""

    def __init__(
        self,
        signer: Signer,
        store: ArchiveStore,
        settings: PipelineSettings | None = None,
        *,
        spool: Spool | None = None,
        clock: Callable[[], int] = time.time_ns,
        writer: str = f"collector-ext/{__version__}",
        writer_id: str = "",
        archive_id: str = "",
        retired_signers: Sequence[Signer] = (),
        on_archived: Callable[[list[bytes], list[bytes]], None] | None = None,
        on_spooled: Callable[[SpooledSegment], None] | None = None,
        loki_cursor: Callable[[bytes], int] | None = None,
        run_key: bool = False,
        on_checkpoint: CheckpointHook | None = None,
    ) -> None:
        """``run_key``: ``signer`` (e.g. a key in a PKCS#11 token) signs the chain's own entries and its
        checkpoints and certifies a fresh in-memory key at the start of each run, which signs the log
        records (FORMAT.md 7.7); otherwise ``signer`` signs everything."""
        settings = settings or PipelineSettings()
        if spool is None and settings.ack == "spool":
            settings = dataclasses.replace(settings, ack="archive")
        # The chain's key: genesis, restart marks, key rotations, run key entries and checkpoints.
        self._signer = signer
        # The run key (run_key mode): made here, never stored, gone when the process ends.
        self._run_signer = Ed25519Signer(Ed25519PrivateKey.generate()) if run_key else None
        # What signs log records.
        self._record_signer: Signer = self._run_signer or signer
        self._settings = settings
        self._spool = spool
        self._signing = SigningPool(
            self._record_signer, workers=settings.signing_workers, count=settings.signing_worker_count
        )
        # Set at shutdown and checked by every stage's loop: on Python 3.11 a cancellation that meets
        # asyncio.wait_for just as its inner wait completes can be lost, so cancelling alone does not
        # reliably stop a loop.
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self.clean_shutdown = False
        self.stats = PipelineStats()

        # The queues between the stages.
        self._backlog = Backlog()
        closed = ClosedSegments(settings.upload_concurrency)
        to_archive = ArchiveQueue()
        archived = ArchivedSegments()

        self._sealer = ChainSealer(
            ChainHead.new(uuid.uuid4().bytes),
            self._signing,
            self._record_signer,
            closed,
            self._backlog,
            self.stats,
            settings,
            spooled=spool is not None,
            entry_signer=signer if self._run_signer is not None else None,
            clock=clock,
            stopping=self._stopping,
        )
        chain_id = self._chain_id
        self._persister = SegmentPersister(
            closed,
            to_archive,
            spool,
            self._sealer.signatures,
            self._signing,
            self._backlog,
            self.stats,
            settings,
            chain_id=chain_id,
            on_archived=on_archived,
            on_spooled=on_spooled,
            stopping=self._stopping,
        )
        self._archive_writer = ArchiveWriter(store, settings.retry, self.stats)
        self._uploader = SegmentUploader(
            to_archive,
            self._archive_writer,
            archived,
            spool,
            self._backlog,
            self.stats,
            chain_id=chain_id,
            merkle_tree=settings.merkle_tree,
            stopping=self._stopping,
        )
        self._checkpointer = Checkpointer(
            archived,
            self._archive_writer,
            signer,
            self._signing,
            self._backlog,
            self.stats,
            settings,
            chain_id=chain_id,
            archive_id=archive_id,
            clock=clock,
            stopping=self._stopping,
        )
        if on_checkpoint is not None:
            self._checkpointer.hooks.append(on_checkpoint)
        self._trimmer = (
            SpoolTrimmer(
                spool,
                covered_through=lambda: self._checkpointer.next_uncovered - 1,
                loki_cursor=loki_cursor,
                chain_id=chain_id,
                stopping=self._stopping,
            )
            if spool is not None
            else None
        )
        self._chain_start = ChainStart(
            self._sealer,
            self._checkpointer,
            to_archive,
            store,
            spool,
            self._backlog,
            self.stats,
            settings,
            signer=signer,
            run_signer=self._run_signer,
            retired={retired.key_id: retired for retired in retired_signers},
            writer=writer,
            writer_id=writer_id,
            archive_id=archive_id,
        )

    def _chain_id(self) -> bytes:
        return self._sealer.head.chain_id

    # -- public -------------------------------------------------------------------------------------
    @property
    def chain_id(self) -> bytes:
        return self._sealer.head.chain_id

    @property
    def start_reason(self) -> str:
        """How this run's part of the chain began (continued, new, superseding; key rotated, run key)."""
        return self._chain_start.reason

    @property
    def ack_mode(self) -> AckMode:
        return self._settings.ack

    @property
    def pending_records(self) -> int:
        """Records sealed but not yet archived."""
        return self._backlog.unarchived_records

    @property
    def next_sequence(self) -> int:
        return self._sealer.head.next_sequence

    @property
    def failing_since(self) -> float | None:
        """``time.monotonic()`` of the first failure of the current run of failed archive writes."""
        return self._archive_writer.failing_since

    @property
    def spool_failing_since(self) -> float | None:
        return self._persister.failing_since

    @property
    def spool_bytes(self) -> int:
        return self._spool.used_bytes if self._spool is not None else 0

    @property
    def spool_max_bytes(self) -> int:
        return self._settings.spool_max_bytes if self._spool is not None else 0

    @property
    def ready(self) -> bool:
        """True when a request now would be accepted (for the health service): one of up to 1 MiB,
        or an eighth of the spool bound if that is smaller."""
        headroom = min(1024 * 1024, self._settings.spool_max_bytes // 8) if self._spool is not None else 0
        return self._accepting and self._refusal(1, headroom) is None

    def _refusal(self, records: int, size: int) -> str | None:
        """Why a request of ``records`` records and ``size`` bytes would be refused now, or None."""
        settings = self._settings
        backlog = self._backlog
        if backlog.memory_records + records > settings.max_pending_records or (
            backlog.memory_bytes > 0 and backlog.memory_bytes + size > settings.max_pending_bytes
        ):
            where = "the spool" if self._spool is not None else "the archive"
            return (
                f"{backlog.memory_records} records ({backlog.memory_bytes} bytes) wait in memory for {where} "
                f"(max_pending_records={settings.max_pending_records}, max_pending_bytes="
                f"{settings.max_pending_bytes})"
            )
        if self._spool is not None:
            if self._persister.failing_since is not None:
                return f"the spool cannot be written: {self._persister.error}"
            if self._spool.used_bytes + backlog.memory_bytes + size > settings.spool_max_bytes:
                return (
                    f"the spool holds {self._spool.used_bytes} bytes (spool.max_bytes="
                    f"{settings.spool_max_bytes}); the archive or Loki is not draining it"
                )
        if settings.ack == "archive" and self._archive_writer.failing_since is not None:
            return "the archive is failing"
        return None

    def subscribe_checkpoints(self, hook: CheckpointHook) -> None:
        """Call ``hook(note, size, previous_size)`` after each new checkpoint note is stored.

        Hooks run on the event loop, after the checkpoint is stored and off the acknowledgement path;
        they must not block (hand the work to a task or a queue). An exception is logged, not raised.
        """
        self._checkpointer.hooks.append(hook)

    async def start(self) -> None:
        """Continue the spool's chain, or start a new one; wait until its first entry (restart mark
        or genesis) is durable, then accept requests.

        Raises:
            ConfigurationError: the spool cannot be used with this key or archive.
            SpoolError: the spool's files are damaged.
        """
        contents = await asyncio.to_thread(self._spool.open) if self._spool is not None else None
        self._tasks = [
            asyncio.create_task(self._sealer.flush_loop(), name="segment-flush"),
            asyncio.create_task(self._persister.run(), name="segment-persist"),
            *([asyncio.create_task(self._trimmer.run(), name="spool-trim")] if self._trimmer is not None else []),
            *(
                asyncio.create_task(self._uploader.run(), name=f"upload-{n}")
                for n in range(self._settings.upload_concurrency if self._spool is not None else 1)
            ),
        ]
        first = await self._chain_start.begin(contents)
        # Only now: before begin() has loaded the chain's Merkle tree, a checkpoint (an idle one
        # after checkpoint_interval, while the archive is slow to answer) would go out without its
        # tiles and note.
        self._tasks.append(asyncio.create_task(self._checkpointer.run(), name="checkpoints"))
        self._checkpointer.due()
        await first
        self._accepting = True
        log.info(
            "chain ready",
            extra={
                "chain_id": self.chain_id.hex(),
                "next_sequence": self.next_sequence,
                "key_id": self._signer.key_id.hex(),
                "record_key_id": self._record_signer.key_id.hex(),
                "ack": self._settings.ack,
                "reason": self.start_reason,
            },
        )

    async def submit(self, payloads: list[bytes]) -> None:
        """Seal ``payloads`` as consecutive log-record entries and wait until they are durable.

        The list is emptied once its records are sealed: they live on in the chain's entries, and a
        request waiting for its acknowledgement should not hold a second copy of them.

        Raises:
            CapacityExceededError: the spool is full or failing, or too much waits in memory;
                nothing was sealed.
            ArchiveUnavailableError: sealed, but not durable within ack_timeout (the records are
                kept and still archived).
        """
        if not self._accepting:
            raise CapacityExceededError("the sidecar is shutting down")
        lengths = list(map(len, payloads))
        if lengths and max(lengths) + ENTRY_HEADER_SIZE > MAX_ENTRY_BYTES:  # at C speed; the loop names it
            for index, length in enumerate(lengths):
                if length + ENTRY_HEADER_SIZE > MAX_ENTRY_BYTES:
                    raise InvalidRequestError(
                        f"log record {index} of the request encodes to {length} bytes; a sealed record holds at "
                        f"most {MAX_ENTRY_BYTES - ENTRY_HEADER_SIZE} (proto/FORMAT.md 4.1); nothing was sealed"
                    )
        size = sum(lengths) + ENTRY_HEADER_SIZE * len(payloads)  # the entries' bytes
        refusal = self._refusal(len(payloads), size)
        if refusal is not None:
            self.stats.requests_refused += 1
            raise CapacityExceededError(refusal)
        durable = self._sealer.seal(EntryKind.LOG_RECORD, payloads, size)
        payloads.clear()
        try:
            await asyncio.wait_for(asyncio.shield(durable), timeout=self._settings.ack_timeout)
        except TimeoutError as exc:
            where = "spooled" if self._settings.ack == "spool" else "archived"
            raise ArchiveUnavailableError(
                f"records not {where} within ack_timeout={self._settings.ack_timeout}s; they are kept and "
                "archived later"
            ) from exc

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting; spool and archive what is sealed (as far as ``drain_timeout`` allows); write
        a final checkpoint; stop the background tasks. ``clean_shutdown`` tells whether every sealed
        record reached durable storage."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        self._sealer.close_soon()
        backlog = self._backlog
        try:
            # Records not yet durable are among those not yet archived: one wait covers both.
            await asyncio.wait_for(backlog.all_archived.wait(), timeout=drain_timeout)
        except TimeoutError:
            log.warning(
                "shutdown deadline reached with records not archived",
                extra={"not_durable": backlog.memory_records, "not_archived": backlog.unarchived_records},
            )
        self.clean_shutdown = backlog.memory_records == 0
        self._stopping.set()
        self._sealer.wake()
        self._checkpointer.due()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checkpointer.write_in_flight is not None:
            # A checkpoint the loop was writing is finished first (its outcome was logged or is moot).
            await asyncio.gather(self._checkpointer.write_in_flight, return_exceptions=True)
        try:
            # Final when everything sealed is archived: the chain is closed cleanly here (FORMAT.md 11.1).
            await asyncio.wait_for(
                self._checkpointer.write_final_checkpoints(), timeout=max(1.0, deadline - time.monotonic())
            )
        except (DeliveryError, PermanentArchiveError, TimeoutError) as exc:
            log.warning("final checkpoint not written", extra={"error": str(exc)})
        if self._trimmer is not None:
            await self._trimmer.trim()
        self._signing.close()
