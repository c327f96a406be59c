"""The directory archive: the S3 layout on a local filesystem.

It is the embedded default for trying the sidecar out, and what an auditor holds after
``aws s3 sync s3://bucket/prefix DIR``: the verifier reads both the same way. Each object is written
to a temporary file, fsynced, renamed into place and made read-only, and the directory is fsynced,
so an object is either absent or complete. A directory gives no WORM guarantee; that is what the S3
archive with Object Lock is for.

Reading assumes the directory may be hostile. Listing never follows a symbolic link and never opens
anything: regular files are listed with their size, and every other entry (a symbolic link to
anything, dangling or not, a FIFO, a socket, a device, a directory that cannot be listed) is listed
with the reason it cannot be an archive object. ``get`` opens each directory on the path and the
object itself without following symbolic links, non-blocking (a FIFO swapped in after listing cannot
hang it), reads only regular files, refuses one larger than the caller's limit before reading it,
and reads exactly the size the file had when opened. What it does not do: decide what an unreadable
object means for the verdict; the verifier does.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from collector_ext.deliver.archive import ListedObject
from collector_ext.errors import (
    ArchiveUnavailableError,
    CollectorExtError,
    ConfigurationError,
    ObjectTooLargeError,
    UnreadableObjectError,
)

# Archive keys are a few levels deep (FORMAT.md 3); anything far deeper is not an archive, and a
# bound keeps a bind-mount loop from making the listing endless.
_MAX_DEPTH = 32
# Errors of the filesystem rather than of one object: reading may work when retried.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.ESTALE, errno.ETIMEDOUT}
)
_LINK_TARGET_SHOWN = 200  # characters of a symbolic link's target quoted in its problem


def _is_writer_temporary(name: str) -> bool:
    # ``_write`` writes ".<name>.tmp" and renames it into place; a crash can leave one behind. Such a
    # name never matches the layout, so skipping it cannot hide an archive object.
    return name.startswith(".") and name.endswith(".tmp")


def _not_regular(mode: int) -> str:
    """Why an entry with this (lstat) mode is not an archive object."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link; it was not followed"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode):
        return "is a character device, not a regular file"
    if stat.S_ISBLK(mode):
        return "is a block device, not a regular file"
    return f"is not a regular file (mode {stat.filemode(mode)})"


def _valid_utf8(name: str) -> bool:
    # os.scandir decodes a name that is not UTF-8 with surrogate escapes; S3 keys are always UTF-8, so
    # such a name cannot come from an archive, and its key could not be printed or encoded.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class DirectoryArchive:
    """ArchiveStore on a local directory."""

    def __init__(self, root: Path, *, for_writing: bool = True) -> None:
        self._root = root
        self._for_writing = for_writing
        self._resolved_root: Path | None = None

    @property
    def description(self) -> str:
        return str(self._root)

    async def open(self) -> None:
        if self._for_writing:
            try:
                self._root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError("archive.url", f"cannot create directory {self._root}: {exc}") from exc
        elif not self._root.is_dir():
            raise ConfigurationError("archive", f"{self._root} is not a directory")

    def _path(self, key: str) -> Path:
        path = (self._root / key).resolve()
        if not path.is_relative_to(self._root.resolve()):
            raise ArchiveUnavailableError(f"key {key!r} leaves the archive directory")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o444)
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def put(self, key: str, data: bytes, sha256: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, key, data)
        except OSError as exc:
            raise ArchiveUnavailableError(f"writing {key} under {self._root}: {exc}") from exc

    # Reading.

    def _reading_root(self) -> Path:
        # The root itself may be a symbolic link (the auditor's choice, not the archive's): it is
        # resolved once, and nothing below it is ever followed.
        if self._resolved_root is None:
            self._resolved_root = self._root.resolve()
        return self._resolved_root

    def _scan(self, under: str) -> list[ListedObject]:
        root = self._reading_root()
        try:
            root_stat = os.stat(root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveUnavailableError(f"listing {self._root}: {exc.strerror}") from exc
        if not stat.S_ISDIR(root_stat.st_mode):
            raise ArchiveUnavailableError(f"listing {self._root}: not a directory")
        found: list[ListedObject] = []
        directories_seen = {(root_stat.st_dev, root_stat.st_ino)}
        pending: list[tuple[str, str, int]] = [("", str(root), 0)]  # (key prefix, path, depth)
        while pending:
            prefix, path, depth = pending.pop()
            try:
                with os.scandir(path) as listing:
                    entries = list(listing)
            except OSError as exc:
                if not prefix:
                    raise ArchiveUnavailableError(f"listing {self._root}: {exc.strerror}") from exc
                found.append(ListedObject(prefix[:-1], 0, f"is a directory that cannot be listed: {exc.strerror}"))
                continue
            for entry in entries:
                key = prefix + entry.name
                # Descend only where keys starting with ``under`` can be.
                if not (key.startswith(under) or under.startswith(key + "/")):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the directory was read
                except OSError as exc:
                    found.append(ListedObject(key, 0, f"cannot be examined: {exc.strerror}"))
                    continue
                mode = info.st_mode
                if stat.S_ISREG(mode) and _is_writer_temporary(entry.name):
                    continue
                if not _valid_utf8(entry.name):
                    what = "is a directory whose name" if stat.S_ISDIR(mode) else "has a name that"
                    found.append(ListedObject(key, 0, f"{what} is not valid UTF-8; it was not read"))
                elif stat.S_ISREG(mode):
                    found.append(ListedObject(key, info.st_size))
                elif stat.S_ISDIR(mode):
                    identity = (info.st_dev, info.st_ino)
                    if depth + 1 >= _MAX_DEPTH:
                        found.append(ListedObject(key, 0, f"is a directory nested deeper than {_MAX_DEPTH} levels"))
                    elif identity in directories_seen:
                        found.append(ListedObject(key, 0, "is a directory already listed under another name"))
                    else:
                        directories_seen.add(identity)
                        pending.append((key + "/", entry.path, depth + 1))
                elif stat.S_ISLNK(mode):
                    found.append(ListedObject(key, 0, self._symbolic_link_problem(entry.path)))
                else:
                    found.append(ListedObject(key, 0, _not_regular(mode)))
        found.sort(key=lambda listed: listed.key)
        return [listed for listed in found if listed.key.startswith(under)]

    def _symbolic_link_problem(self, path: str) -> str:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if len(target) > _LINK_TARGET_SHOWN:
            target = target[:_LINK_TARGET_SHOWN] + "..."
        # stat follows the link only to say where it leads; nothing is opened.
        try:
            followed = os.stat(path)
        except FileNotFoundError:
            return f"is a dangling symbolic link (to {target!r}); it was not followed"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"is a symbolic link in a loop (to {target!r}); it was not followed"
            return f"is a symbolic link (to {target!r}) that cannot be resolved: {exc.strerror}; it was not followed"
        inside = os.path.realpath(path).startswith(str(self._reading_root()) + os.sep)
        what = "a directory" if stat.S_ISDIR(followed.st_mode) else "a file" if stat.S_ISREG(followed.st_mode) else ""
        where = "inside" if inside else "outside"
        return f"is a symbolic link to {what or 'an entry'} {where} the archive ({target!r}); it was not followed"

    async def list_objects(self, under: str = "", start_after: str = "") -> AsyncIterator[ListedObject]:
        listing = await asyncio.to_thread(self._scan, under)
        for listed in listing:
            if listed.key > start_after:
                yield listed

    async def list_keys(
        self, under: str = "", start_after: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[str]:
        async for listed in self.list_objects(under, start_after):
            yield listed.key

    async def list_children(self, under: str = "") -> list[str]:
        directory = self._path(under) if under else self._root
        try:
            names = await asyncio.to_thread(os.listdir, directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveUnavailableError(f"listing {directory}: {exc}") from exc
        return sorted(name for name in names if not name.startswith(".") and (directory / name).is_dir())

    def _error(self, key: str, exc: OSError, *, on_path: bool = False) -> CollectorExtError:
        """The project's error for an OSError met while opening or reading ``key``."""
        if exc.errno in _TRANSIENT_ERRNOS:
            return ArchiveUnavailableError(f"reading {key!r} under {self._root}: {exc.strerror}")
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and on_path:
            reason = "a directory on its path is a symbolic link or not a directory; it was not followed"
        elif exc.errno == errno.ELOOP:
            reason = "is a symbolic link; it was not followed"
        elif exc.errno == errno.ENOENT:
            reason = "no longer exists (it was removed or renamed after it was listed)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            reason = f"permission denied ({exc.strerror})"
        elif exc.errno == errno.ENXIO:
            reason = "is a socket or a device, not a regular file"
        elif exc.errno == errno.EISDIR:
            reason = "is a directory"
        else:
            reason = f"cannot be opened: {exc.strerror}"
        return UnreadableObjectError(key, reason)

    def _open_object(self, key: str, max_bytes: int | None) -> int:
        """A descriptor of the regular file at ``key``, opened without following any symbolic link."""
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in key:
            raise UnreadableObjectError(key, "is not a key inside the archive")
        try:
            directory = os.open(self._reading_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArchiveUnavailableError(f"opening {self._root}: {exc.strerror}") from exc
        try:
            # Each directory on the path is opened relative to the one before, refusing links, so a
            # directory swapped for a link after listing cannot lead outside the archive.
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
                except OSError as exc:
                    raise self._error(key, exc, on_path=True) from exc
                os.close(directory)
                directory = inner
            name = parts[-1]
            try:
                # Look before opening: a FIFO, a device or a link is refused without being opened.
                info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except OSError as exc:
                raise self._error(key, exc) from exc
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableObjectError(key, _not_regular(info.st_mode))
            if max_bytes is not None and info.st_size > max_bytes:
                raise ObjectTooLargeError(key, info.st_size, max_bytes)
            try:
                # O_NONBLOCK: should a FIFO be swapped in between the look and the open, opening it
                # returns at once instead of waiting for a writer.
                return os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                    dir_fd=directory,
                )
            except OSError as exc:
                raise self._error(key, exc) from exc
        finally:
            os.close(directory)

    def _read(self, key: str, max_bytes: int | None) -> bytes:
        descriptor = self._open_object(key, max_bytes)
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableObjectError(key, _not_regular(info.st_mode))
            size = info.st_size
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLargeError(key, size, max_bytes)
            return self._read_exactly(descriptor, key, size)
        except OSError as exc:
            raise self._error(key, exc) from exc
        finally:
            os.close(descriptor)

    @staticmethod
    def _read_exactly(descriptor: int, key: str, size: int) -> bytes:
        # Exactly the size the file had when opened, then one byte more to see whether it grew: a file
        # that keeps growing cannot keep the reader busy, and a changed object is not taken as whole.
        data = os.read(descriptor, size) if size else b""
        if len(data) < size:
            pieces, received = [data], len(data)
            while received < size:
                piece = os.read(descriptor, size - received)
                if not piece:
                    raise UnreadableObjectError(
                        key, f"changed while it was read: it ended after {received} of its {size} bytes"
                    )
                pieces.append(piece)
                received += len(piece)
            data = b"".join(pieces)
        if os.read(descriptor, 1):
            raise UnreadableObjectError(key, f"changed while it was read: it grew beyond its {size} bytes")
        return data

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self._read, key, max_bytes)

    async def close(self) -> None:
        return None
