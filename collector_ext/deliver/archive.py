"""The archive interface shared by the writer and the verifier, and how an archive URL is opened.

An archive is a flat key space under a prefix. Writers put whole objects, each with its SHA-256
(sent as an integrity checksum where the store supports it); readers list and get. Keys are
relative to the archive's prefix and follow ``seal.layout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

RetentionMode = Literal["GOVERNANCE", "COMPLIANCE", "NONE"]


class ArchiveStore(Protocol):
    """A place to write and read archive objects. Implementations translate their errors into
    ``ArchiveUnavailableError`` (retryable) or ``PermanentArchiveError``/``ConfigurationError``."""

    @property
    def description(self) -> str:
        """Where the archive is, for logs and reports (``s3://bucket/prefix`` or a directory)."""
        ...

    async def open(self) -> None:
        """Connect and check the archive is usable (raises ConfigurationError if it never will be)."""
        ...

    async def put(self, key: str, data: bytes, sha256: bytes) -> None: ...

    def list_keys(self, under: str = "", start_after: str = "") -> AsyncIterator[str]:
        """Keys that start with ``under``, in ascending order, beginning after ``start_after``."""
        ...

    async def list_children(self, under: str = "") -> list[str]:
        """The names one level below ``under`` (which ends with "/" or is empty): ``chain/`` -> ``chain``."""
        ...

    async def get(self, key: str) -> bytes: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str


def parse_s3_url(url: str) -> S3Location | None:
    """``s3://bucket/some/prefix`` -> S3Location; anything else -> None (a directory path)."""
    if not url.startswith("s3://"):
        return None
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    return S3Location(bucket=bucket, prefix=prefix.strip("/"))
