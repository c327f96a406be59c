"""The directory archive: the S3 layout on a local filesystem.

It is the embedded default for trying the sidecar out, and what an auditor holds after
``aws s3 sync s3://bucket/prefix DIR``: the verifier reads both the same way. Each object is written
to a temporary file, fsynced, renamed into place and made read-only, and the directory is fsynced,
so an object is either absent or complete. A directory gives no WORM guarantee; that is what the S3
archive with Object Lock is for.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from collector_ext.errors import ArchiveUnavailableError, ConfigurationError


class DirectoryArchive:
    """ArchiveStore on a local directory."""

    def __init__(self, root: Path, *, for_writing: bool = True) -> None:
        self._root = root
        self._for_writing = for_writing

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

    def _walk(self, under: str) -> list[str]:
        keys = []
        # Walk only the directory that holds every key starting with ``under``.
        start = self._path(under.rpartition("/")[0]) if "/" in under else self._root
        for directory, _subdirectories, files in os.walk(start):
            for name in files:
                if name.startswith("."):
                    continue
                key = os.path.relpath(os.path.join(directory, name), self._root).replace(os.sep, "/")
                if key.startswith(under):
                    keys.append(key)
        return sorted(keys)

    async def list_keys(self, under: str = "", start_after: str = "") -> AsyncIterator[str]:
        try:
            keys = await asyncio.to_thread(self._walk, under)
        except OSError as exc:
            raise ArchiveUnavailableError(f"listing {self._root}: {exc}") from exc
        for key in keys:
            if key > start_after:
                yield key

    async def list_children(self, under: str = "") -> list[str]:
        directory = self._path(under) if under else self._root
        try:
            names = await asyncio.to_thread(os.listdir, directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveUnavailableError(f"listing {directory}: {exc}") from exc
        return sorted(name for name in names if not name.startswith(".") and (directory / name).is_dir())

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except OSError as exc:
            raise ArchiveUnavailableError(f"reading {key} under {self._root}: {exc}") from exc

    async def close(self) -> None:
        return None
