"""The durable spool: sealed segments on local disk, written before the collector hears "stored".

Layout of a spool directory::

    lock                     held (flock) by the running sidecar: one writer per spool
    segments/<chain>-<first>-<last>-<created>.cxseg
                             framed segment objects, byte for byte what the archive receives
    loki.cursor              "<chain hex> <sequence>": the Loki sender has delivered up to there
    clean-shutdown           present from a clean shutdown until the next start

The spool is private to the sidecar's user: directories 0700 and files 0600, set explicitly so the
umask does not matter, and a spool opened with wider modes is tightened (and the change logged). No
symbolic link is followed inside it: the spool directory, ``segments`` and the named files above must
not be links (a configuration error naming ``spool.directory``), and every file is opened with
O_NOFOLLOW, so a link planted in the spool cannot make the sidecar write or read outside it.

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
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from collector_ext.errors import CollectorExtError, ConfigurationError, MalformedObjectError
from collector_ext.files import (
    PRIVATE_DIRECTORY_MODE,
    PRIVATE_FILE_MODE,
    read_regular_file,
    tighten_mode,
    write_atomically,
)
from collector_ext.seal.chain import ChainHead
from collector_ext.seal.entry import KEY_ID_SLICE, decode_entry_header, entry_hash
from collector_ext.seal.segment import decode_segment

SEGMENTS = "segments"
LOCK = "lock"
LOKI_CURSOR = "loki.cursor"
CLEAN_SHUTDOWN = "clean-shutdown"
_NAME = re.compile(r"^(?P<chain>[0-9a-f]{32})-(?P<first>\d{20})-(?P<last>\d{20})-(?P<created>\d{19})\.cxseg$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How many tightened paths one log line names (the count covers them all).
_TIGHTENED_EXAMPLES = 5

log = logging.getLogger(__name__)


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
                status = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # trimmed while we looked (the Loki sender lists while the sidecar trims)
            if not stat.S_ISREG(status.st_mode):
                continue  # a link or anything else planted here is never read (Spool.open refuses it)
            size = status.st_size
            segment = parse_segment_file(Path(item.path), size)
            if segment is not None:
                found.append(segment)
    return sorted(found, key=lambda s: s.first_sequence)


CURSOR_SIZE = 64  # the cursor file never changes size, so rewriting it needs no new disk blocks


def read_loki_cursor(directory: Path, chain_id: bytes) -> int:
    """The last sequence of ``chain_id`` the Loki sender delivered, or -1 (also for a cursor a crash
    left torn: Loki then gets some segments again, and keeps one copy of each entry)."""
    try:
        text = read_regular_file(directory / LOKI_CURSOR).decode("ascii", errors="replace")
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise SpoolError(f"cannot read {directory / LOKI_CURSOR}: {_reason(exc)}") from exc
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
        # O_NOFOLLOW: a link named loki.cursor (dangling or not) is refused, never written through.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            if stat.S_IMODE(os.fstat(handle).st_mode) != PRIVATE_FILE_MODE:
                os.fchmod(handle, PRIVATE_FILE_MODE)  # created under a umask that changed the mode
            os.pwrite(handle, data, 0)
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise SpoolFullError(f"no space left to write {path}") from exc
        raise SpoolError(f"cannot write {path}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link, which the spool never follows; remove the link"
    return exc.strerror or str(exc)


def _refuse_link(path: Path) -> bool:
    """True when ``path`` exists (as anything); ConfigurationError when it is a symbolic link."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(status.st_mode):
        raise ConfigurationError(
            "spool.directory",
            f"{path} is a symbolic link; the spool follows no links: remove it, or point "
            f"spool.directory at the real directory",
        )
    return True


def _not_ours(directory: Path) -> str:
    """The problem with a spool directory this process may not make private (another user owns it)."""
    try:
        status = os.stat(directory)
        found = f"mode {stat.S_IMODE(status.st_mode):04o}, owned by uid {status.st_uid}"
    except OSError:
        found = "its owner could not be read"
    return (
        f"cannot make {directory} private ({found}; the sidecar runs as uid {os.geteuid()}): point "
        f"spool.directory at a subdirectory, which the sidecar creates with mode 0700 (the root of a "
        f"Kubernetes volume belongs to root), or give the directory to the sidecar's user"
    )


def _prepare_directory(directory: Path, tightened: list[tuple[Path, int]]) -> None:
    """Create ``directory`` (mode 0700) or tighten an existing one to 0700; never through a link.

    Raises:
        ConfigurationError: a link, not a directory, or it cannot be created.
    """
    try:
        if not _refuse_link(directory):
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(PRIVATE_DIRECTORY_MODE, exist_ok=True)
        before = tighten_mode(directory, PRIVATE_DIRECTORY_MODE, directory=True)
    except PermissionError as exc:
        raise ConfigurationError("spool.directory", _not_ours(directory)) from exc
    except OSError as exc:
        problem = "it is not a directory" if exc.errno == errno.ENOTDIR else _reason(exc)
        raise ConfigurationError("spool.directory", f"cannot use {directory}: {problem}") from exc
    if before is not None:
        tightened.append((directory, before))


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise SpoolFullError(f"no space left to write {path}") from exc
        raise SpoolError(f"cannot write {path}: {_reason(exc)}") from exc


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
        tightened: list[tuple[Path, int]] = []
        _prepare_directory(self.directory, tightened)
        _prepare_directory(self.directory / SEGMENTS, tightened)
        for name in (LOCK, LOKI_CURSOR, CLEAN_SHUTDOWN):
            _refuse_link(self.directory / name)
        try:
            self._lock = os.open(
                self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE
            )
        except OSError as exc:
            raise ConfigurationError("spool.directory", f"cannot use {self.directory}: {_reason(exc)}") from exc
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
        if not os.path.lexists(self.directory / LOKI_CURSOR):
            # Take the cursor's disk space now, while there is some (see write_loki_cursor).
            write_loki_cursor(self.directory, bytes(16), 0)
        self._tighten_files(tightened)
        segments = list_segment_files(self.directory)
        self._check_contiguous(segments)
        self._segments = segments
        self.used_bytes = sum(s.size for s in segments)
        clean_marker = self.directory / CLEAN_SHUTDOWN
        previous_run_clean = os.path.lexists(clean_marker)
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

    def _tighten_files(self, tightened: list[tuple[Path, int]]) -> None:
        """Make every file of the spool 0600, refuse links among the segment files, and log once what
        had wider modes (a spool written by an older version, or copied in by hand)."""
        files = [self.directory / name for name in (LOCK, LOKI_CURSOR, CLEAN_SHUTDOWN)]
        with os.scandir(self.directory / SEGMENTS) as entries:
            files.extend(Path(item.path) for item in entries)
        for path in files:
            try:
                if not _refuse_link(path):
                    continue
                before = tighten_mode(path, PRIVATE_FILE_MODE, directory=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigurationError("spool.directory", f"cannot use {path}: {_reason(exc)}") from exc
            if before is not None:
                tightened.append((path, before))
        if tightened:
            log.warning(
                "spool permissions tightened to 0700 (directories) and 0600 (files)",
                extra={
                    "spool": str(self.directory),
                    "tightened": len(tightened),
                    "examples": [f"{path} was {before:04o}" for path, before in tightened[:_TIGHTENED_EXAMPLES]],
                },
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
            data = read_regular_file(segment.path)
            decoded = decode_segment(data)
        except OSError as exc:
            raise SpoolError(f"cannot read {segment.path}: {_reason(exc)}") from exc
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
            return read_regular_file(segment.path)
        except OSError as exc:
            raise SpoolError(f"cannot read {segment.path}: {_reason(exc)}") from exc

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
        """Record a clean shutdown. Nothing is written unless ``open`` succeeded: a spool refused at
        start (a link, another process's lock) must not be written to on the way out either."""
        if self._lock is None:
            return
        _write_atomically(self.directory / CLEAN_SHUTDOWN, b"")

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
