"""Where the Loki process keeps archived segments it has no room for, when there is no spool.

Without a spool the sidecar hands every archived segment to the Loki process. While Loki is slower
than the sidecar (or down), holding them in memory would grow the process by about 600 bytes per
record, up to ``loki.max_queue_records``. Instead, once the sender holds ``max_queue_bytes``, the
next segments are appended to an unlinked temporary file (in ``$TMPDIR``; nothing is left behind,
even after a crash) and read back in the same order as the sender drains. Nothing is dropped here:
the bound on records (and so on the file's size) stays where it was, in ``LokiProcess.offer``.

Not durable, and not meant to be: records acknowledged on the archive are already stored there;
after a crash, what was still queued for Loki is missing from Loki (``verify --loki-url`` shows it)
exactly as it was with the queue in memory. With a spool none of this is used: the follower reads
the spool itself.

Frame: ``>II`` (records, bytes that follow), then the segment's entries and signatures as one
pickle (written and read by this process only, in a file no other process is given): the pickle
module walks the lists in C, where packing each record's lengths cost a few microseconds a record.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import IO

_HEADER = struct.Struct(">II")


class OverflowFile:
    """A first-in first-out queue of segments in a temporary file; safe to use from two threads."""

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._read_at = 0
        self._write_at = 0
        self.segments = 0
        self.records = 0

    def put(self, entries: Sequence[bytes], signatures: Sequence[bytes]) -> None:
        """Append one segment's records at the end."""
        if len(entries) != len(signatures):
            raise ValueError("a segment needs one signature per entry")
        body = pickle.dumps((list(entries), list(signatures)), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._file is None:
                # Open as long as this object is; ``close`` closes it.
                self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
            self._file.seek(self._write_at)
            self._file.write(_HEADER.pack(len(entries), len(body)))
            self._file.write(body)
            self._write_at = self._file.tell()
            self.segments += 1
            self.records += len(entries)

    def take(self) -> tuple[list[bytes], list[bytes]] | None:
        """Remove and return the oldest segment, or None when there is none."""
        with self._lock:
            if self._file is None or self.segments == 0:
                return None
            self._file.seek(self._read_at)
            count, size = _HEADER.unpack(self._file.read(_HEADER.size))
            body = self._file.read(size)
            self._read_at += _HEADER.size + size
            self.segments -= 1
            self.records -= count
            if self.segments == 0:
                # Empty again: start over at the front, so the file does not grow while it cycles.
                self._file.truncate(0)
                self._read_at = self._write_at = 0
        entries, signatures = pickle.loads(body)  # noqa: S301  (this process's own file)
        if len(entries) != count:
            raise ValueError("the overflow file does not hold what was written")
        return entries, signatures

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self.segments = self.records = 0
            self._read_at = self._write_at = 0
