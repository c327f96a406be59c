"""In-memory implementations of the project's protocols, for unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from collector_ext.errors import ArchiveUnavailableError


class InMemoryArchive:
    """An ArchiveStore in a dict. ``fail_puts`` makes the next N puts fail as if S3 were down."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
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

    async def list_keys(self, under: str = "", start_after: str = "") -> AsyncIterator[str]:
        for key in sorted(self.objects):
            if key.startswith(under) and key > start_after:
                yield key

    async def list_children(self, under: str = "") -> list[str]:
        return sorted(
            {
                key[len(under) :].split("/")[0]
                for key in self.objects
                if key.startswith(under) and "/" in key[len(under) :]
            }
        )

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError as exc:
            raise ArchiveUnavailableError(f"no object {key}") from exc

    async def close(self) -> None:
        return None
