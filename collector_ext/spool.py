"""The durable spool: sealed segments on local disk, written before the collector hears "stored".

Layout of a spool directory::

    lock                     held (flock) by the running sidecar: one writer per spool
    segments/<chain>-<first>-<last>-<created>.cxseg
                             framed segment objects, byte for byte what the archive receives
    loki.cursor              "<chain hex> <sequence>": the Loki sender has delivered up to there
    clean-shutdown           present from a clean shutdown until the next start

A segment file is written to a temporary name, fsynced, renamed into place and the directory is
fsynced, so a file is complete or absent: a crash leaves at most a temporary file, removed at the
next start. Files are written one at a time in sequence order, so the spool always holds a
contiguous run of the chain ending at its head. The newest file is never removed, so the head
survives even when everything else has been archived and trimmed.

Every method here blocks on the filesystem; the pipeline calls them on a worker thread. OSError is
translated at this edge into ``SpoolError`` (with the path) or ``SpoolFullError`` (no space).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from collector_ext.errors import CollectorExtError, ConfigurationError, MalformedObjectError
from collector_ext.files import write_atomically
from collector_ext.seal.chain import ChainHead
from collector_ext.seal.entry import KEY_ID_SLICE, decode_entry_header, entry_hash
from collector_ext.seal.segment import decode_segment

SEGMENTS = "segments"
LOCK = "lock"
LOKI_CURSOR = "loki.cursor"
CLEAN_SHUTDOWN = "clean-shutdown"
_NAME = re.compile(r"^(?P<chain>[0-9a-f]{32})-(?P<first>\d{20})-(?P<last>\d{20})-(?P<created>\d{19})\.cxseg$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class SpoolError(CollectorExtError):
    """The spool directory cannot be used or written."""


class SpoolFullError(SpoolError):
    """The spool's filesystem has no space left for a segment."""


@dataclass(frozen=True, slots=True)
class SpooledSegment:
    """One segment file in the spool."""

    path: Path
    chain_id: bytes
    first_sequence: int
    last_sequence: int
    created_unix_nano: int
    size: int

    @property
    def record_count(self) -> int:
        return self.last_sequence - self.first_sequence + 1


@dataclass(frozen=True, slots=True)
class SpoolContents:
    """What a spool held when it was opened."""

    segments: list[SpooledSegment]
    head: ChainHead | None  # None: the spool holds no chain (new, or its state was deleted)
    key_id: bytes | None
    previous_run_clean: bool
    loki_cursor: int  # last sequence of the spool's chain delivered to Loki, -1 if none


def segment_file_name(chain_id: bytes, first: int, last: int, created_unix_nano: int) -> str:
    return f"{chain_id.hex()}-{first:020d}-{last:020d}-{created_unix_nano:019d}.cxseg"


def parse_segment_file(path: Path, size: int) -> SpooledSegment | None:
    match = _NAME.match(path.name)
    if match is None:
        return None
    return SpooledSegment(
        path=path,
        chain_id=bytes.fromhex(match["chain"]),
        first_sequence=int(match["first"]),
        last_sequence=int(match["last"]),
        created_unix_nano=int(match["created"]),
        size=size,
    )


def list_segment_files(directory: Path) -> list[SpooledSegment]:
    """The spool's segment files in sequence order (also used by the Loki sender's process).

    One directory read: a file renamed into place while it runs may be missing from the result
    even when a later one is present, so a reader that follows a live spool must not take a gap in
    the sequence for a file that is gone (see ``deliver.loki.spool_follower``)."""
    found = []
    with os.scandir(directory / SEGMENTS) as entries:
        for item in entries:
            try:
                size = item.stat().st_size
            except FileNotFoundError:
                continue  # trimmed while we looked (the Loki sender lists while the sidecar trims)
            segment = parse_segment_file(Path(item.path), size)
            if segment is not None:
                found.append(segment)
    return sorted(found, key=lambda s: s.first_sequence)


CURSOR_SIZE = 64  # the cursor file never changes size, so rewriting it needs no new disk blocks


def read_loki_cursor(directory: Path, chain_id: bytes) -> int:
    """The last sequence of ``chain_id`` the Loki sender delivered, or -1 (also for a cursor a crash
    left torn: Loki then gets some segments again, and keeps one copy of each entry)."""
    try:
        text = (directory / LOKI_CURSOR).read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise SpoolError(f"cannot read {directory / LOKI_CURSOR}: {exc.strerror}") from exc
    chain_hex, _, sequence = text.strip().partition(" ")
    if chain_hex != chain_id.hex() or not sequence.isdigit():
        return -1
    return int(sequence)


def write_loki_cursor(directory: Path, chain_id: bytes, sequence: int) -> None:
    """Record the Loki sender's progress by rewriting a fixed-size file in place: this must work on
    a full disk, because the spool shrinks only once this cursor moves."""
    data = f"{chain_id.hex()} {sequence}".encode().ljust(CURSOR_SIZE - 1) + b"\n"
    path = directory / LOKI_CURSOR
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(handle, data, 0)
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise SpoolFullError(f"no space left to write {path}") from exc
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise SpoolFullError(f"no space left to write {path}") from exc
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from exc


class Spool:
    """A spool directory, opened by exactly one sidecar at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: int | None = None
        self._segments: list[SpooledSegment] = []
        self.used_bytes = 0

    def open(self) -> SpoolContents:
        """Lock the directory, remove what a crash left half-written, and read the chain it holds.

        Raises:
            ConfigurationError: the directory cannot be created or is in use by another process.
            SpoolError: the files are not a contiguous run of one chain, or the newest is damaged.
        """
        try:
            (self.directory / SEGMENTS).mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError("spool.directory", f"cannot use {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock)
            self._lock = None
            raise ConfigurationError(
                "spool.directory", f"{self.directory} is in use by another collector-ext process"
            ) from exc
        for leftover in (self.directory / SEGMENTS).glob(".*.tmp"):
            leftover.unlink()
        if not (self.directory / LOKI_CURSOR).exists():
            # Take the cursor's disk space now, while there is some (see write_loki_cursor).
            write_loki_cursor(self.directory, bytes(16), 0)
        segments = list_segment_files(self.directory)
        self._check_contiguous(segments)
        self._segments = segments
        self.used_bytes = sum(s.size for s in segments)
        clean_marker = self.directory / CLEAN_SHUTDOWN
        previous_run_clean = clean_marker.exists()
        clean_marker.unlink(missing_ok=True)
        if not segments:
            return SpoolContents([], None, None, previous_run_clean, -1)
        newest = segments[-1]
        head, key_id = self._read_head(newest)
        return SpoolContents(
            segments=list(segments),
            head=head,
            key_id=key_id,
            previous_run_clean=previous_run_clean,
            loki_cursor=read_loki_cursor(self.directory, newest.chain_id),
        )

    @staticmethod
    def _check_contiguous(segments: list[SpooledSegment]) -> None:
        for before, after in itertools.pairwise(segments):
            if after.chain_id != before.chain_id:
                raise SpoolError(
                    f"{after.path} belongs to chain {after.chain_id.hex()}, {before.path} to "
                    f"{before.chain_id.hex()}: a spool holds one chain; move one of them aside"
                )
            if after.first_sequence != before.last_sequence + 1:
                raise SpoolError(
                    f"the spool skips from sequence {before.last_sequence} ({before.path.name}) to "
                    f"{after.first_sequence} ({after.path.name}): a segment file is missing"
                )

    @staticmethod
    def _read_head(segment: SpooledSegment) -> tuple[ChainHead, bytes]:
        try:
            data = segment.path.read_bytes()
            decoded = decode_segment(data)
        except OSError as exc:
            raise SpoolError(f"cannot read {segment.path}: {exc.strerror}") from exc
        except MalformedObjectError as exc:
            raise SpoolError(f"{segment.path} is damaged: {exc}") from exc
        if decoded.record_count != segment.record_count or len(decoded.records) != segment.record_count:
            raise SpoolError(
                f"{segment.path} holds {len(decoded.records)} records, its name says {segment.record_count}"
            )
        last_entry = decoded.records[-1].entry  # a name always spans at least one record
        try:
            header = decode_entry_header(last_entry)
        except MalformedObjectError as exc:
            raise SpoolError(f"{segment.path} is damaged: {exc}") from exc
        if header.sequence != segment.last_sequence or header.chain_id != segment.chain_id:
            raise SpoolError(f"{segment.path}: its last entry is not sequence {segment.last_sequence}")
        head = ChainHead(segment.chain_id, segment.last_sequence + 1, entry_hash(last_entry))
        return head, last_entry[KEY_ID_SLICE]

    @property
    def segments(self) -> list[SpooledSegment]:
        return list(self._segments)

    def append(self, chain_id: bytes, first: int, last: int, created_unix_nano: int, data: bytes) -> SpooledSegment:
        """Write one segment durably (temporary file, fsync, rename, fsync of the directory).

        Raises:
            SpoolFullError: no space; nothing was added and nothing already spooled was touched.
            SpoolError: any other write failure.
        """
        if self._segments and first != self._segments[-1].last_sequence + 1:
            raise SpoolError(f"segment {first}-{last} does not follow {self._segments[-1].path.name}")
        path = self.directory / SEGMENTS / segment_file_name(chain_id, first, last, created_unix_nano)
        _write_atomically(path, data)
        segment = SpooledSegment(path, chain_id, first, last, created_unix_nano, len(data))
        self._segments.append(segment)
        self.used_bytes += segment.size
        return segment

    def read(self, segment: SpooledSegment) -> bytes:
        try:
            return segment.path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read {segment.path}: {exc.strerror}") from exc

    def trim(self, through_sequence: int) -> int:
        """Remove segment files wholly at or before ``through_sequence``, except the newest one (it
        keeps the chain head). Returns the number of files removed."""
        removed = 0
        while len(self._segments) > 1 and self._segments[0].last_sequence <= through_sequence:
            segment = self._segments.pop(0)
            segment.path.unlink(missing_ok=True)
            self.used_bytes -= segment.size
            removed += 1
        return removed

    def loki_cursor(self, chain_id: bytes) -> int:
        return read_loki_cursor(self.directory, chain_id)

    def mark_clean_shutdown(self) -> None:
        _write_atomically(self.directory / CLEAN_SHUTDOWN, b"")

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
