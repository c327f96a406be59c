"""The Loki sender in a process of its own.

Mapping a record to Loki's form and encoding the push costs about as much CPU as signing it. Done on
the sidecar's event loop it would delay the answers to Export calls; done here, the event loop only
hands each archived segment's bytes to a pipe. The child runs the ordinary ``LokiSender`` on its own
event loop and reports its counters back a few times a second; ``LokiProcess`` looks like a
``LokiSender`` to the rest of the sidecar (``offer``, ``start``, ``close``, ``stats``).

Two ways in:

- With a spool (``spool_directory``), the child reads sealed segments from the spool itself
  (``spool_follower``), from its persisted cursor (``loki.cursor``) onwards and strictly in
  sequence order, and takes the next file only while its queue has room: nothing is dropped however
  long Loki is down, and after a restart it resumes where it stopped. The parent only wakes it
  (``notify``) when a segment is spooled. A segment pushed again after a crash is harmless: Loki
  keeps one copy of an entry with the same stream, time and line.
- Without a spool, the parent hands each archived segment's bytes to a pipe (``offer``). The child
  keeps at most ``max_queue_bytes`` of entries in memory; the segments after them wait, in order, in
  an unlinked temporary file (``overflow.OverflowFile``). The parent bounds the backlog: when the
  child falls behind by more than ``max_queue_records``, whole segments are dropped (and counted as
  ``queue_full``), so memory and disk stay bounded however long Loki is down.

The child is started with ``spawn`` (forking a process with grpc threads is unsafe) and logs JSON
on the inherited stderr, as the sidecar does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector_ext.child_process import exit_with_parent
from collector_ext.deliver.loki.client import LokiClient, LokiConnection
from collector_ext.deliver.loki.mapping import EntryMapper, MappingSettings
from collector_ext.deliver.loki.overflow import OverflowFile
from collector_ext.deliver.loki.sender import LokiSender, LokiSettings, LokiStats
from collector_ext.logging_setup import configure_logging
from collector_ext.memory import pin_mmap_threshold, trim_heap

if TYPE_CHECKING:
    # Imported where a spool is followed: the spool's modules bring the signing libraries (several
    # MiB of this process's memory), which the Loki process without a spool never needs.
    from collector_ext.deliver.loki.spool_follower import SpoolFollower

log = logging.getLogger(__name__)

_STOP = "stop"
_WAKE = "wake"
REPORT_INTERVAL = 0.2
PROCESS_NAME = b"loki-sender"  # what ps, top and /proc/PID/comm show for the child
_PR_SET_NAME = 15  # Linux prctl option
_M_ARENA_MAX = -8  # glibc mallopt option
TRIM_EVERY = 5  # reports: give freed heap pages back about once a second


def _one_malloc_arena() -> None:
    """One glibc heap for all threads: the inbox thread unpickles segments and worker threads compress
    bodies, and with an arena each their freed pages would stay resident in several heaps."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


def _name_process(name: bytes) -> None:
    """Give this process a name of its own in ps and top (Linux); elsewhere nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _child_main(
    connection: LokiConnection,
    mapping: MappingSettings,
    settings: LokiSettings,
    inbox: Any,
    reports: Connection,
    log_level: int,
    spool_directory: Path | None,
    parent_pid: int,
) -> None:
    exit_with_parent(parent_pid)
    _name_process(PROCESS_NAME)
    _one_malloc_arena()
    pin_mmap_threshold()
    configure_logging(logging.getLevelName(log_level))
    asyncio.run(_child_loop(connection, mapping, settings, inbox, reports, spool_directory))


def _snapshot(stats: LokiStats, follower: SpoolFollower | None, *, final: bool = False) -> dict[str, Any]:
    """The counters the child reports to the parent (picklable, relative times)."""
    if follower is None:
        since = stats.undelivered_since
        undelivered_for = None if since is None else time.monotonic() - since
    else:
        # With a spool, records wait there before the sender sees them: their age comes from the
        # spool's files (each named with its creation time), not from the sender's queue.
        created = follower.oldest_undelivered_unix_nano()
        undelivered_for = None if created is None else max(0.0, time.time() - created / 1e9)
    return {
        "entries_pushed": stats.entries_pushed,
        "pushes": stats.pushes,
        "push_retries": stats.push_retries,
        "rejected": dict(stats.rejected),
        "queued_records": stats.queued_records,
        "failing_for": None if stats.failing_since is None else time.monotonic() - stats.failing_since,
        "undelivered_for": undelivered_for,
        "spool_records_missing": 0 if follower is None else follower.missing_records,
        "final": final,
    }


async def _child_loop(
    connection: LokiConnection,
    mapping: MappingSettings,
    settings: LokiSettings,
    inbox: Any,
    reports: Connection,
    spool_directory: Path | None,
) -> None:
    if spool_directory is not None:
        from collector_ext.deliver.loki.spool_follower import SpoolFollower
    follower = (
        SpoolFollower(
            spool_directory, max_queue_records=settings.max_queue_records, max_queue_bytes=settings.max_queue_bytes
        )
        if spool_directory is not None
        else None
    )
    overflow = OverflowFile() if follower is None else None
    # Without a spool the parent bounds the backlog and the child keeps whatever it was given (in
    # memory up to max_queue_bytes, the rest in its overflow file); with one, the follower takes from
    # the spool only while there is room. Either way nothing is dropped here.
    sender = LokiSender(
        LokiClient(connection),
        EntryMapper(mapping),
        dataclasses.replace(settings, max_queue_records=1 << 62),
        on_delivered=follower.delivered if follower is not None else None,
    )
    await sender.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain_timeout = [0.0]

    def receive() -> None:
        while True:
            item = inbox.get()
            if isinstance(item, tuple) and item[0] == _STOP:
                drain_timeout[0] = item[1]
                loop.call_soon_threadsafe(stop.set)
                return
            if item == _WAKE:
                if follower is not None:
                    loop.call_soon_threadsafe(follower.wake.set)
                continue
            entries, signatures = item
            if overflow is not None and spill(entries, signatures):
                continue
            loop.call_soon_threadsafe(admit, entries, signatures)

    overflow_empty = asyncio.Event()
    last_spill_log = [-1e9]  # at most one warning a minute
    # Entry bytes handed to the loop and not yet offered to the sender (guarded by ``waiting_lock``).
    # The inbox thread decides where a segment goes: a busy loop must not let segments pile up in
    # its callbacks, in memory, while the pipe is read as fast as the sidecar writes it.
    waiting = [0]
    waiting_lock = threading.Lock()

    def spill(entries: list[bytes], signatures: list[bytes]) -> bool:
        """On the inbox thread: True when the segment went to the overflow file (the sender has no
        room, or older segments wait there); otherwise it is counted as waiting for the loop."""
        assert overflow is not None
        size = sum(map(len, entries))
        with waiting_lock:
            room = overflow.segments == 0 and sender.stats.queued_bytes + waiting[0] < settings.max_queue_bytes
            if room:
                waiting[0] += size
                return False
        if overflow.segments == 0 and time.monotonic() - last_spill_log[0] >= 60:
            last_spill_log[0] = time.monotonic()
            log.warning(
                "Loki is behind: archived records beyond loki.max_queue_bytes wait in a temporary file",
                extra={"queued_bytes": sender.stats.queued_bytes},
            )
        overflow.put(entries, signatures)
        loop.call_soon_threadsafe(overflow_empty.clear)
        return True

    def admit(entries: list[bytes], signatures: list[bytes]) -> None:
        """On the loop: a segment the inbox thread found room for."""
        sender.offer(entries, signatures)
        if overflow is not None:
            with waiting_lock:
                waiting[0] -= sum(map(len, entries))

    def refill() -> None:
        """Move segments from the disk to the sender while it has room, and only once the loop has
        offered every segment handed to it before (those are older)."""
        while overflow is not None and overflow.segments:
            with waiting_lock:
                if waiting[0] or sender.stats.queued_bytes >= settings.max_queue_bytes:
                    break
            item = overflow.take()
            if item is not None:
                sender.offer(*item)
        if overflow is not None and overflow.segments == 0:
            overflow_empty.set()

    async def refill_forever() -> None:
        while True:
            refill()
            await asyncio.sleep(0.05)

    threading.Thread(target=receive, name="loki-inbox", daemon=True).start()
    following = asyncio.create_task(follower.run(sender, stop)) if follower is not None else None
    refilling = asyncio.create_task(refill_forever()) if overflow is not None else None

    async def report() -> None:
        count = 0
        while True:
            reports.send(_snapshot(sender.stats, follower))
            count += 1
            if count % TRIM_EVERY == 0:
                trim_heap()  # batches come and go as megabyte buffers and many small objects
            await asyncio.sleep(REPORT_INTERVAL)

    reporter = asyncio.create_task(report())
    await stop.wait()
    if follower is not None and following is not None:
        follower.wake.set()  # the follower sees ``stop`` and finishes its pass
        await following
    deadline = time.monotonic() + drain_timeout[0]
    if overflow is not None and refilling is not None:
        # The refill task keeps feeding the sender meanwhile.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(overflow_empty.wait(), timeout=max(0.0, deadline - time.monotonic()))
        refilling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refilling
    await sender.close(drain_timeout=max(0.0, deadline - time.monotonic()))
    if follower is not None:
        await follower.write_cursor()
    if overflow is not None:
        if overflow.records:
            log.warning(
                "records not pushed to Loki at shutdown (they are in the archive)", extra={"records": overflow.records}
            )
        overflow.close()
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    reports.send(_snapshot(sender.stats, follower, final=True))


class LokiProcess:
    """A LokiSender running in a child process; the parent side of it."""

    def __init__(
        self,
        connection: LokiConnection,
        mapping: MappingSettings,
        settings: LokiSettings,
        *,
        spool_directory: Path | None = None,
    ) -> None:
        self._spool_directory = spool_directory
        self._connection = connection
        self._mapping = mapping
        self._settings = settings
        context = multiprocessing.get_context("spawn")
        self._inbox: Any = context.Queue()
        self._reports, child_reports = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_child_main,
            args=(
                connection,
                mapping,
                settings,
                self._inbox,
                child_reports,
                logging.getLogger().level,
                spool_directory,
                os.getpid(),
            ),
            name="collector-ext-loki",
            daemon=True,
        )
        self._child_reports = child_reports
        self._offered = 0
        self._dropped: dict[str, int] = {}
        self._last: dict[str, Any] = {}
        self._reader: threading.Thread | None = None
        self.stats = LokiStats()

    async def start(self) -> None:
        await asyncio.to_thread(self._process.start)
        self._child_reports.close()
        self._reader = threading.Thread(target=self._read_reports, name="loki-reports", daemon=True)
        self._reader.start()

    def _read_reports(self) -> None:
        while True:
            try:
                report = self._reports.recv()
            except (EOFError, OSError):
                return
            self._last = report
            self._refresh()
            if report.get("final"):
                return

    def _refresh(self) -> None:
        report = self._last
        rejected = dict(report.get("rejected", {}))
        for reason, count in self._dropped.items():
            rejected[reason] = rejected.get(reason, 0) + count
        failing_for = report.get("failing_for")
        undelivered_for = report.get("undelivered_for")
        self.stats = LokiStats(
            entries_pushed=int(report.get("entries_pushed", 0)),
            pushes=int(report.get("pushes", 0)),
            push_retries=int(report.get("push_retries", 0)),
            rejected=rejected,
            queued_records=(
                int(report.get("queued_records", 0)) if self._spool_directory is not None else max(0, self._backlog())
            ),
            failing_since=None if failing_for is None else time.monotonic() - float(failing_for),
            undelivered_since=None if undelivered_for is None else time.monotonic() - float(undelivered_for),
            spool_records_missing=int(report.get("spool_records_missing", 0)),
        )

    def _backlog(self) -> int:
        """Records handed to the child that it has not yet pushed or refused."""
        report = self._last
        done = int(report.get("entries_pushed", 0)) + sum(int(v) for v in report.get("rejected", {}).values())
        return self._offered - sum(self._dropped.values()) - done

    def notify(self, _spooled: object = None) -> None:
        """A segment was spooled: wake the child's spool reader (called on the event loop)."""
        with contextlib.suppress(queue.Full, ValueError):
            self._inbox.put_nowait(_WAKE)

    def offer(self, entries: Sequence[bytes], signatures: Sequence[bytes]) -> None:
        """Hand one archived segment to the child (called on the event loop; a pipe write)."""
        if self._backlog() + len(entries) > self._settings.max_queue_records:
            self._dropped["queue_full"] = self._dropped.get("queue_full", 0) + len(entries)
            self._offered += len(entries)
            self._refresh()
            return
        self._offered += len(entries)
        try:
            self._inbox.put_nowait((list(entries), list(signatures)))
        except queue.Full:
            self._dropped["queue_full"] = self._dropped.get("queue_full", 0) + len(entries)

    async def close(self, drain_timeout: float) -> None:
        """Let the child push what it holds (within ``drain_timeout``), then stop it."""
        if not self._process.is_alive():
            return
        self._inbox.put((_STOP, drain_timeout))
        await asyncio.to_thread(self._process.join, drain_timeout + 5)
        if self._process.is_alive():
            log.warning("Loki sender did not stop in time; terminating it")
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 2)
        self._inbox.close()
