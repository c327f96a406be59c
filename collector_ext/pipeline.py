"""The sealing pipeline: seal -> group into segments -> archive -> checkpoint.

One ``SealingPipeline`` owns one chain. ``submit`` appends a request's records to the chain at once
(sequence numbers and links are assigned on the event loop, so the order is total), hands the
signatures to a SigningPool (worker processes by default), and returns only
when the segment holding those records is stored in the archive: that is the acknowledgement rule.

Group commit: records of concurrent requests share the open segment. A segment closes when it is
full (records or bytes) or its first record has waited ``max_linger``; up to ``upload_concurrency``
segments are in flight at once, and while all slots are busy the open segment keeps filling, so
batches grow with load. A checkpoint covering every contiguously archived segment is written after
uploads complete (one at a time, at most one per ``checkpoint_min_spacing``) and on a timer when
idle.

Failure handling: uploads are retried with backoff until they succeed or the pipeline shuts down;
a request whose records are not archived within ``ack_timeout`` gets ``ArchiveUnavailableError``
(the receiver answers UNAVAILABLE, so the collector retries; its records stay queued and are still
archived later, so a resend appears twice in the chain: see README, "Resends"). When more than
``max_pending_records`` are sealed but not archived, new requests are refused before sealing.

Not here: crash recovery of the chain and a local spool (a later issue); this pipeline starts a new
chain with a genesis entry every time it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field

from collector_ext import __version__
from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import (
    ArchiveUnavailableError,
    CapacityExceededError,
    DeliveryError,
    PermanentArchiveError,
)
from collector_ext.retry import RetryPolicy, retry_async
from collector_ext.seal.chain import ChainHead, chain_entries, genesis_payload
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, sign_checkpoint
from collector_ext.seal.entry import SIGNATURE_SIZE, ZERO_HASH, EntryKind
from collector_ext.seal.keys import Signer
from collector_ext.seal.layout import checkpoint_key, segment_key
from collector_ext.seal.segment import encode_segment
from collector_ext.signing_pool import SigningPool, SigningWorkers

log = logging.getLogger(__name__)

MIN_SIGNING_CHUNK = 64


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    segment_max_records: int = 20_000
    segment_max_bytes: int = 16 * 1024 * 1024
    max_linger: float = 0.015
    upload_concurrency: int = 2
    checkpoint_interval: float = 60.0
    checkpoint_min_spacing: float = 1.0
    ack_timeout: float = 10.0
    max_pending_records: int = 200_000
    signing_workers: SigningWorkers = "processes"
    signing_worker_count: int = 0  # 0: one per CPU
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(eq=False)
class _OpenSegment:
    first_sequence: int
    created_unix_nano: int
    entries: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    signature_chunks: list[asyncio.Future[bytes]] = field(default_factory=list)
    size: int = 0
    durable: asyncio.Future[None] | None = None
    opened_at: float = field(default_factory=time.monotonic)


@dataclass
class PipelineStats:
    records_sealed: int = 0
    records_archived: int = 0
    segments_archived: int = 0
    checkpoints_written: int = 0
    upload_retries: int = 0
    requests_refused: int = 0
    last_checkpoint_unix: float = 0.0


class SealingPipeline:
    """Seals records into one chain and archives them; see the module docstring."""

    def __init__(
        self,
        signer: Signer,
        store: ArchiveStore,
        settings: PipelineSettings | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        writer: str = f"collector-ext/{__version__}",
        on_archived: Callable[[list[bytes], list[bytes]], None] | None = None,
    ) -> None:
        self._signer = signer
        self._store = store
        self._settings = settings or PipelineSettings()
        self._clock = clock
        self._writer = writer
        self._on_archived = on_archived
        self._head = ChainHead.new(uuid.uuid4().bytes)
        self._signing = SigningPool(
            signer, workers=self._settings.signing_workers, count=self._settings.signing_worker_count
        )
        self._open: _OpenSegment | None = None
        self._segment_ready = asyncio.Event()
        self._segment_full = asyncio.Event()
        self._upload_slots = asyncio.Semaphore(self._settings.upload_concurrency)
        self._uploads: set[asyncio.Task[None]] = set()
        self._pending_records = 0
        # Archived segments not yet in a checkpoint, by first sequence: their ref and last entry hash.
        self._archived: dict[int, tuple[SegmentRef, bytes]] = {}
        self._next_uncovered = 0
        self._last_covered_head = ZERO_HASH
        self._checkpoint_number = 0
        self._previous_checkpoint = b""
        self._checkpoint_due = asyncio.Event()
        # Set at shutdown and checked by the background loops: on Python 3.11 a cancellation that
        # meets asyncio.wait_for just as its inner wait completes can be lost, so cancelling alone
        # does not reliably stop a loop.
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing_since: float | None = None
        self._accepting = False
        self.stats = PipelineStats()

    # -- public -------------------------------------------------------------------------------------
    @property
    def chain_id(self) -> bytes:
        return self._head.chain_id

    @property
    def pending_records(self) -> int:
        """Records sealed but not yet archived."""
        return self._pending_records

    @property
    def next_sequence(self) -> int:
        return self._head.next_sequence

    @property
    def failing_since(self) -> float | None:
        """``time.monotonic()`` of the first failure of the current run of failed archive writes."""
        return self._failing_since

    @property
    def ready(self) -> bool:
        """True when a request now would be accepted (for the health service)."""
        return (
            self._accepting
            and self._failing_since is None
            and self._pending_records < self._settings.max_pending_records
        )

    async def start(self) -> None:
        """Start a new chain: seal its genesis entry and wait until the archive holds it (retrying while
        the archive is unavailable), then start the background tasks' regular work."""
        payload = genesis_payload(self._signer.public_key, writer=self._writer, reason="sidecar started")
        durable = self._seal(EntryKind.GENESIS, [payload])
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="segment-flush"),
            asyncio.create_task(self._checkpoint_loop(), name="checkpoints"),
        ]
        # The chain is anchored in the archive before the first record is accepted, so an archive that
        # holds any record of this chain also holds its genesis entry.
        await durable
        self._accepting = True
        log.info("chain started", extra={"chain_id": self.chain_id.hex(), "key_id": self._signer.key_id.hex()})

    async def submit(self, payloads: list[bytes]) -> None:
        """Seal ``payloads`` as consecutive log-record entries and wait until they are archived.

        Raises:
            CapacityExceededError: too many records await archiving; nothing was sealed.
            ArchiveUnavailableError: sealed, but not archived within ack_timeout (archiving goes on).
        """
        if not self._accepting:
            raise CapacityExceededError("the sidecar is shutting down")
        if self._pending_records + len(payloads) > self._settings.max_pending_records:
            self.stats.requests_refused += 1
            raise CapacityExceededError(
                f"{self._pending_records} records await archiving (max_pending_records="
                f"{self._settings.max_pending_records}); the archive is slow or unavailable"
            )
        durable = self._seal(EntryKind.LOG_RECORD, payloads)
        try:
            await asyncio.wait_for(asyncio.shield(durable), timeout=self._settings.ack_timeout)
        except TimeoutError as exc:
            raise ArchiveUnavailableError(
                f"records not archived within ack_timeout={self._settings.ack_timeout}s; archiving continues"
            ) from exc

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, archive what is sealed (as far as ``drain_timeout`` allows), write a
        final checkpoint and stop the background tasks."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        if self._open is not None and self._open.entries:
            self._segment_full.set()
        while (self._open is not None and self._open.entries) or self._uploads:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "shutdown deadline reached with records not archived",
                    extra={"pending_records": self._pending_records},
                )
                break
            if self._uploads:
                await asyncio.wait(set(self._uploads), timeout=remaining)
            else:
                await asyncio.sleep(0)  # the flush loop takes the open segment (marked full above)
        self._stopping.set()
        self._segment_ready.set()
        self._checkpoint_due.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for upload in list(self._uploads):
            upload.cancel()
        await asyncio.gather(*self._uploads, return_exceptions=True)
        if self._pending_records == 0:
            try:
                await asyncio.wait_for(self._write_checkpoint(), timeout=max(1.0, deadline - time.monotonic()))
            except (DeliveryError, PermanentArchiveError, TimeoutError) as exc:
                log.warning("final checkpoint not written", extra={"error": str(exc)})
        self._signing.close()

    # -- sealing ------------------------------------------------------------------------------------
    def _seal(self, kind: EntryKind, payloads: list[bytes]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        batch = chain_entries(self._head, kind, payloads, self._signer.key_id, self._clock())
        self._head = batch.head
        segment = self._open
        if segment is None:
            segment = _OpenSegment(first_sequence=batch.first_sequence, created_unix_nano=self._clock())
            segment.durable = loop.create_future()
            self._open = segment
        hashes = batch.hashes
        # Spread a batch over every signing worker, in chunks big enough to make each hand-over cheap.
        chunk_size = max(MIN_SIGNING_CHUNK, -(-len(hashes) // self._signing.workers))
        for start in range(0, len(hashes), chunk_size):
            segment.signature_chunks.append(self._signing.sign(hashes[start : start + chunk_size]))
        segment.entries += batch.entries
        segment.hashes += hashes
        segment.size += sum(map(len, batch.entries))
        self._pending_records += len(payloads)
        self.stats.records_sealed += len(payloads)
        self._segment_ready.set()
        if (
            len(segment.entries) >= self._settings.segment_max_records
            or segment.size >= self._settings.segment_max_bytes
        ):
            self._segment_full.set()
        assert segment.durable is not None
        return segment.durable

    # -- segments -----------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            await self._segment_ready.wait()
            await self._upload_slots.acquire()
            if self._stopping.is_set():
                self._upload_slots.release()
                return
            segment = self._open
            if segment is not None and not self._segment_full.is_set():
                linger = self._settings.max_linger - (time.monotonic() - segment.opened_at)
                if linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._segment_full.wait(), timeout=linger)
            segment = self._open
            self._open = None
            self._segment_ready.clear()
            self._segment_full.clear()
            if segment is None or not segment.entries:
                self._upload_slots.release()
                continue
            task = asyncio.create_task(self._upload(segment), name=f"upload-{segment.first_sequence}")
            self._uploads.add(task)
            task.add_done_callback(self._uploads.discard)

    async def _upload(self, segment: _OpenSegment) -> None:
        try:
            try:
                chunks = await asyncio.gather(*segment.signature_chunks)
            except BrokenExecutor as exc:
                # A signing worker died (killed, out of memory). The entries are chained already:
                # sign them again on a fresh pool rather than lose them.
                log.error("signing worker failed; restarting the signing pool", extra={"error": repr(exc)})
                self._signing.restart()
                chunks = [await self._signing.sign(segment.hashes)]
            size = SIGNATURE_SIZE
            signatures = [chunk[i : i + size] for chunk in chunks for i in range(0, len(chunk), size)]
            last_sequence = segment.first_sequence + len(segment.entries) - 1
            data = encode_segment(
                chain_id=self.chain_id,
                first_sequence=segment.first_sequence,
                created_unix_nano=segment.created_unix_nano,
                entries=segment.entries,
                signatures=signatures,
            )
            digest = hashlib.sha256(data).digest()
            key = segment_key("", self.chain_id, segment.first_sequence, last_sequence, segment.created_unix_nano)
            await self._put_with_retry(key, data, digest)
            self._archived[segment.first_sequence] = (
                SegmentRef(key, segment.first_sequence, last_sequence, digest, len(data)),
                segment.hashes[-1],
            )
            self._pending_records -= len(segment.entries)
            self.stats.records_archived += len(segment.entries)
            self.stats.segments_archived += 1
            self._checkpoint_due.set()
            assert segment.durable is not None
            if not segment.durable.done():
                segment.durable.set_result(None)
            if self._on_archived is not None:
                self._on_archived(segment.entries, signatures)
        except BaseException as exc:
            assert segment.durable is not None
            if not segment.durable.done():
                segment.durable.set_exception(
                    exc if isinstance(exc, Exception) else ArchiveUnavailableError("archiving was interrupted")
                )
            raise
        finally:
            self._upload_slots.release()

    async def _put_with_retry(self, key: str, data: bytes, digest: bytes) -> None:
        def on_retry(error: DeliveryError, attempt: int, delay: float) -> None:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            self.stats.upload_retries += 1
            log.warning(
                "archive write failed; retrying",
                extra={"object_key": key, "attempt": attempt + 1, "delay_s": round(delay, 3), "error": str(error)},
            )

        while True:
            try:
                await retry_async(
                    lambda: self._store.put(key, data, digest), policy=self._settings.retry, on_retry=on_retry
                )
                self._failing_since = None
                return
            except PermanentArchiveError as exc:
                # Access denied and the like: an operator must act. Keep the records and keep trying
                # slowly rather than drop sealed records; health reports NOT_SERVING meanwhile.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                log.error("archive refused a write", extra={"object_key": key, "error": str(exc)})
                await asyncio.sleep(self._settings.retry.max_delay)

    # -- checkpoints --------------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        interval = self._settings.checkpoint_interval
        while not self._stopping.is_set():
            # Idle or not, a checkpoint at least every interval, so a cut-off tail stays visible.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_due.wait(), timeout=interval)
            if self._checkpoint_due.is_set() and not self._stopping.is_set():
                # Under load many segments complete each second: one checkpoint covers them all.
                await asyncio.sleep(self._settings.checkpoint_min_spacing)
            if self._stopping.is_set():
                return  # close() writes the final checkpoint
            self._checkpoint_due.clear()
            try:
                await self._write_checkpoint()
            except PermanentArchiveError as exc:
                log.error("checkpoint refused by the archive", extra={"error": str(exc)})

    async def _write_checkpoint(self) -> None:
        covered: list[SegmentRef] = []
        next_uncovered = self._next_uncovered
        head = self._last_covered_head
        while next_uncovered in self._archived:
            ref, head = self._archived[next_uncovered]
            covered.append(ref)
            next_uncovered = ref.last_sequence + 1
        if next_uncovered == 0:
            return  # not even the genesis entry is archived yet
        checkpoint = Checkpoint(
            chain_id=self.chain_id,
            checkpoint_number=self._checkpoint_number,
            previous_checkpoint_sha256=self._previous_checkpoint,
            last_sequence=next_uncovered - 1,
            head_sha256=head,
            time_unix_nano=self._clock(),
            key_id=self._signer.key_id,
            segments=tuple(covered),
        )
        data, checkpoint_sha256 = sign_checkpoint(checkpoint, self._signer)
        key = checkpoint_key("", self.chain_id, checkpoint.checkpoint_number, checkpoint.last_sequence)
        await self._put_with_retry(key, data, hashlib.sha256(data).digest())
        # Only a stored checkpoint moves the state on; a cancelled write leaves it for the next one.
        for ref in covered:
            del self._archived[ref.first_sequence]
        self._next_uncovered = next_uncovered
        self._last_covered_head = head
        self._checkpoint_number += 1
        self._previous_checkpoint = checkpoint_sha256
        self.stats.checkpoints_written += 1
        self.stats.last_checkpoint_unix = checkpoint.time_unix_nano / 1e9
