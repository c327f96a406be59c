"""Writing a local file so that it is either the old one or the new one, never half of each.

Used for the spool's small files and the verifier's state file. Raises the OSError it met, after
removing its temporary file; callers translate it into the project's errors.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file beside ``path``, fsynced, renamed over it, the directory fsynced.

    Raises:
        OSError: writing failed; ``path`` is as it was.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
