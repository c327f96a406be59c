"""What passes between the pipeline's stages, and what waits in between.

    sealing --ClosedSegments--> persisting --ArchiveQueue--> uploading --ArchivedSegments--> checkpointing
                                                 ^                                                |
                                      resuming (spooled segments                    covered_through: trimming
                                      no checkpoint covers yet)

- ``OpenSegment``: the segment being filled by the sealer; once closed, it goes to the persister
  through ``ClosedSegments`` (in sequence order), which also holds the stage slots that bound how
  many closed segments are between closing and their first durable stage.
- ``SegmentToArchive``: a sealed segment's bytes (in memory or in a spool file) on the uploader's
  ``ArchiveQueue``, which counts the bytes it holds in memory.
- ``ArchivedSegments``: archived segments not yet in a checkpoint, and their Merkle leaf hashes.
- ``Backlog``: records sealed and not yet durable, or not yet archived, for refusals and shutdown.

Plain data and asyncio primitives only; the stages own the behaviour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector_ext.seal.checkpoint import SegmentRef
from collector_ext.seal.keys import Signer
from collector_ext.spool import SpooledSegment


@dataclass(eq=False)
class OpenSegment:
    first_sequence: int
    created_unix_nano: int
    entries: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    signature_chunks: list[asyncio.Future[bytes]] = field(default_factory=list)
    signing_submitted: int = 0  # hashes[:signing_submitted] are in signature_chunks
    size: int = 0
    spooled: asyncio.Future[None] | None = None
    archived: asyncio.Future[None] | None = None
    opened_at: float = field(default_factory=time.monotonic)
    # A retired key that signs this segment's entries (the restart mark and key rotation entry that
    # continue a chain under a new key); None: the signing pool's key.
    signer: Signer | None = None


class ClosedSegments:
    """Closed segments in sequence order, from the sealer to the persister.

    ``slots`` bounds the segments closed but not yet through the first durable stage (spool, or
    archive without one): the sealer takes a slot before it closes a segment, the persister gives it
    back once the segment is spooled (or archived). While none is free the open segment keeps filling.
    """

    def __init__(self, slots: int) -> None:
        self.queue: asyncio.Queue[OpenSegment] = asyncio.Queue()
        self.slots = asyncio.Semaphore(slots)


@dataclass(eq=False)
class SegmentToArchive:
    """A sealed segment on its way to the archive: its bytes in memory, or in a spool file."""

    first_sequence: int
    last_sequence: int
    created_unix_nano: int
    data: bytes | None
    spooled: SpooledSegment | None = None
    last_hash: bytes | None = None  # None: read from the data (segments re-queued at start)
    archived: asyncio.Future[None] | None = None
    on_archived: Callable[[], None] | None = None
    # The entries' Merkle leaf hashes (concatenated), being made by a worker from the entries while
    # they were at hand; None: computed from the data (segments re-queued at start, or the tree is off).
    leaves: asyncio.Future[bytes] | None = None


class ArchiveQueue:
    """Sealed segments waiting for the uploader, and the bytes of them held in memory (segments
    without ``data`` are read back from the spool)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SegmentToArchive] = asyncio.Queue()
        self.in_memory_bytes = 0

    def put(self, item: SegmentToArchive) -> None:
        if item.data is not None:
            self.in_memory_bytes += len(item.data)
        self.queue.put_nowait(item)

    async def get(self) -> SegmentToArchive:
        item = await self.queue.get()
        if item.data is not None:
            self.in_memory_bytes -= len(item.data)
        return item


@dataclass(eq=False)
class ArchivedSegments:
    """Archived segments not yet in a checkpoint, from the uploader to the checkpointer.

    ``refs``: by first sequence, the segment's ref and its last entry hash. ``leaves``: their Merkle
    leaf hashes (concatenated), possibly still being made on a worker; only while the tree is on.
    ``due`` is set when a checkpoint should be written soon.
    """

    refs: dict[int, tuple[SegmentRef, bytes]] = field(default_factory=dict)
    leaves: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    due: asyncio.Event = field(default_factory=asyncio.Event)


class Backlog:
    """Records sealed and not yet safe: in memory and not yet durable (spooled, or archived without a
    spool), and not yet archived. The sealer adds, the persister and uploader subtract."""

    def __init__(self) -> None:
        self.memory_records = 0
        self.memory_bytes = 0
        self.unarchived_records = 0
        self.all_archived = asyncio.Event()  # set while unarchived_records is 0
        self.all_archived.set()

    def add_unarchived(self, records: int) -> None:
        self.unarchived_records += records
        self.all_archived.clear()

    def archived(self, records: int) -> None:
        self.unarchived_records -= records
        if self.unarchived_records == 0:
            self.all_archived.set()


def resolve(future: asyncio.Future[None] | None, error: BaseException | None = None) -> None:
    """Complete a segment's durability future (once), with ``error`` when it failed."""
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a segment nobody waits for must not log "never retrieved"


async def all_of(futures: list[asyncio.Future[None]]) -> None:
    """Done when every one of ``futures`` is; the first failure is raised."""
    for future in futures:
        await future
