"""The Loki process's reader of the spool: every sealed segment, in sequence order, none skipped.

The sidecar renames each new segment file into the spool while this follower lists the directory.
A listing taken during a rename need not show every file (POSIX leaves entries added during a
``readdir`` unspecified; on ext4's hashed directories a listing of a few thousand files shows
segment N+1 without N now and then). So the follower never infers a segment from its successor: it
offers segments strictly by sequence number, and when the next one is not in a listing it lists
again. The sidecar writes files one at a time in sequence order and trims only what the Loki cursor
covers, so a listing started after one that showed N+1 does show N, unless someone removed it. A
gap that outlasts several listings and a grace period is such a removal: it is logged as an error,
counted (``collector_ext_loki_spool_records_missing_total``) and passed, so delivery goes on.

The cursor (``loki.cursor``) moves only to a sequence the sender reported delivered, that is, every
record up to it was pushed or refused by Loki.

No link is followed: the listing skips anything but regular files, segments are read with
O_NOFOLLOW, and the cursor is written with O_NOFOLLOW (a link named ``loki.cursor`` is refused, so it
cannot make this process create or overwrite a file outside the spool).

Not here: pushing (``LokiSender``), trimming (the sidecar, up to this cursor), the child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from collector_ext.deliver.loki.sender import LokiStats
from collector_ext.errors import MalformedObjectError
from collector_ext.files import read_regular_file
from collector_ext.seal.segment import decode_segment
from collector_ext.spool import (
    SpooledSegment,
    SpoolError,
    list_segment_files,
    read_loki_cursor,
    write_loki_cursor,
)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
# While a segment is missing from the listings: list again this soon, and pass it (as removed) only
# after this many listings and seconds.
GAP_RELIST_INTERVAL = 0.05
GAP_LISTINGS = 5
GAP_GRACE_SECONDS = 10.0
# The sender holds at most this many records in memory (a few pushes' worth); the backlog waits on
# disk however far behind Loki is.
READ_AHEAD_RECORDS = 5_000
READ_AHEAD_BYTES = 4 * 1024 * 1024  # and at most this many entry bytes (records can be large)


class SegmentSink(Protocol):
    """What the follower feeds: ``LokiSender``."""

    stats: LokiStats

    def offer(self, entries: Sequence[bytes], signatures: Sequence[bytes], last_sequence: int | None = None) -> None:
        """Queue one segment's records; ``last_sequence`` is reported back once all are delivered."""


@dataclass(slots=True)
class _Gap:
    first_missing: int
    seen_since: float
    listings: int


class SpoolFollower:
    """Offers the spool's segment files to a sink in sequence order while the sink has room, and
    persists what the sink delivered as the Loki cursor."""

    def __init__(
        self,
        directory: Path,
        *,
        max_queue_records: int = READ_AHEAD_RECORDS,
        max_queue_bytes: int = READ_AHEAD_BYTES,
        list_files: Callable[[Path], list[SpooledSegment]] = list_segment_files,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            max_queue_records: offer no more while the sink holds this many records,
            max_queue_bytes: or this many entry bytes.
            list_files: the directory listing (tests replay a listing that races a rename).
            clock: monotonic seconds, for the grace period of a missing segment.
        """
        self._directory = directory
        self._max_queued = min(max_queue_records, READ_AHEAD_RECORDS)
        self._max_bytes = min(max_queue_bytes, READ_AHEAD_BYTES)
        self._list_files = list_files
        self._clock = clock
        self._chain_id = b""
        self._next: int | None = None  # the next sequence to offer; None: not known yet
        self._delivered = -1  # every record up to here was pushed (or refused) by Loki
        self._written = -1  # what loki.cursor says
        self._gap: _Gap | None = None
        self._listed: list[SpooledSegment] = []
        self.missing_records = 0  # sequences passed because their file vanished from the spool
        self.wake = asyncio.Event()

    # -- progress ---------------------------------------------------------------------------------
    def delivered(self, sequence: int) -> None:
        """The sink's ``on_delivered``: every offered record up to ``sequence`` is in Loki."""
        if self._next is None or sequence >= self._next:
            # The sink reports only what was offered, in order; anything else is a bug, and saving it
            # would let the sidecar trim records Loki never had.
            log.error(
                "Loki sender reported a sequence it was never offered; cursor not moved",
                extra={"sequence": sequence, "offered_before": self._next},
            )
            return
        self._delivered = max(self._delivered, sequence)

    async def write_cursor(self) -> None:
        delivered = self._delivered
        if delivered > self._written and self._chain_id:
            try:
                await asyncio.to_thread(write_loki_cursor, self._directory, self._chain_id, delivered)
                self._written = delivered
            except SpoolError as exc:
                log.warning("Loki cursor not saved", extra={"error": str(exc)})

    def oldest_undelivered_unix_nano(self) -> int | None:
        """When the oldest spooled segment Loki does not wholly have yet was created (from the last
        listing), or None when Loki has every listed one."""
        for spooled in self._listed:
            if spooled.last_sequence > self._delivered:
                return spooled.created_unix_nano
        return None

    # -- following --------------------------------------------------------------------------------
    async def run(self, sink: SegmentSink, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set: a pass at every wake-up, and at least every POLL_INTERVAL."""
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.follow_once(sink, stop)
            except (OSError, MalformedObjectError) as exc:
                # Never stop following: a failed pass is retried at the next wake-up or poll.
                log.error("reading the spool for Loki failed; retrying", extra={"error": str(exc)})
            await self.write_cursor()
            timeout = GAP_RELIST_INTERVAL if self._gap is not None else POLL_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)

    async def follow_once(self, sink: SegmentSink, stop: asyncio.Event) -> None:
        """List the spool and offer, in order, each segment from the next expected sequence on, up
        to the first one missing from the listing (or while ``stop`` is unset and the sink has room)."""
        files = await self._list()
        if not files:
            return
        if self._next is None:
            # The cursor does not know this chain: start at its oldest file, as a listing that began
            # after this one ended shows it (this one may have missed a file renamed meanwhile).
            again = await self._list()
            self._next = min(s.first_sequence for s in files + again)
            files = again or files
        for spooled in files:
            if spooled.last_sequence < self._next:
                continue
            if spooled.first_sequence > self._next and not self._pass_gap(spooled):
                return
            self._gap = None
            while sink.stats.queued_records >= self._max_queued or sink.stats.queued_bytes >= self._max_bytes:
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)
                await self.write_cursor()
            try:
                data = await asyncio.to_thread(read_regular_file, spooled.path)
            except FileNotFoundError:
                return  # removed since the listing: the next listings show a gap, handled above
            segment = decode_segment(data)
            records = segment.records[self._next - spooled.first_sequence :]
            sink.offer([r.entry for r in records], [r.signature for r in records], spooled.last_sequence)
            self._next = spooled.last_sequence + 1

    async def _list(self) -> list[SpooledSegment]:
        """The newest chain's files, oldest first; switching chains restarts from its cursor."""
        files = await asyncio.to_thread(self._list_files, self._directory)
        if not files:
            return []
        if files[-1].chain_id != self._chain_id:
            self._chain_id = files[-1].chain_id
            cursor = await asyncio.to_thread(read_loki_cursor, self._directory, self._chain_id)
            self._next = None if cursor < 0 else cursor + 1
            self._delivered = self._written = cursor
            self._gap = None
        self._listed = [s for s in files if s.chain_id == self._chain_id]
        return self._listed

    def _pass_gap(self, after: SpooledSegment) -> bool:
        """The listing holds ``after`` but not the sequences before it from ``self._next``. True when
        that has lasted long enough to mean the files are gone (then they are reported and passed);
        False to wait for a later listing."""
        assert self._next is not None
        now = self._clock()
        gap = self._gap
        if gap is None or gap.first_missing != self._next:
            self._gap = _Gap(self._next, now, 1)
            return False
        gap.listings += 1
        if gap.listings < GAP_LISTINGS or now - gap.seen_since < GAP_GRACE_SECONDS:
            return False
        missing = after.first_sequence - self._next
        self.missing_records += missing
        log.error(
            "spooled records vanished before Loki had them (a spool file was removed); passing them",
            extra={
                "chain_id": self._chain_id.hex(),
                "first_sequence": self._next,
                "last_sequence": after.first_sequence - 1,
                "records": missing,
                "waited_s": round(now - gap.seen_since, 1),
            },
        )
        self._next = after.first_sequence
        return True
