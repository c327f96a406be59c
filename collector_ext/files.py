"""Writing and reading local files without following symbolic links, and writing them atomically.

Used for the spool's files and the verifier's state file. A file this module creates has mode 0600
(set explicitly, so the process umask cannot widen or narrow it); it never follows a symbolic link at
the name it writes or reads, so a link planted in a directory the sidecar owns cannot make it write
or read elsewhere. Raises the OSError it met, after removing its temporary file; callers translate it
into the project's errors.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700
_READ_CHUNK = 1024 * 1024


def fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """A temporary file beside ``path`` (created exclusively, mode ``mode``), fsynced, renamed over
    it, the directory fsynced. A symbolic link at ``path`` is replaced, not followed.

    Raises:
        OSError: writing failed; ``path`` is as it was.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        # A leftover temporary file (or a link planted under its name) is removed, not opened:
        # O_EXCL never follows a link.
        temporary.unlink(missing_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(handle, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, refusing a symbolic link (ELOOP) or anything but a regular file.

    Raises:
        OSError: cannot be read, is a link (errno ELOOP) or not a regular file (errno EINVAL).
    """
    handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        status = os.fstat(handle)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        while chunk := os.read(handle, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def tighten_mode(path: Path, mode: int, *, directory: bool) -> int | None:
    """Remove permission bits beyond ``mode`` from ``path`` (a directory or a regular file; never
    through a symbolic link). Returns the mode it had when it was changed, None when it was already
    within ``mode``.

    Raises:
        OSError: cannot be opened (ELOOP for a link), or is not the kind expected (ENOTDIR, EINVAL).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if directory:
        flags |= os.O_DIRECTORY
    handle = os.open(path, flags)
    try:
        status = os.fstat(handle)
        if not directory and not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        current = stat.S_IMODE(status.st_mode)
        if current & ~mode == 0:
            return None
        os.fchmod(handle, current & mode)
        return current
    finally:
        os.close(handle)
