"""Resent records: log records sealed twice because the collector sent their batch twice.

The collector may resend a batch it already sent (after a timeout, or because the sidecar crashed
before acknowledging it); the sidecar seals whatever it receives, so the same ``LogPayload`` bytes
then appear at two sequence numbers. That is legitimate (README, "Resends") and never a finding of
tampering, but someone counting events from the archive needs to know. The likeliest place is just
after a restart mark: the collector resends what the crashed run had not acknowledged. So around
every restart mark the log records sealed in the ``RESEND_WINDOW`` entries after it are compared
with the ``RESEND_WINDOW`` log records before it, and one INFO finding per mark gives the count.

Cost matters more than completeness here. A clean archive is verified at several hundred thousand
records per second by a fast path that touches each record once, and this tracker must not slow
that down. Between restart marks it only keeps references to the entry lists of the last few
chunks of records (work per chunk, none per record); the set of earlier payloads is built when a mark is
seen, and only the records inside the window after a mark are looked at one by one. With
``report_all`` (opt-in, for audits that want every duplicate) each log record is also checked
against the (at least ``RESEND_WINDOW``) log records sealed before it: one dictionary look-up and
insertion per record, and one finding per run of consecutive resent records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from collector_ext.seal.entry import ENTRY_HEADER_SIZE, SEQUENCE_SLICE, EntryKind
from collector_ext.seal.sender import without_sender
from collector_ext.verify.findings import Finding, FindingKind, Severity

# How many log records before a restart mark are remembered, and how many entries after it are
# compared with them. A collector resends within its retry budget, minutes at most; 50,000 records
# covers that at the rates one sidecar seals, and bounds the memory a mark costs.
RESEND_WINDOW = 50_000
# ... and at most this many bytes of their entries: what a hostile archive of large entries can make
# the tracker hold (the window is shorter for chains of entries larger than 650 bytes on average).
RESEND_HISTORY_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class _Tally:
    """Resent records found for one finding: how many, their span, and the first as an example."""

    count: int = 0
    first: int = -1
    last: int = -1
    example: tuple[int, int] = (-1, -1)  # (resent sequence, sequence of the earlier copy)
    object_key: str = ""

    def add(self, sequence: int, original: int, object_key: str) -> None:
        if not self.count:
            self.first = sequence
            self.example = (sequence, original)
            self.object_key = object_key
        self.count += 1
        self.last = sequence


@dataclass(slots=True)
class _AfterMark:
    """The window after one restart mark, with the payloads sealed before the mark."""

    mark: int
    end: int  # last sequence number inside the window
    before: dict[bytes, int]  # payload -> sequence of its newest copy before the mark
    tally: _Tally = field(default_factory=_Tally)


class ResendTracker:
    """Finds resent log records in one chain; fed every segment's records after the checker saw them."""

    def __init__(
        self,
        chain_id_hex: str,
        report: Callable[[Finding], None],
        *,
        window: int = RESEND_WINDOW,
        history_bytes: int = RESEND_HISTORY_BYTES,
        report_all: bool = False,
    ) -> None:
        self._chain_hex = chain_id_hex
        self._chain_id = bytes.fromhex(chain_id_hex)
        self._report = report
        self._window = window
        self._history_limit = history_bytes
        self._report_all = report_all
        # Entry lists of the newest chunks of records, together at least ``window`` entries (when the
        # chain has that many) unless that passes ``history_bytes``: what a restart mark's "before"
        # set is built from. Each with its ``clean_from``, so that the entries of a fast-path chunk need
        # no header parsing then, and its size in bytes.
        self._history: deque[tuple[Sequence[bytes], int | None, int]] = deque()
        self._history_entries = 0
        self._history_bytes = 0
        self._after: _AfterMark | None = None
        self._last_seen = -1  # highest sequence looked at: a stored copy is never counted twice
        # report_all: payload -> newest sequence, for the log records sealed since the last change of
        # generation and for the generation before; and the run of resent records being built.
        self._recent: dict[bytes, int] = {}
        self._older: dict[bytes, int] = {}
        self._run: _Tally | None = None

    def add_segment(
        self,
        object_key: str,
        entries: Sequence[bytes],
        marks: Collection[int],
        *,
        clean_from: int | None = None,
    ) -> None:
        """Look at the entries of one segment, or of the next chunk of its records, in stored order.
        ``marks`` are the sequence numbers of the restart marks the checker accepted in the segment
        (malformed or rejected marks open no window); ``clean_from`` is set when the checker's fast path
        accepted the segment as consecutive log records, the first of these at that sequence number."""
        if marks:
            clean_from = None  # a fast-path segment holds log records only
        if marks or self._after is not None or self._report_all:
            self._scan(object_key, entries, marks, clean_from)
        size = sum(map(len, entries))
        history = self._history
        history.append((entries, clean_from, size))
        self._history_entries += len(entries)
        self._history_bytes += size
        while len(history) > 1 and (
            self._history_entries - len(history[0][0]) >= self._window or self._history_bytes > self._history_limit
        ):
            dropped, _, dropped_size = history.popleft()
            self._history_entries -= len(dropped)
            self._history_bytes -= dropped_size

    def finish(self) -> None:
        """Report what is still open at the end of the chain."""
        self._close_after_mark()
        self._close_run()

    # -- per record, only where needed ----------------------------------------------------------
    def _scan(
        self,
        object_key: str,
        entries: Sequence[bytes],
        marks: Collection[int],
        clean_from: int | None,
    ) -> None:
        # One loop for both uses, on locals: with report_all it runs for every record of the chain.
        # A segment the checker's fast path accepted holds consecutive log records of this chain
        # from ``clean_from``, so its headers need no second look.
        chain_id = self._chain_id
        report_all = self._report_all
        window = self._window
        recent, older = self._recent, self._older
        last_seen = self._last_seen
        after = self._after
        for position, entry in enumerate(entries):
            if clean_from is not None:
                sequence = clean_from + position
            else:
                if len(entry) < ENTRY_HEADER_SIZE or entry[4:20] != chain_id:
                    continue
                sequence = int.from_bytes(entry[SEQUENCE_SLICE], "big")
                if sequence <= last_seen:
                    continue  # a stored copy or a reordered record, reported by the checker
                last_seen = sequence
                kind = entry[2]
                if kind != EntryKind.LOG_RECORD:
                    if kind == EntryKind.RESTART and sequence in marks:
                        self._close_after_mark()
                        before = self._payloads_before(entries, position, sequence)
                        after = self._after = _AfterMark(sequence, sequence + window, before)
                    continue
            if after is not None and sequence > after.end:
                self._close_after_mark()
                after = None
                if not report_all and not any(m > sequence for m in marks):
                    break
            # FORMAT.md 10.1: a resend arrives on another connection; its sender's peer may differ.
            payload = without_sender(entry[ENTRY_HEADER_SIZE:])
            earlier = None
            if after is not None:
                original = after.before.get(payload)
                if original is not None:
                    after.tally.add(sequence, original, object_key)  # left to the mark's finding
                elif report_all:
                    earlier = recent.get(payload) or older.get(payload)
            elif report_all:
                earlier = recent.get(payload) or older.get(payload)
            if not report_all:
                continue
            run = self._run
            if earlier is not None:
                if run is not None and sequence != run.last + 1:
                    self._close_run()
                    run = None
                if run is None:
                    run = self._run = _Tally()
                run.add(sequence, earlier, object_key)
            elif run is not None:
                self._close_run()
            recent[payload] = sequence
            if len(recent) >= window:
                # Two generations instead of evicting one by one: a record is compared with at
                # least ``window`` and at most twice as many log records before it.
                older, recent = recent, {}
                self._older, self._recent = older, recent
        if clean_from is not None and entries:
            last_seen = max(last_seen, clean_from + len(entries) - 1)
        self._last_seen = last_seen

    def _payloads_before(self, entries: Sequence[bytes], position: int, mark: int) -> dict[bytes, int]:
        """Payload -> newest sequence, for the last ``window`` log records sealed before ``mark``."""
        before: dict[bytes, int] = {}
        wanted = self._window
        chain_id = self._chain_id
        # Newest first, so that setdefault keeps the newest copy of a payload.
        for chunk, clean_from, _ in ((entries[:position], None, 0), *reversed(self._history)):
            if clean_from is not None:
                # A fast-path segment: consecutive log records of this chain, all before the mark.
                take = min(len(chunk), wanted)
                for index in range(len(chunk) - 1, len(chunk) - 1 - take, -1):
                    before.setdefault(without_sender(chunk[index][ENTRY_HEADER_SIZE:]), clean_from + index)
                wanted -= take
            else:
                for entry in reversed(chunk):
                    if len(entry) < ENTRY_HEADER_SIZE or entry[2] != EntryKind.LOG_RECORD or entry[4:20] != chain_id:
                        continue
                    sequence = int.from_bytes(entry[SEQUENCE_SLICE], "big")
                    if sequence >= mark:
                        continue
                    before.setdefault(without_sender(entry[ENTRY_HEADER_SIZE:]), sequence)
                    wanted -= 1
                    if not wanted:
                        return before
            if not wanted:
                return before
        return before

    # -- findings -------------------------------------------------------------------------------
    def _close_after_mark(self) -> None:
        after, self._after = self._after, None
        if after is None or not after.tally.count:
            return
        tally = after.tally
        resent, original = tally.example
        self._report(
            Finding(
                FindingKind.RESENT_RECORDS,
                Severity.INFO,
                f"{tally.count} log record(s) sealed within {self._window:,} entries after the restart mark at "
                f"seq {after.mark} repeat, byte for byte, a record among the {self._window:,} before it "
                f"(e.g. seq {resent} repeats seq {original}): the collector resent what the previous run had "
                "not acknowledged; each copy is a separate, validly sealed entry",
                self._chain_hex,
                tally.first,
                tally.last,
                tally.object_key,
            )
        )

    def _close_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        resent, original = run.example
        self._report(
            Finding(
                FindingKind.RESENT_RECORDS,
                Severity.INFO,
                f"{run.count} consecutive log record(s) repeat, byte for byte, records sealed shortly before "
                f"(e.g. seq {resent} repeats seq {original}): a resent batch; each copy is a separate, validly "
                "sealed entry",
                self._chain_hex,
                run.first,
                run.last,
                run.object_key,
            )
        )
