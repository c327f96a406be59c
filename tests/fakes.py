"""In-memory implementations of the project's protocols, for unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from collector_ext.deliver.archive import ListedObject
from collector_ext.errors import ArchiveUnavailableError, ObjectTooLargeError, UnreadableObjectError


class InMemoryArchive:
    """An ArchiveStore in a dict. ``fail_puts`` makes the next N puts fail as if S3 were down.

    ``unreadable`` holds entries that are listed but cannot be read, key -> problem (as a directory
    archive lists a FIFO or a symbolic link); ``get`` raises UnreadableObjectError for them.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.unreadable: dict[str, str] = {}
        self.fail_puts = 0
        self.put_count = 0

    @property
    def description(self) -> str:
        return "memory://archive"

    async def open(self) -> None:
        return None

    async def put(self, key: str, data: bytes, sha256: bytes) -> None:
        if self.fail_puts > 0:
            self.fail_puts -= 1
            raise ArchiveUnavailableError("simulated outage")
        self.put_count += 1
        self.objects[key] = data

    async def list_objects(self, under: str = "", start_after: str = "") -> AsyncIterator[ListedObject]:
        for key in sorted(self.objects.keys() | self.unreadable.keys()):
            if key.startswith(under) and key > start_after:
                if key in self.unreadable:
                    yield ListedObject(key, 0, self.unreadable[key])
                else:
                    yield ListedObject(key, len(self.objects[key]))

    async def list_keys(
        self, under: str = "", start_after: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[str]:
        async for listed in self.list_objects(under, start_after):
            yield listed.key

    async def list_children(self, under: str = "") -> list[str]:
        return sorted(
            {
                key[len(under) :].split("/")[0]
                for key in self.objects
                if key.startswith(under) and "/" in key[len(under) :]
            }
        )

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if key in self.unreadable:
            raise UnreadableObjectError(key, self.unreadable[key])
        try:
            data = self.objects[key]
        except KeyError as exc:
            raise UnreadableObjectError(key, "no longer exists (it was deleted after it was listed)") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(key, len(data), max_bytes)
        return data

    async def close(self) -> None:
        return None
