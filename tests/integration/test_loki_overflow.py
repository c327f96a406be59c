"""Without a spool, the Loki process holds at most ``max_queue_bytes`` of entries in memory; what it
cannot hold waits in its overflow file, and once Loki answers every record arrives, in order, none
dropped."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector_ext.deliver.loki.client import LokiConnection
from collector_ext.deliver.loki.mapping import MappingSettings
from collector_ext.deliver.loki.process import LokiProcess
from collector_ext.deliver.loki.sender import LokiSettings
from collector_ext.pb import archive_pb2
from collector_ext.retry import RetryPolicy
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind
from tests.loki_receiver import LokiReceiver

SEGMENTS = 60
RECORDS = 50  # per segment: 3000 records of about 300 bytes, 30 times max_queue_bytes


def _segments() -> list[tuple[list[bytes], list[bytes]]]:
    head = ChainHead.new(bytes(range(16)))
    now = time.time_ns()
    segments = []
    for index in range(SEGMENTS):
        payloads = [
            archive_pb2.LogPayload(
                log_record=LogRecord(
                    time_unix_nano=now + (index * RECORDS + i) * 1000,
                    body=AnyValue(string_value=f"record {index * RECORDS + i} " + "x" * 200),
                ).SerializeToString()
            ).SerializeToString()
            for i in range(RECORDS)
        ]
        batch = chain_entries(head, EntryKind.LOG_RECORD, payloads, b"k" * 8, now)
        head = batch.head
        segments.append((list(batch.entries), [bytes([index]) * 64] * RECORDS))
    return segments


def test_records_beyond_the_memory_bound_wait_on_disk_and_all_arrive_in_order(
    capfd: pytest.CaptureFixture[str],
) -> None:
    loki = LokiReceiver(auth_enabled=False).start()
    try:
        url = loki.url
        loki.set_down("refuse")
        process = LokiProcess(
            LokiConnection(url=url),
            MappingSettings(),
            LokiSettings(
                batch_max_bytes=64 * 1024,
                batch_max_wait=0.05,
                max_queue_bytes=16 * 1024,
                retry=RetryPolicy(initial_delay=0.05, max_delay=0.2),
            ),
        )

        async def run() -> None:
            await process.start()
            for entries, signatures in _segments():
                process.offer(entries, signatures)
            await asyncio.sleep(1.0)  # Loki refuses meanwhile: the backlog goes to the overflow file
            assert process.stats.entries_pushed == 0
            loki.set_down("up")
            deadline = time.monotonic() + 60
            while process.stats.entries_pushed < SEGMENTS * RECORDS and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await process.close(drain_timeout=5)

        asyncio.run(run())
        assert process.stats.entries_pushed == SEGMENTS * RECORDS
        assert "queue_full" not in process.stats.rejected
        entries = loki.entries()
        assert len(entries) == SEGMENTS * RECORDS
        sequences = [int(entry.structured_metadata["audit_seq"]) for entry in sorted(entries, key=lambda e: e.ts)]
        assert sequences == list(range(SEGMENTS * RECORDS))
        assert "wait in a temporary file" in capfd.readouterr().err
    finally:
        loki.stop()
