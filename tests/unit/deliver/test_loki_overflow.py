"""The Loki process's overflow file: segments come back whole, in order, and the file starts over
when it empties."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from collector_ext.deliver.loki.overflow import OverflowFile


def _segment(index: int, records: int) -> tuple[list[bytes], list[bytes]]:
    entries = [
        (hashlib.sha256(b"%d-%d" % (index, i)).digest() * 12)[: 50 + (index * 7 + i) % 300] for i in range(records)
    ]
    return entries, [bytes([index % 256]) * 64 for _ in range(records)]


def test_segments_come_back_in_order_and_whole(tmp_path: Path) -> None:
    overflow = OverflowFile(str(tmp_path))
    assert overflow.take() is None
    segments = [_segment(i, 1 + i % 5) for i in range(40)]
    for entries, signatures in segments[:25]:
        overflow.put(entries, signatures)
    assert overflow.segments == 25
    assert overflow.records == sum(len(e) for e, _ in segments[:25])
    taken = [overflow.take() for _ in range(10)]
    for entries, signatures in segments[25:]:
        overflow.put(entries, signatures)
    while (item := overflow.take()) is not None:
        taken.append(item)
    assert taken == segments
    assert overflow.segments == overflow.records == 0
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing left in the directory
    overflow.close()


def test_an_emptied_file_starts_over(tmp_path: Path) -> None:
    overflow = OverflowFile(str(tmp_path))
    for round_ in range(3):
        overflow.put(*_segment(round_, 100))
        assert overflow._write_at < 100 * (8 + 350 + 64) + 8  # never more than one segment's size
        assert overflow.take() == _segment(round_, 100)
    overflow.close()


def test_a_writer_thread_and_a_reader_keep_the_order(tmp_path: Path) -> None:
    overflow = OverflowFile(str(tmp_path))
    segments = [_segment(i, 3) for i in range(300)]

    def write() -> None:
        for entries, signatures in segments:
            overflow.put(entries, signatures)

    writer = threading.Thread(target=write)
    writer.start()
    taken = []
    while len(taken) < len(segments):
        item = overflow.take()
        if item is not None:
            taken.append(item)
    writer.join()
    assert taken == segments
    overflow.close()
