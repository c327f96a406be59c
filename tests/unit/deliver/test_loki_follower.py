"""The Loki process's spool follower on a real spool directory, with the directory listing replayed
as it races the sidecar's renames: a listing that misses segment N but shows N+1 once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector_ext.deliver.loki import spool_follower
from collector_ext.deliver.loki.client import LokiUnavailableError
from collector_ext.deliver.loki.mapping import EntryMapper, MappingSettings
from collector_ext.deliver.loki.sender import LokiSender, LokiSettings, LokiStats
from collector_ext.deliver.loki.spool_follower import GAP_GRACE_SECONDS, GAP_LISTINGS, SpoolFollower
from collector_ext.pb import archive_pb2
from collector_ext.retry import RetryPolicy
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind, decode_entry_header
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.segment import encode_segment
from collector_ext.spool import Spool, SpooledSegment, list_segment_files, read_loki_cursor, write_loki_cursor

CHAIN = bytes(range(16))
CREATED = 1_700_000_000_000_000_000


def _payload(sequence: int) -> bytes:
    record = LogRecord(time_unix_nano=CREATED + sequence, body=AnyValue(string_value=f"record {sequence}"))
    return archive_pb2.LogPayload(log_record=record.SerializeToString()).SerializeToString()


def _spool(directory: Path, signer: Ed25519Signer, sizes: list[int]) -> list[SpooledSegment]:
    """A spool holding one chain in segments of ``sizes`` records; segment i created at CREATED + i s."""
    spool = Spool(directory)
    spool.open()
    head = ChainHead.new(CHAIN)
    for index, count in enumerate(sizes):
        first = head.next_sequence
        batch = chain_entries(
            head, EntryKind.LOG_RECORD, [_payload(first + i) for i in range(count)], signer.key_id, CREATED
        )
        created = CREATED + index * 1_000_000_000
        data = encode_segment(
            chain_id=CHAIN,
            first_sequence=first,
            created_unix_nano=created,
            entries=batch.entries,
            signatures=[bytes(64)] * count,
        )
        spool.append(CHAIN, first, batch.head.next_sequence - 1, created, data)
        head = batch.head
    segments = spool.segments
    spool.close()
    return segments


class RacingListing:
    """list_segment_files, except that the listings numbered in ``omit`` (0-based) leave out the
    file starting at that sequence, as a directory read during the sidecar's rename can."""

    def __init__(self, omit: dict[int, int]) -> None:
        self.omit = omit
        self.calls = 0

    def __call__(self, directory: Path) -> list[SpooledSegment]:
        files = list_segment_files(directory)
        left_out = self.omit.get(self.calls)
        self.calls += 1
        return [s for s in files if s.first_sequence != left_out]


class RecordingSink:
    """A SegmentSink that keeps what it is offered; the test says when Loki has it."""

    def __init__(self) -> None:
        self.stats = LokiStats()
        self.offered: list[tuple[list[int], int | None]] = []

    def offer(self, entries: Sequence[bytes], signatures: Sequence[bytes], last_sequence: int | None = None) -> None:
        self.offered.append(([decode_entry_header(e).sequence for e in entries], last_sequence))

    def sequences(self) -> list[int]:
        return [sequence for offered, _ in self.offered for sequence in offered]

    def push_all(self, follower: SpoolFollower) -> None:
        """Loki took everything offered so far: report it as LokiSender does, segment by segment."""
        for _, last in self.offered:
            assert last is not None
            follower.delivered(last)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_listing_that_misses_a_file_once_does_not_skip_it(tmp_path: Path, signer: Ed25519Signer) -> None:
    """The reported loss: Loki has 0-1; a listing shows segment 6-7 but not 4-5. The follower used
    to offer 6-7, count 4-5 as offered too, and move the cursor past them for good."""
    _spool(tmp_path, signer, [2, 2, 2, 2, 2])
    write_loki_cursor(tmp_path, CHAIN, 1)
    listing = RacingListing(omit={0: 4})
    follower = SpoolFollower(tmp_path, list_files=listing)
    sink = RecordingSink()
    stop = asyncio.Event()

    await follower.follow_once(sink, stop)
    assert sink.sequences() == [2, 3], "nothing after the gap is offered"
    sink.push_all(follower)
    await follower.write_cursor()
    assert read_loki_cursor(tmp_path, CHAIN) == 3, "the cursor stops before the gap"

    await follower.follow_once(sink, stop)  # the next listing shows the file
    assert sink.sequences() == list(range(2, 10)), "every record once, in order"
    sink.push_all(follower)
    await follower.write_cursor()
    assert read_loki_cursor(tmp_path, CHAIN) == 9
    assert follower.missing_records == 0


async def test_a_gap_is_listed_again_soon_by_the_running_follower(tmp_path: Path, signer: Ed25519Signer) -> None:
    """run() does not wait for the next wake-up or poll to look again: no new segment may come."""
    _spool(tmp_path, signer, [1, 1, 1])
    write_loki_cursor(tmp_path, CHAIN, 0)
    listing = RacingListing(omit={0: 1})
    follower = SpoolFollower(tmp_path, list_files=listing)
    sink = RecordingSink()
    stop = asyncio.Event()
    running = asyncio.create_task(follower.run(sink, stop))
    # Sooner than the poll interval: the gap is listed again on its own, shorter timer.
    await _until(lambda: sink.sequences() == [1, 2], timeout=spool_follower.POLL_INTERVAL / 2)
    stop.set()
    follower.wake.set()
    await running
    assert sink.sequences() == [1, 2]
    assert listing.calls >= 2


async def test_the_cursor_moves_only_after_loki_took_the_push(tmp_path: Path, signer: Ed25519Signer) -> None:
    """With the real sender: while Loki answers 503 the cursor stays; once a push succeeds it moves to
    the last sequence pushed, and the sender no longer counts anything as waiting."""
    _spool(tmp_path, signer, [3, 3])
    pushes: list[bytes] = []
    failures = [3]

    class FailingLoki:
        async def open(self) -> None:
            return None

        async def close(self) -> None:
            return None

        async def push(self, body: bytes, *, json_body: bool = False) -> None:
            if failures[0]:
                failures[0] -= 1
                raise LokiUnavailableError("Loki answered 503", None)
            pushes.append(body)

    follower = SpoolFollower(tmp_path)
    sender = LokiSender(
        FailingLoki(),  # type: ignore[arg-type]
        EntryMapper(MappingSettings()),
        LokiSettings(batch_max_wait=0.0, retry=RetryPolicy(initial_delay=0.05, max_delay=0.05)),
        on_delivered=follower.delivered,
    )
    await sender.start()
    await follower.follow_once(sender, asyncio.Event())
    await asyncio.sleep(0.01)
    await follower.write_cursor()
    assert read_loki_cursor(tmp_path, CHAIN) == -1, "nothing pushed yet"
    assert sender.stats.undelivered_since is not None
    await _until(lambda: bool(pushes))
    await _until(lambda: sender.stats.queued_records == 0 and sender.stats.undelivered_since is None)
    await follower.write_cursor()
    assert read_loki_cursor(tmp_path, CHAIN) == 5
    assert sender.stats.push_retries == 3
    assert follower.oldest_undelivered_unix_nano() is None
    await sender.close(drain_timeout=1)


async def test_a_file_removed_by_hand_is_passed_only_after_a_grace_and_loudly(
    tmp_path: Path, signer: Ed25519Signer, caplog: pytest.LogCaptureFixture
) -> None:
    segments = _spool(tmp_path, signer, [1, 3, 2, 3])
    write_loki_cursor(tmp_path, CHAIN, 0)
    segments[1].path.unlink()  # sequences 1-3
    clock = Clock()
    follower = SpoolFollower(tmp_path, clock=clock)
    sink = RecordingSink()
    stop = asyncio.Event()

    for _ in range(3 * GAP_LISTINGS):
        await follower.follow_once(sink, stop)
    assert sink.offered == [], "many listings within the grace period: still waiting"
    clock.now += GAP_GRACE_SECONDS
    with caplog.at_level(logging.ERROR):
        await follower.follow_once(sink, stop)
    assert sink.sequences() == [4, 5, 6, 7, 8]
    assert follower.missing_records == 3
    (report,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "removed" in report.getMessage()
    assert (report.first_sequence, report.last_sequence, report.records) == (1, 3, 3)  # type: ignore[attr-defined]


async def test_a_file_that_vanishes_between_listing_and_read_is_not_passed(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    segments = _spool(tmp_path, signer, [1, 1, 1])
    follower = SpoolFollower(tmp_path)
    sink = RecordingSink()
    real_read = spool_follower.read_regular_file

    def vanished_once(path: Path) -> bytes:
        if path == segments[1].path and not getattr(vanished_once, "done", False):
            vanished_once.done = True  # type: ignore[attr-defined]
            raise FileNotFoundError(path)
        return real_read(path)

    monkeypatch.setattr(spool_follower, "read_regular_file", vanished_once)
    await follower.follow_once(sink, asyncio.Event())
    assert sink.sequences() == [0]
    await follower.follow_once(sink, asyncio.Event())
    assert sink.sequences() == [0, 1, 2]


async def test_without_a_cursor_the_start_comes_from_a_second_listing(tmp_path: Path, signer: Ed25519Signer) -> None:
    """No cursor for this chain: the oldest file is the start, but a listing that raced the first
    rename may show only the second file."""
    _spool(tmp_path, signer, [1, 2])
    follower = SpoolFollower(tmp_path, list_files=RacingListing(omit={0: 0}))
    sink = RecordingSink()
    await follower.follow_once(sink, asyncio.Event())
    assert sink.sequences() == [0, 1, 2]


async def test_the_follower_resumes_after_the_cursor(tmp_path: Path, signer: Ed25519Signer) -> None:
    _spool(tmp_path, signer, [2, 2, 2])
    write_loki_cursor(tmp_path, CHAIN, 2)  # mid-segment: a crash between two pushes
    follower = SpoolFollower(tmp_path)
    sink = RecordingSink()
    await follower.follow_once(sink, asyncio.Event())
    assert sink.sequences() == [3, 4, 5]


async def test_the_age_of_the_oldest_undelivered_segment_comes_from_its_file(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    _spool(tmp_path, signer, [2, 2, 2])
    follower = SpoolFollower(tmp_path)
    sink = RecordingSink()
    await follower.follow_once(sink, asyncio.Event())
    assert follower.oldest_undelivered_unix_nano() == CREATED
    follower.delivered(3)
    assert follower.oldest_undelivered_unix_nano() == CREATED + 2_000_000_000
    follower.delivered(5)
    assert follower.oldest_undelivered_unix_nano() is None


async def test_a_delivery_never_offered_does_not_move_the_cursor(
    tmp_path: Path, signer: Ed25519Signer, caplog: pytest.LogCaptureFixture
) -> None:
    _spool(tmp_path, signer, [2, 2])
    follower = SpoolFollower(tmp_path, max_queue_records=2)
    sink = RecordingSink()
    sink.stats.queued_records = 0

    async def offer_first_only() -> None:
        stop = asyncio.Event()
        original = sink.offer

        def offer(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            sink.stats.queued_records = 2  # full: the follower waits for room
            stop.set()

        sink.offer = offer  # type: ignore[method-assign]
        await follower.follow_once(sink, stop)

    await offer_first_only()
    assert sink.sequences() == [0, 1]
    with caplog.at_level(logging.ERROR):
        follower.delivered(3)
    await follower.write_cursor()
    assert read_loki_cursor(tmp_path, CHAIN) == -1
    assert "never offered" in caplog.text


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
