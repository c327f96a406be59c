"""Delivery to Loki: a bounded queue of archived segments, batched pushes, retries, per-reason counts.

Loki is fed only with records already stored in the archive, and on its own queue and task: a slow
or failing Loki never delays sealing, archiving or the acknowledgement to the collector.

- Batching: entries are pushed in batches up to ``batch_max_bytes``, or whatever has waited
  ``batch_max_wait`` seconds.
- Retries: 429, 5xx and connection errors are retried with backoff and jitter (honouring
  Retry-After) until they succeed or the sidecar shuts down. A batch is pushed again only after a
  failure, never after a success.
- 400: not retried. Loki stores the valid entries of a partly invalid push; the rest are counted by
  reason (``collector_ext_loki_entries_rejected_total{reason}``) and logged without their content.
  The records stay in the archive.
- 413: the batch is split in halves and each is pushed.
- Queue full (Loki down for long): without a spool, the oldest queued segments are dropped and
  counted (``reason="queue_full"``); the archive keeps them, and ``verify --loki-url`` shows the gap.
  With a spool nothing is dropped: the sender takes segments from the spool only while its queue
  has room, and reports through ``on_delivered`` the last sequence of each segment it has wholly
  pushed (or had refused), which becomes its persisted cursor.
- ``stats.undelivered_since``: when the oldest segment not yet wholly pushed or refused was offered
  (``collector_ext_loki_oldest_undelivered_seconds`` without a spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collector_ext.deliver.loki.client import (
    LokiClient,
    LokiConfigurationError,
    LokiRejectedError,
    LokiRequestTooLargeError,
)
from collector_ext.deliver.loki.mapping import EntryMapper
from collector_ext.deliver.loki.push import EncodedEntry, EntryEncoder, json_body, protobuf_body, snappy_block
from collector_ext.errors import DeliveryError
from collector_ext.retry import RetryPolicy, retry_async
from collector_ext.seal.entry import ENTRY_HASH_PREFIX

log = logging.getLogger(__name__)

YIELD_EVERY = 256


@dataclass(frozen=True, slots=True)
class LokiSettings:
    batch_max_bytes: int = 1024 * 1024
    batch_max_wait: float = 1.0
    max_queue_records: int = 500_000
    # Raw entry bytes held in memory; beyond them segments wait on disk: in the spool (the follower
    # reads no further) or, without one, in the Loki process's overflow file.
    max_queue_bytes: int = 2 * 1024 * 1024
    json_body: bool = False
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(initial_delay=0.5, max_delay=30.0))


@dataclass
class LokiStats:
    entries_pushed: int = 0
    pushes: int = 0
    push_retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    queued_records: int = 0
    queued_bytes: int = 0  # entry bytes of the queued records, before mapping
    failing_since: float | None = None
    # time.monotonic() when the oldest record not yet pushed or refused was offered (the Loki process
    # reports when it was spooled instead); None: nothing waits
    undelivered_since: float | None = None
    spool_records_missing: int = 0  # reported by the spool follower: records whose file vanished

    def reject(self, reason: str, count: int) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count


@dataclass(frozen=True, slots=True)
class _ArchivedSegment:
    entries: Sequence[bytes]
    signatures: Sequence[bytes]
    last_sequence: int | None
    offered_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _SegmentEnd:
    mapped_total: int  # entries mapped before the segment's end
    last_sequence: int | None
    offered_at: float


class LokiSender:
    def __init__(
        self,
        client: LokiClient,
        mapper: EntryMapper,
        settings: LokiSettings | None = None,
        *,
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._on_delivered = on_delivered
        # mapped segments whose entries are not all delivered yet, oldest first
        self._segment_ends: deque[_SegmentEnd] = deque()
        self._mapped_total = 0
        self._delivered_total = 0
        self._settings = settings or LokiSettings()
        # Records wait as their encoded Loki entries (one bytes object each), not as mapped objects.
        self._encoder = EntryEncoder(mapper, json_body=self._settings.json_body)
        self._segments: deque[_ArchivedSegment] = deque()
        self._mapped: deque[EncodedEntry] = deque()
        self._mapped_bytes = 0
        self._oldest_at: float | None = None
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        # Checked by the run loop: a cancellation can be lost inside asyncio.wait_for on Python 3.11.
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = LokiStats()

    async def start(self) -> None:
        await self._client.open()
        self._task = asyncio.create_task(self._run(), name="loki-sender")

    def offer(self, entries: Sequence[bytes], signatures: Sequence[bytes], last_sequence: int | None = None) -> None:
        """Queue the records of one segment (called on the event loop; O(1)). ``last_sequence`` is
        reported to ``on_delivered`` once every record of the segment is pushed or refused."""
        now = time.monotonic()
        self._segments.append(_ArchivedSegment(entries, signatures, last_sequence, now))
        self._drained.clear()
        self.stats.queued_records += len(entries)
        self.stats.queued_bytes += sum(map(len, entries))
        if self._oldest_at is None:
            self._oldest_at = now
        while self.stats.queued_records > self._settings.max_queue_records and len(self._segments) > 1:
            dropped = self._segments.popleft()
            self.stats.queued_records -= len(dropped.entries)
            self.stats.queued_bytes -= sum(map(len, dropped.entries))
            self.stats.reject("queue_full", len(dropped.entries))
        self._note_undelivered()
        self._wakeup.set()

    async def close(self, drain_timeout: float) -> None:
        """Push what is queued as far as ``drain_timeout`` allows, then stop."""
        deadline = time.monotonic() + drain_timeout
        self._settings = dataclasses.replace(self._settings, batch_max_wait=0.0)
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout=max(0.0, deadline - time.monotonic()))
        self._closing.set()
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = self.stats.queued_records
        if left:
            log.warning("records not pushed to Loki at shutdown (they are in the archive)", extra={"records": left})
        await self._client.close()

    # -- batching -----------------------------------------------------------------------------------
    async def _map_next_segment(self) -> None:
        """Map one queued segment, yielding to the event loop every few hundred records: mapping is
        CPU work on the loop that also answers Export calls, and must not hold it for long."""
        segment = self._segments.popleft()
        base = hashlib.sha256(ENTRY_HASH_PREFIX)
        encode = self._encoder.encode
        mapped = self._mapped
        entries, signatures = segment.entries, segment.signatures
        for first in range(0, len(entries), YIELD_EVERY):
            if first:
                await asyncio.sleep(0)
            chunk = entries[first : first + YIELD_EVERY]
            count = len(mapped)
            size = 0
            for entry, signature in zip(chunk, signatures[first : first + YIELD_EVERY], strict=True):
                digest = base.copy()
                digest.update(entry)
                encoded = encode(entry, digest.digest(), signature)
                if encoded is not None:
                    mapped.append(encoded)
                    size += len(encoded.data)
            # Counted a chunk at a time: nothing else runs on the loop before the next await.
            count = len(mapped) - count
            self._mapped_total += count
            self._mapped_bytes += size + 4 * count  # EncodedEntry.size() of each
            self.stats.queued_records -= len(chunk)
            self.stats.queued_bytes -= sum(map(len, chunk))
        self._segment_ends.append(_SegmentEnd(self._mapped_total, segment.last_sequence, segment.offered_at))
        self._report_delivered()

    def _report_delivered(self) -> None:
        last = None
        while self._segment_ends and self._segment_ends[0].mapped_total <= self._delivered_total:
            end = self._segment_ends.popleft()
            if end.last_sequence is not None:
                last = end.last_sequence
        if last is not None and self._on_delivered is not None:
            self._on_delivered(last)
        self._note_undelivered()

    def _note_undelivered(self) -> None:
        """Keep ``stats.undelivered_since``: when the oldest segment not wholly delivered was offered."""
        if self._segment_ends:
            self.stats.undelivered_since = self._segment_ends[0].offered_at
        elif self._segments:
            self.stats.undelivered_since = self._segments[0].offered_at
        else:
            self.stats.undelivered_since = None

    async def _take_batch(self) -> list[EncodedEntry]:
        limit = self._settings.batch_max_bytes
        while self._segments and self._mapped_bytes < limit:
            await self._map_next_segment()
        batch: list[EncodedEntry] = []
        size = 0
        while self._mapped and (not batch or size + self._mapped[0].size() <= limit):
            entry = self._mapped.popleft()
            entry_size = entry.size()
            size += entry_size
            self._mapped_bytes -= entry_size
            batch.append(entry)
        if not self._segments and not self._mapped:
            self._oldest_at = None
        return batch

    async def _encode(self, batch: list[EncodedEntry]) -> bytes:
        if self._settings.json_body:
            return json_body(batch)
        # The entries are encoded already: joining them is a copy, and snappy releases the GIL.
        return await asyncio.to_thread(snappy_block, protobuf_body(batch))

    def _batch_ready(self) -> bool:
        if not self._segments and not self._mapped:
            return False
        if self._mapped_bytes >= self._settings.batch_max_bytes or len(self._segments) > 1:
            return True
        waited = time.monotonic() - (self._oldest_at or time.monotonic())
        return waited >= self._settings.batch_max_wait

    async def _run(self) -> None:
        while not self._closing.is_set():
            if not self._batch_ready():
                self._wakeup.clear()
                timeout = self._settings.batch_max_wait if (self._segments or self._mapped) else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
                continue
            batch = await self._take_batch()
            if batch:
                await self._deliver(batch)
                self._delivered_total += len(batch)
                self._report_delivered()
            if not self._segments and not self._mapped:
                self._drained.set()

    # -- delivery -----------------------------------------------------------------------------------
    async def _deliver(self, batch: list[EncodedEntry]) -> None:
        body = await self._encode(batch)

        def on_retry(error: DeliveryError, attempt: int, delay: float) -> None:
            self.stats.push_retries += 1
            if self.stats.failing_since is None:
                self.stats.failing_since = time.monotonic()
            log.warning(
                "Loki push failed; retrying",
                extra={"attempt": attempt + 1, "delay_s": round(delay, 3), "error": str(error), "entries": len(batch)},
            )

        while True:
            try:
                await retry_async(
                    lambda: self._client.push(body, json_body=self._settings.json_body),
                    policy=self._settings.retry,
                    on_retry=on_retry,
                )
            except LokiRejectedError as exc:
                # A 400 without a reason Loki's messages name still refused something: count it all.
                reasons = exc.reasons or {"other": len(batch)}
                for reason, count in reasons.items():
                    self.stats.reject(reason, count)
                self.stats.entries_pushed += max(0, len(batch) - sum(reasons.values()))
                self.stats.pushes += 1
                self.stats.failing_since = None
                log.warning("Loki refused entries (they remain in the archive)", extra={"reasons": reasons})
                return
            except LokiRequestTooLargeError:
                if len(batch) == 1:
                    self.stats.reject("request_too_large", 1)
                    return
                half = len(batch) // 2
                await self._deliver(batch[:half])
                await self._deliver(batch[half:])
                return
            except LokiConfigurationError as exc:
                if self.stats.failing_since is None:
                    self.stats.failing_since = time.monotonic()
                log.error("Loki refuses the sidecar's pushes", extra={"error": str(exc)})
                await asyncio.sleep(self._settings.retry.max_delay)
                continue
            self.stats.entries_pushed += len(batch)
            self.stats.pushes += 1
            self.stats.failing_since = None
            return
