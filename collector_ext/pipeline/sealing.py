"""Sealing: records into the chain, the chain into segments, segments to the signing pool.

Takes batches of payloads (``ChainSealer.seal``, on the event loop, so the order is total). Chains
them at once (sequence numbers, links, entry hashes), appends them to the open segment and hands
their hashes to the signing pool: a request's hashes at once while a worker is free, otherwise in
chunks of ``SIGNING_BATCH`` (every hand-over to a worker process costs the event loop some hundreds
of microseconds). Produces closed segments, in sequence order, on ``ClosedSegments``: a segment
closes when it is full (records or bytes, or the format's object limits) or its first record has
waited ``max_linger``, and only once a stage slot is free, so under load segments grow.

Guarantees: every sealed record is in exactly one segment; a batch too large for the open segment
continues in new ones, and no segment passes MAX_SEGMENT_OBJECT_BYTES or MAX_SEGMENT_RECORDS
(FORMAT.md 4.1). ``signatures`` gives a closed segment's signatures, signing again on a fresh pool
(a worker died) or fresh token sessions (the token failed) rather than lose chained entries. It does
not write anything: durability is the persister's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor

from collector_ext.errors import ArchiveUnavailableError
from collector_ext.pipeline.queues import Backlog, ClosedSegments, OpenSegment, all_of
from collector_ext.pipeline.settings import PipelineSettings, PipelineStats
from collector_ext.seal.chain import ChainHead, chain_entries, sign_entry_hashes
from collector_ext.seal.entry import SIGNATURE_SIZE, EntryKind
from collector_ext.seal.framing import MAX_SEGMENT_OBJECT_BYTES, MAX_SEGMENT_RECORDS
from collector_ext.seal.keys import Signer
from collector_ext.seal.segment import RECORD_OVERHEAD_BYTES, segment_object_bound
from collector_ext.signing_pool import SigningPool
from collector_ext.token_signer import SigningTokenError

log = logging.getLogger("collector_ext.pipeline")

MIN_SIGNING_CHUNK = 64
# Hashes of the open segment handed to the signing pool together while its workers are busy: every
# hand-over to a worker process costs the event loop's process some hundreds of microseconds (the
# executor's threads, pickling, wake-ups), so under load a few large chunks per segment rather than
# a small one per request. An idle pool gets a request's hashes at once (no added latency); the rest
# of a segment is handed over when it closes.
SIGNING_BATCH = 1024


class ChainSealer:
    """Owns the chain's head and its open segment; see the module docstring."""

    def __init__(
        self,
        head: ChainHead,
        signing: SigningPool,
        record_signer: Signer,
        closed: ClosedSegments,
        backlog: Backlog,
        stats: PipelineStats,
        settings: PipelineSettings,
        *,
        spooled: bool,
        entry_signer: Signer | None,
        clock: Callable[[], int],
        stopping: asyncio.Event,
    ) -> None:
        """``record_signer``'s key is the signing pool's; ``entry_signer`` (run_key mode: the chain's key)
        signs the chain's own entries instead, inline; ``spooled``: segments get a ``spooled`` future."""
        self.head = head
        self._signing = signing
        self._record_signer = record_signer
        self._entry_signer = entry_signer
        self._closed = closed
        self._backlog = backlog
        self._stats = stats
        self._settings = settings
        self._spooled = spooled
        self._clock = clock
        self._stopping = stopping
        self._open: OpenSegment | None = None
        self._signing_in_flight = 0  # chunks handed to the signing pool, not yet signed
        self._full_segments: collections.deque[OpenSegment] = collections.deque()
        self._segment_ready = asyncio.Event()
        self._segment_full = asyncio.Event()

    def seal(
        self, kind: EntryKind, payloads: list[bytes], size: int | None = None, *, signer: Signer | None = None
    ) -> asyncio.Future[None]:
        """Chain ``payloads`` into the open segment; ``size`` is their entries' total length when the
        caller knows it already. ``signer`` (a retired key, at start-up only) signs instead of the
        signing pool; its entries get a segment of their own. A batch that would carry the open
        segment past MAX_SEGMENT_OBJECT_BYTES continues in new segments. Returns the future that is
        done when the records are durable (per the ack mode)."""
        loop = asyncio.get_running_loop()
        if signer is None and kind != EntryKind.LOG_RECORD and self._entry_signer is not None:
            signer = self._entry_signer  # in run_key mode the pool holds the run key, which signs records only
        if self._open is not None and self._open.signer is not signer:
            self.close_open_segment()  # entries signed inline by another key get a segment of their own
        batch = chain_entries(self.head, kind, payloads, (signer or self._record_signer).key_id, self._clock())
        self.head = batch.head
        if size is None:
            size = sum(map(len, batch.entries))
        open_size, open_records = self._open_fill()
        if (
            segment_object_bound(open_size + size, open_records + len(payloads)) <= MAX_SEGMENT_OBJECT_BYTES
            and open_records + len(payloads) <= MAX_SEGMENT_RECORDS
        ):
            durable = self._append(loop, batch.first_sequence, batch.entries, batch.hashes, size, signer)
        else:
            durable = self._append_split(loop, batch.first_sequence, batch.entries, batch.hashes, signer)
        backlog = self._backlog
        backlog.memory_records += len(payloads)
        backlog.memory_bytes += size
        backlog.unarchived_records += len(payloads)
        backlog.all_archived.clear()
        self._stats.records_sealed += len(payloads)
        self._segment_ready.set()
        return durable

    def close_soon(self) -> None:
        """At shutdown: close the open segment without waiting for it to fill or linger."""
        if self._open is not None and self._open.entries:
            self._segment_full.set()

    def wake(self) -> None:
        """Wake the flush loop (at shutdown, to see ``stopping``)."""
        self._segment_ready.set()

    def _append_split(
        self,
        loop: asyncio.AbstractEventLoop,
        first_sequence: int,
        entries: list[bytes],
        hashes: list[bytes],
        signer: Signer | None,
    ) -> asyncio.Future[None]:
        """Spread a large batch over as many segments as it needs; durable when all of them are."""
        durables: list[asyncio.Future[None]] = []
        start = 0
        while start < len(entries):
            open_size, open_records = self._open_fill()
            bound = segment_object_bound(open_size, open_records)
            room = MAX_SEGMENT_RECORDS - open_records
            end, size = start, 0
            while end < len(entries) and end - start < room:
                cost = len(entries[end]) + RECORD_OVERHEAD_BYTES
                if bound + cost > MAX_SEGMENT_OBJECT_BYTES and (end > start or self._open is not None):
                    break
                bound += cost
                size += len(entries[end])
                end += 1
            if end == start:
                self.close_open_segment()  # the open segment is full: the rest goes to a new one
                continue
            durables.append(
                self._append(loop, first_sequence + start, entries[start:end], hashes[start:end], size, signer)
            )
            start = end
            if start < len(entries):
                self.close_open_segment()
        if len(durables) == 1:
            return durables[0]
        return asyncio.ensure_future(all_of(durables))

    def _open_fill(self) -> tuple[int, int]:
        """Entry bytes and records in the open segment (0, 0 when none is open)."""
        return (self._open.size, len(self._open.entries)) if self._open is not None else (0, 0)

    def close_open_segment(self) -> None:
        """Hand the open segment to the flush loop now; the next entries open a new one."""
        if self._open is not None and self._open.entries:
            self._full_segments.append(self._open)
            self._open = None
            self._segment_ready.set()

    def _append(
        self,
        loop: asyncio.AbstractEventLoop,
        first_sequence: int,
        entries: list[bytes],
        hashes: list[bytes],
        size: int,
        signer: Signer | None,
    ) -> asyncio.Future[None]:
        segment = self._open
        if segment is None:
            segment = OpenSegment(first_sequence=first_sequence, created_unix_nano=self._clock(), signer=signer)
            segment.archived = loop.create_future()
            if self._spooled:
                segment.spooled = loop.create_future()
            self._open = segment
        assert segment.signer is signer, "entries of a retired key are sealed before requests are accepted"
        if signer is not None:
            signed: asyncio.Future[bytes] = loop.create_future()
            signed.set_result(b"".join(sign_entry_hashes(signer, hashes)))
            segment.signature_chunks.append(signed)
            segment.signing_submitted += len(hashes)
        segment.entries += entries
        segment.hashes += hashes
        if (
            len(segment.hashes) - segment.signing_submitted >= SIGNING_BATCH
            or self._signing_in_flight < self._signing.workers
        ):
            self._sign_rest(segment)
        segment.size += size
        if (
            len(segment.entries) >= self._settings.segment_max_records
            or segment.size >= self._settings.segment_max_bytes
        ):
            self._segment_full.set()
        durable = segment.spooled if self._settings.ack == "spool" else segment.archived
        assert durable is not None
        return durable

    def _sign_rest(self, segment: OpenSegment) -> None:
        """Hand the segment's hashes not yet given to the signing pool to it, spread over every
        worker in chunks big enough to make each hand-over cheap."""
        hashes = segment.hashes[segment.signing_submitted :]
        if not hashes:
            return
        chunk_size = max(MIN_SIGNING_CHUNK, -(-len(hashes) // self._signing.workers))
        for start in range(0, len(hashes), chunk_size):
            chunk = self._signing.sign(hashes[start : start + chunk_size])
            self._signing_in_flight += 1
            chunk.add_done_callback(self._signing_done)
            segment.signature_chunks.append(chunk)
        segment.signing_submitted = len(segment.hashes)

    def _signing_done(self, _: asyncio.Future[bytes]) -> None:
        self._signing_in_flight -= 1
        # A worker is free: the open segment's hashes held back while all were busy go now, so a
        # request never waits for a batch to fill or its segment to close (latency at moderate load).
        segment = self._open
        if (
            segment is not None
            and len(segment.hashes) > segment.signing_submitted
            and self._signing_in_flight < self._signing.workers
        ):
            self._sign_rest(segment)

    def _to_persist(self, segment: OpenSegment) -> None:
        """A closed segment goes to the persister; its last hashes go to the signing pool now."""
        self._sign_rest(segment)
        self._closed.queue.put_nowait(segment)

    async def flush_loop(self) -> None:
        """Close segments (full, lingered long enough, or closed early by a large batch) as stage
        slots free up, and put them on the persister's queue in sequence order."""
        slots = self._closed.slots
        while not self._stopping.is_set():
            await self._segment_ready.wait()
            await slots.acquire()
            if self._stopping.is_set():
                slots.release()
                return
            if self._full_segments:
                # Closed early by a large batch: older than the open segment, so first.
                self._to_persist(self._full_segments.popleft())
                continue
            segment = self._open
            if segment is not None and not self._segment_full.is_set():
                linger = self._settings.max_linger - (time.monotonic() - segment.opened_at)
                if linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._segment_full.wait(), timeout=linger)
                if self._full_segments:
                    self._to_persist(self._full_segments.popleft())
                    continue
            segment = self._open
            self._open = None
            self._segment_ready.clear()
            self._segment_full.clear()
            if segment is None or not segment.entries:
                slots.release()
                continue
            self._to_persist(segment)

    async def signatures(self, segment: OpenSegment) -> list[bytes]:
        """The closed segment's signatures, one per entry, in order."""
        self._sign_rest(segment)
        try:
            chunks = await asyncio.gather(*segment.signature_chunks)
        except BrokenExecutor as exc:
            # A signing worker died (killed, out of memory). The entries are chained already: sign
            # them again on a fresh pool rather than lose them.
            log.error("signing worker failed; restarting the signing pool", extra={"error": repr(exc)})
            self._signing.restart()
            if segment.signer is not None:
                chunks = [b"".join(sign_entry_hashes(segment.signer, segment.hashes))]
            else:
                chunks = [await self._signing.sign(segment.hashes)]
        except SigningTokenError as exc:
            chunks = [await self._sign_again_through_the_token(segment, exc)]
        size = SIGNATURE_SIZE
        return [chunk[i : i + size] for chunk in chunks for i in range(0, len(chunk), size)]

    async def _sign_again_through_the_token(self, segment: OpenSegment, error: SigningTokenError) -> bytes:
        """The token failed to sign (removed, logged out, busy): the entries are chained already, so
        they are signed again on fresh sessions, once a second, until the token answers or the
        pipeline stops. Requests meanwhile wait and then get UNAVAILABLE (ack_timeout), so the
        collector keeps their records and retries."""
        while True:
            log.error("the signing token failed; retrying in 1 s on new sessions", extra={"error": str(error)})
            if self._stopping.is_set():
                raise ArchiveUnavailableError("the signing token failed and the pipeline is stopping") from error
            await asyncio.sleep(1.0)
            self._signing.restart()
            try:
                if segment.signer is not None:
                    return b"".join(sign_entry_hashes(segment.signer, segment.hashes))
                return await self._signing.sign(segment.hashes)
            except SigningTokenError as exc:
                error = exc
