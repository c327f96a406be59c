"""The archive interface shared by the writer and the verifier, and how an archive URL is opened.

An archive is a flat key space under a prefix. Writers put whole objects, each with its SHA-256
(sent as an integrity checksum where the store supports it); readers list and get. Keys are
relative to the archive's prefix and follow ``seal.layout``.

The verifier reads archives it does not trust. ``list_objects`` therefore says, for every entry, whether
it can be read as an archive object at all (a symbolic link, a FIFO or a device in a directory archive
cannot), and ``get`` takes a size limit it enforces before reading: a hostile archive can neither hang
the reader nor make it hold an object larger than the format allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

RetentionMode = Literal["GOVERNANCE", "COMPLIANCE", "NONE"]


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One entry of an archive listing.

    ``problem`` is empty for an object that can be read; otherwise it says in words why the entry
    cannot be read as an archive object ("is a symbolic link; it was not followed", "is a FIFO, not
    a regular file"), and ``get`` is not meant to be called for it. ``size`` is the size the store
    lists (0 where there is none).
    """

    key: str
    size: int
    problem: str = ""


class ArchiveStore(Protocol):
    """A place to write and read archive objects. Implementations translate their errors into
    ``ArchiveUnavailableError`` (retryable) or ``PermanentArchiveError``/``ConfigurationError``, and,
    when reading, ``UnreadableObjectError`` for an object that cannot be read for a reason of its own."""

    @property
    def description(self) -> str:
        """Where the archive is, for logs and reports (``s3://bucket/prefix`` or a directory)."""
        ...

    async def open(self) -> None:
        """Connect and check the archive is usable (raises ConfigurationError if it never will be)."""
        ...

    async def put(self, key: str, data: bytes, sha256: bytes) -> None: ...

    def list_keys(self, under: str = "", start_after: str = "", *, page_size: int | None = None) -> AsyncIterator[str]:
        """Keys that start with ``under``, in ascending order, beginning after ``start_after``.

        ``page_size``: how many keys the caller expects to read (a store that lists in pages asks for
        that many at a time, so a search that reads one key does not fetch a thousand)."""
        ...

    def list_objects(self, under: str = "", start_after: str = "") -> AsyncIterator[ListedObject]:
        """Like ``list_keys``, with each object's size and, for an entry that cannot be read as an
        archive object, the problem. Entries are never followed or opened to list them."""
        ...

    async def list_children(self, under: str = "") -> list[str]:
        """The names one level below ``under`` (which ends with "/" or is empty): ``chain/`` -> ``chain``."""
        ...

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes.

        Raises:
            ObjectTooLargeError: the object is larger than ``max_bytes``; it was not read whole.
            UnreadableObjectError: the object cannot be read for a reason of its own (not a regular
                file, a symbolic link, gone since it was listed, changed while being read).
            ArchiveUnavailableError: the store failed (down, throttled, an I/O error); may be retried.
        """
        ...

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
