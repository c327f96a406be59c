"""The sealing pipeline: seal -> group into segments -> spool -> archive -> checkpoint.

One ``SealingPipeline`` owns one chain. ``submit`` appends a request's records to the chain at once
(sequence numbers and links are assigned on the event loop, so the order is total), hands the
signatures to a SigningPool (worker processes by default), and returns when the segment holding
those records is durable: written and fsynced to the local spool (``ack="spool"``) or stored in
the archive (``ack="archive"``). That is the acknowledgement rule.

Group commit: records of concurrent requests share the open segment. A segment closes when it is
full (records or bytes) or its first record has waited ``max_linger``; while the stage after it is
busy (``upload_concurrency`` segments being signed and spooled, or uploaded when there is no spool)
the open segment keeps filling, so batches grow with load. Segments are spooled one at a time in
sequence order, so the spool always holds a contiguous run of the chain; the uploader then reads
them back from the spool (memory stays bounded however long the archive is away). Without a spool
segments are uploaded one at a time, so the archive always holds a prefix of the chain. A
checkpoint covering every contiguously archived segment is written after uploads complete (at most
one per ``checkpoint_min_spacing``) and on a timer when idle; a stored checkpoint lets the spool
drop the files it covers once the Loki sender has them too.

Restarts: a spool that holds a chain is continued (a signed RESTART entry marks the seam) after the
checkpoint state is read back from the archive, and the spooled segments no checkpoint covers yet
are uploaded again (same keys, same bytes). Without a usable spool a new chain starts, and its
genesis names the chain this writer last wrote, found in the archive (``recovery``).

Failure handling: uploads and spool writes are retried with backoff until they succeed or the
pipeline shuts down. A request not durable within ``ack_timeout`` gets ``ArchiveUnavailableError``
(the receiver answers UNAVAILABLE, so the collector retries; its records are still kept, so a
resend appears twice in the chain: see README, "Resends"). New requests are refused before
sealing (``CapacityExceededError``) while the spool is full or failing, or too many records wait in
memory.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext import __version__
from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import (
    ArchiveUnavailableError,
    CapacityExceededError,
    ConfigurationError,
    DeliveryError,
    InvalidRequestError,
    PermanentArchiveError,
    UnreadableObjectError,
)
from collector_ext.recovery import find_predecessor, newest_checkpoint
from collector_ext.retry import RetryPolicy, backoff_delay, retry_async
from collector_ext.seal.chain import (
    ChainHead,
    chain_entries,
    genesis_payload,
    key_rotation_payload,
    restart_payload,
    run_key_payload,
    sign_entry_hashes,
)
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, sign_checkpoint
from collector_ext.seal.entry import (
    ENTRY_HEADER_SIZE,
    KEY_ID_SLICE,
    SIGNATURE_SIZE,
    ZERO_HASH,
    EntryKind,
    entry_hash,
)
from collector_ext.seal.framing import (
    MAX_ENTRY_BYTES,
    MAX_SEGMENT_OBJECT_BYTES,
    MAX_SEGMENT_RECORDS,
    MAX_SEGMENTS_PER_CHECKPOINT,
)
from collector_ext.seal.keys import Ed25519Signer, Signer
from collector_ext.seal.layout import checkpoint_key, checkpoint_note_key, parse_segment_key, segment_key, tile_key
from collector_ext.seal.merkle import concatenated_leaf_hashes, leaf_hash, split_hashes
from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
from collector_ext.seal.segment import (
    RECORD_OVERHEAD_BYTES,
    decode_segment,
    encode_segment,
    segment_object_bound,
)
from collector_ext.seal.tiles import Tile, TileBuilder, decode_tile, extend_by_segments
from collector_ext.signing_pool import SigningPool, SigningWorkers
from collector_ext.spool import Spool, SpoolContents, SpooledSegment, SpoolError, SpoolFullError
from collector_ext.token_signer import SigningTokenError

AckMode = Literal["spool", "archive"]
T = TypeVar("T")

log = logging.getLogger(__name__)

MIN_SIGNING_CHUNK = 64
# Hashes of the open segment handed to the signing pool together while its workers are busy: every
# hand-over to a worker process costs the event loop's process some hundreds of microseconds (the
# executor's threads, pickling, wake-ups), so under load a few large chunks per segment rather than
# a small one per request. An idle pool gets a request's hashes at once (no added latency); the rest
# of a segment is handed over when it closes.
SIGNING_BATCH = 1024
# Bytes of spooled segments kept in memory for the uploader; beyond this they are read back from disk.
KEEP_IN_MEMORY_BYTES = 8 * 1024 * 1024
TRIM_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    segment_max_records: int = 20_000
    segment_max_bytes: int = 16 * 1024 * 1024
    max_linger: float = 0.015
    upload_concurrency: int = 2
    checkpoint_interval: float = 60.0
    checkpoint_min_spacing: float = 1.0
    ack_timeout: float = 10.0
    ack: AckMode = "spool"  # "spool" needs a Spool; without one the pipeline acks on "archive"
    max_pending_records: int = 200_000  # sealed, in memory, not yet durable
    max_pending_bytes: int = 32 * 1024 * 1024
    spool_max_bytes: int = 1024 * 1024 * 1024
    signing_workers: SigningWorkers = "processes"
    signing_worker_count: int = 0  # 0: one per CPU
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The chain's Merkle tree (hash tiles and a signed note per checkpoint, FORMAT.md 16). Off only to
    # measure what it costs (tests/benchmark.py); an archive written without it has no proofs.
    merkle_tree: bool = True


CheckpointHook = Callable[[bytes, int, int], None]
"""Called with each new checkpoint note after it is stored: ``(note bytes, tree size, previous size)``."""


def _segment_leaves(data: bytes) -> bytes:
    """The leaf hashes of a segment object's entries, in order and concatenated (FORMAT.md 16.1)."""
    return b"".join(leaf_hash(record.entry) for record in decode_segment(data).records)


@dataclass(eq=False)
class _OpenSegment:
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


@dataclass(eq=False)
class _ToArchive:
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


@dataclass
class PipelineStats:
    records_sealed: int = 0
    records_spooled: int = 0
    records_archived: int = 0
    segments_archived: int = 0
    checkpoints_written: int = 0
    upload_retries: int = 0
    spool_write_retries: int = 0
    requests_refused: int = 0
    restarts: int = 0
    last_checkpoint_unix: float = 0.0


def _resolve(future: asyncio.Future[None] | None, error: BaseException | None = None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a segment nobody waits for must not log "never retrieved"


async def _all_of(futures: list[asyncio.Future[None]]) -> None:
    """Done when every one of ``futures`` is; the first failure is raised."""
    for future in futures:
        await future


class SealingPipeline:
    """Seals records into one chain, spools and archives them; see the module docstring."""

    def __init__(
        self,
        signer: Signer,
        store: ArchiveStore,
        settings: PipelineSettings | None = None,
        *,
        spool: Spool | None = None,
        clock: Callable[[], int] = time.time_ns,
        writer: str = f"collector-ext/{__version__}",
        writer_id: str = "",
        archive_id: str = "",
        retired_signers: Sequence[Signer] = (),
        on_archived: Callable[[list[bytes], list[bytes]], None] | None = None,
        on_spooled: Callable[[SpooledSegment], None] | None = None,
        loki_cursor: Callable[[bytes], int] | None = None,
        run_key: bool = False,
        on_checkpoint: CheckpointHook | None = None,
    ) -> None:
        """``run_key``: ``signer`` (e.g. a key in a PKCS#11 token) signs the chain's own entries and its
        checkpoints and certifies a fresh in-memory key at the start of each run, which signs the log
        records (FORMAT.md 7.7); otherwise ``signer`` signs everything."""
        settings = settings or PipelineSettings()
        if spool is None and settings.ack == "spool":
            settings = dataclasses.replace(settings, ack="archive")
        # The chain's key: genesis, restart marks, key rotations, run key entries and checkpoints.
        self._signer = signer
        # The run key (run_key mode): made here, never stored, gone when the process ends.
        self._run_signer = Ed25519Signer(Ed25519PrivateKey.generate()) if run_key else None
        # What signs log records.
        self._record_signer: Signer = self._run_signer or signer
        self._store = store
        self._settings = settings
        self._spool = spool
        self._clock = clock
        self._writer = writer
        self._writer_id = writer_id
        self._archive_id = archive_id
        self._retired = {retired.key_id: retired for retired in retired_signers}
        # After a key rotation: its sequence number and the key it retired (checkpoints up to the
        # entry before it are signed by that key, FORMAT.md 10.2).
        self._rotation: tuple[int, Signer] | None = None
        self._on_archived = on_archived
        self._on_spooled = on_spooled
        self._loki_cursor = loki_cursor
        self._head = ChainHead.new(uuid.uuid4().bytes)
        self._signing = SigningPool(
            self._record_signer, workers=settings.signing_workers, count=settings.signing_worker_count
        )
        self._open: _OpenSegment | None = None
        self._signing_in_flight = 0  # chunks handed to the signing pool, not yet signed
        self._full_segments: collections.deque[_OpenSegment] = collections.deque()
        self._segment_ready = asyncio.Event()
        self._segment_full = asyncio.Event()
        # Segments closed but not yet through the first durable stage (spool, or archive without one).
        self._stage_slots = asyncio.Semaphore(settings.upload_concurrency)
        self._closed: asyncio.Queue[_OpenSegment] = asyncio.Queue()
        self._to_archive: asyncio.Queue[_ToArchive] = asyncio.Queue()
        self._in_memory_bytes = 0  # held by _ToArchive items on their way to the archive
        self._uploading = 0
        self._memory_records = 0  # sealed, not yet durable (spooled, or archived without a spool)
        self._memory_bytes = 0
        self._unarchived_records = 0
        self._all_archived = asyncio.Event()  # set while _unarchived_records is 0
        self._all_archived.set()
        # Archived segments not yet in a checkpoint, by first sequence: their ref and last entry hash.
        self._archived: dict[int, tuple[SegmentRef, bytes]] = {}
        self._next_uncovered = 0
        self._last_covered_head = ZERO_HASH
        self._checkpoint_number = 0
        self._previous_checkpoint = b""
        self._checkpoint_due = asyncio.Event()
        self._checkpoint_write: asyncio.Future[bool] | None = None  # the checkpoint loop's write in flight
        # The Merkle tree up to the newest checkpoint (None until start() knows the chain), the leaf
        # hashes of archived segments not yet in a checkpoint, the partial tiles already stored, and
        # the subscribers told of each new checkpoint note.
        self._tiles: TileBuilder | None = None
        # Concatenated, still being made on a worker while the segment is archived and acknowledged.
        self._leaves: dict[int, asyncio.Future[bytes]] = {}
        self._stored_partials: set[tuple[int, int, int]] = set()
        self._checkpoint_hooks: list[CheckpointHook] = [on_checkpoint] if on_checkpoint is not None else []
        # Set at shutdown and checked by the background loops: on Python 3.11 a cancellation that
        # meets asyncio.wait_for just as its inner wait completes can be lost, so cancelling alone
        # does not reliably stop a loop.
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing_since: float | None = None
        self._spool_failing_since: float | None = None
        self._spool_error = ""
        self._accepting = False
        self.clean_shutdown = False
        self.start_reason = ""
        self.stats = PipelineStats()

    # -- public -------------------------------------------------------------------------------------
    @property
    def chain_id(self) -> bytes:
        return self._head.chain_id

    @property
    def ack_mode(self) -> AckMode:
        return self._settings.ack

    @property
    def pending_records(self) -> int:
        """Records sealed but not yet archived."""
        return self._unarchived_records

    @property
    def next_sequence(self) -> int:
        return self._head.next_sequence

    @property
    def failing_since(self) -> float | None:
        """``time.monotonic()`` of the first failure of the current run of failed archive writes."""
        return self._failing_since

    @property
    def spool_failing_since(self) -> float | None:
        return self._spool_failing_since

    @property
    def spool_bytes(self) -> int:
        return self._spool.used_bytes if self._spool is not None else 0

    @property
    def spool_max_bytes(self) -> int:
        return self._settings.spool_max_bytes if self._spool is not None else 0

    @property
    def ready(self) -> bool:
        """True when a request now would be accepted (for the health service): one of up to 1 MiB,
        or an eighth of the spool bound if that is smaller."""
        headroom = min(1024 * 1024, self._settings.spool_max_bytes // 8) if self._spool is not None else 0
        return self._accepting and self._refusal(1, headroom) is None

    def _refusal(self, records: int, size: int) -> str | None:
        """Why a request of ``records`` records and ``size`` bytes would be refused now, or None."""
        settings = self._settings
        if self._memory_records + records > settings.max_pending_records or (
            self._memory_bytes > 0 and self._memory_bytes + size > settings.max_pending_bytes
        ):
            where = "the spool" if self._spool is not None else "the archive"
            return (
                f"{self._memory_records} records ({self._memory_bytes} bytes) wait in memory for {where} "
                f"(max_pending_records={settings.max_pending_records}, max_pending_bytes="
                f"{settings.max_pending_bytes})"
            )
        if self._spool is not None:
            if self._spool_failing_since is not None:
                return f"the spool cannot be written: {self._spool_error}"
            if self._spool.used_bytes + self._memory_bytes + size > settings.spool_max_bytes:
                return (
                    f"the spool holds {self._spool.used_bytes} bytes (spool.max_bytes="
                    f"{settings.spool_max_bytes}); the archive or Loki is not draining it"
                )
        if settings.ack == "archive" and self._failing_since is not None:
            return "the archive is failing"
        return None

    def subscribe_checkpoints(self, hook: CheckpointHook) -> None:
        """Call ``hook(note, size, previous_size)`` after each new checkpoint note is stored.

        Hooks run on the event loop, after the checkpoint is stored and off the acknowledgement path;
        they must not block (hand the work to a task or a queue). An exception is logged, not raised.
        """
        self._checkpoint_hooks.append(hook)

    async def start(self) -> None:
        """Continue the spool's chain, or start a new one; wait until its first entry (restart mark
        or genesis) is durable, then accept requests.

        Raises:
            ConfigurationError: the spool cannot be used with this key or archive.
            SpoolError: the spool's files are damaged.
        """
        contents = await asyncio.to_thread(self._spool.open) if self._spool is not None else None
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="segment-flush"),
            asyncio.create_task(self._persist_loop(), name="segment-persist"),
            asyncio.create_task(self._checkpoint_loop(), name="checkpoints"),
            *([asyncio.create_task(self._trim_loop(), name="spool-trim")] if self._spool is not None else []),
            *(
                asyncio.create_task(self._upload_loop(), name=f"upload-{n}")
                for n in range(self._settings.upload_concurrency if self._spool is not None else 1)
            ),
        ]
        if contents is not None and contents.head is not None:
            first = await self._continue_chain(contents)
        else:
            first = await self._new_chain()
        self._checkpoint_due.set()
        await first
        self._accepting = True
        log.info(
            "chain ready",
            extra={
                "chain_id": self.chain_id.hex(),
                "next_sequence": self.next_sequence,
                "key_id": self._signer.key_id.hex(),
                "record_key_id": self._record_signer.key_id.hex(),
                "ack": self._settings.ack,
                "reason": self.start_reason,
            },
        )

    async def _continue_chain(self, contents: SpoolContents) -> asyncio.Future[None]:
        assert contents.head is not None
        assert self._spool is not None
        head = contents.head
        retired: Signer | None = None
        chain_key_id = await self._chain_key_id(contents)
        if chain_key_id != self._signer.key_id:
            retired = self._retired.get(chain_key_id or b"")
            if retired is None:
                raise ConfigurationError(
                    "signing_key",
                    f"the spool {self._spool.directory} holds chain {head.chain_id.hex()} signed with key id "
                    f"{contents.key_id.hex() if contents.key_id else '?'}, not this key's "
                    f"{self._signer.key_id.hex()}: list the old key under previous_signing_keys to continue the "
                    "chain after a signed key rotation, or move the spool aside to start a new chain",
                )
        chain_key = retired.public_key if retired is not None else self._signer.public_key
        checkpoint = await self._read_archive(
            "the newest checkpoint", lambda: newest_checkpoint(self._store, head.chain_id, [chain_key])
        )
        if checkpoint is not None:
            covered = checkpoint.checkpoint
            if covered.last_sequence >= head.next_sequence:
                raise ConfigurationError(
                    "spool.directory",
                    f"the archive's checkpoint {covered.checkpoint_number} of chain {head.chain_id.hex()} covers "
                    f"up to sequence {covered.last_sequence}, but the spool {self._spool.directory} ends at "
                    f"{head.next_sequence - 1}: the spool is older than the archive (restored from a backup?). "
                    "Move it aside; the sidecar will then start a new chain that supersedes this one",
                )
            self._checkpoint_number = covered.checkpoint_number + 1
            self._previous_checkpoint = checkpoint.sha256
            self._next_uncovered = covered.last_sequence + 1
            self._last_covered_head = covered.head_sha256
        self._head = head
        if self._settings.merkle_tree:
            self._tiles = await self._resume_tree(head.chain_id, self._next_uncovered)
        for segment in contents.segments:
            if segment.last_sequence >= self._next_uncovered:
                self._unarchived_records += segment.record_count
                self._all_archived.clear()
                self._to_archive.put_nowait(
                    _ToArchive(
                        segment.first_sequence,
                        segment.last_sequence,
                        segment.created_unix_nano,
                        data=None,
                        spooled=segment,
                    )
                )
        how = "after a clean shutdown" if contents.previous_run_clean else "after a crash or kill"
        self.start_reason = f"restarted {how}; chain continued from the local spool"
        self.stats.restarts += 1
        payload = restart_payload(
            writer=self._writer,
            writer_id=self._writer_id,
            previous_run_clean=contents.previous_run_clean,
            reason=self.start_reason,
        )
        if retired is None:
            durable = self._seal(EntryKind.RESTART, [payload])
            return self._certify_run_key() or durable
        # The chain is bound to the retired key: that key signs the restart mark and the rotation that
        # hands the chain to the new key; everything after is signed by the new key.
        self._seal(EntryKind.RESTART, [payload], signer=retired)
        sequence = self._head.next_sequence
        rotation = key_rotation_payload(
            chain_id=head.chain_id,
            sequence=sequence,
            retired=retired,
            successor=self._signer,
            reason=f"signing key {retired.key_id.hex()} retired; {self._signer.key_id.hex()} signs from here on",
        )
        self._rotation = (sequence, retired)
        self.start_reason += f"; key rotated from {retired.key_id.hex()} to {self._signer.key_id.hex()}"
        durable = self._seal(EntryKind.KEY_ROTATION, [rotation], signer=retired)
        return self._certify_run_key() or durable

    async def _resume_tree(self, chain_id: bytes, size: int) -> TileBuilder:
        """The chain's tree at the newest checkpoint's ``size``: from that size's partial tiles, or, when
        they are missing (a chain begun before the tree existed), from every segment up to it."""
        if size == 0:
            return TileBuilder()
        partial: dict[int, list[bytes]] = {}
        try:
            for tile in TileBuilder(size, _placeholder_partials(size)).partial_tiles():
                key = tile_key("", chain_id, tile.level, tile.index, tile.width)
                data = await self._read_archive(f"tree tile {key}", functools.partial(self._store.get, key))
                partial[tile.level] = list(decode_tile(tile.level, tile.index, tile.width, data).hashes)
            tiles = TileBuilder(size, partial)
            self._stored_partials = {(t.level, t.index, t.width) for t in tiles.partial_tiles()}
            return tiles
        except (UnreadableObjectError, ValueError) as exc:
            log.warning(
                "tree tiles missing at the newest checkpoint; computing the tree from the chain's segments",
                extra={"chain_id": chain_id.hex(), "tree_size": size, "error": str(exc)},
            )
        tiles = TileBuilder()
        async for key in self._store.list_keys(f"{chain_id.hex()}/segments/"):
            parsed = parse_segment_key(key)
            if parsed is None or parsed.first_sequence >= size:
                continue
            data = await self._read_archive(f"segment {key}", functools.partial(self._store.get, key))
            leaves = split_hashes(await asyncio.to_thread(_segment_leaves, data))
            if parsed.first_sequence != tiles.size:
                raise ConfigurationError(
                    "archive.url",
                    f"chain {chain_id.hex()} has no segment starting at sequence {tiles.size} in the archive: "
                    "its Merkle tree cannot be computed (run `collector-ext verify` on the archive)",
                )
            tiles.extend(leaves[: size - tiles.size])
        return tiles

    async def _chain_key_id(self, contents: SpoolContents) -> bytes | None:
        """The key id the spool's chain is bound to. Its newest entry names it, unless that entry is a
        log record signed by an earlier run's run key (FORMAT.md 7.7): then the chain's key is the one
        that signed its newest checkpoint, or, while the spool still starts at the genesis (nothing was
        checkpointed, so nothing was trimmed), the genesis's key."""
        assert contents.head is not None
        ours = {self._signer.key_id, *self._retired}
        if contents.key_id in ours or self._run_signer is None:
            return contents.key_id
        chain_id = contents.head.chain_id
        keys = [self._signer.public_key, *(r.public_key for r in self._retired.values())]
        checkpoint = await self._read_archive(
            "the newest checkpoint", lambda: newest_checkpoint(self._store, chain_id, keys)
        )
        if checkpoint is not None:
            return checkpoint.checkpoint.key_id
        first = contents.segments[0] if contents.segments else None
        if first is not None and first.first_sequence == 0 and self._spool is not None:
            try:
                data = await asyncio.to_thread(first.path.read_bytes)
            except OSError as exc:
                raise SpoolError(f"cannot read {first.path}: {exc.strerror}") from exc
            return decode_segment(data).records[0].entry[KEY_ID_SLICE]
        return contents.key_id

    async def _new_chain(self) -> asyncio.Future[None]:
        if self._settings.merkle_tree:
            self._tiles = TileBuilder()
        predecessor = await self._read_archive(
            "the chain this writer wrote last",
            lambda: find_predecessor(
                self._store, self._writer_id, [self._signer.public_key, *(r.public_key for r in self._retired.values())]
            ),
        )
        if predecessor is None:
            self.start_reason = f"first chain of writer {self._writer_id!r} in this archive"
            payload = genesis_payload(
                self._signer.public_key,
                writer=self._writer,
                writer_id=self._writer_id,
                reason=self.start_reason,
                archive_id=self._archive_id,
            )
        else:
            self.start_reason = (
                f"local state of writer {self._writer_id!r} not found; superseding chain "
                f"{predecessor.chain_id.hex()}, seen in the archive up to sequence {predecessor.last_sequence}"
            )
            payload = genesis_payload(
                self._signer.public_key,
                writer=self._writer,
                writer_id=self._writer_id,
                reason=self.start_reason,
                supersedes_chain_id=predecessor.chain_id,
                superseded_last_sequence=predecessor.last_sequence,
                superseded_covered_until=max(predecessor.covered_until, 0),
                archive_id=self._archive_id,
                # What the successor vouches for: the old chain's head where it was seen to end, and its
                # newest checkpoint (FORMAT.md 7.4).
                superseded_head_sha256=predecessor.head_sha256 or ZERO_HASH,
                superseded_checkpoint_sha256=predecessor.checkpoint_sha256,
                superseded_checkpoint_number=predecessor.checkpoint_number,
            )
        durable = self._seal(EntryKind.GENESIS, [payload])
        return self._certify_run_key() or durable

    def _certify_run_key(self) -> asyncio.Future[None] | None:
        """In run_key mode: seal the entry by which the chain's key certifies this run's record key
        (FORMAT.md 7.7), right after the genesis or restart mark; None otherwise."""
        if self._run_signer is None:
            return None
        sequence = self._head.next_sequence
        payload = run_key_payload(
            chain_id=self._head.chain_id,
            sequence=sequence,
            certifier=self._signer,
            run_key=self._run_signer,
            reason=f"run key {self._run_signer.key_id.hex()} signs this run's records",
        )
        self.start_reason += f"; run key {self._run_signer.key_id.hex()} certified at seq {sequence}"
        return self._seal(EntryKind.RUN_KEY, [payload], signer=self._signer)

    async def _read_archive(self, what: str, read: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up read of the archive, retrying for as long as the archive is unavailable
        (the receivers are not started yet, so the collector keeps its data and retries)."""
        attempt = 0
        while True:
            try:
                return await read()
            except ArchiveUnavailableError as exc:
                delay = backoff_delay(attempt, self._settings.retry, random_fraction=0.5)
                log.warning(
                    f"cannot read {what} from the archive; retrying",
                    extra={"error": str(exc), "attempt": attempt + 1, "delay_s": round(delay, 3)},
                )
                attempt += 1
                await asyncio.sleep(delay)

    async def submit(self, payloads: list[bytes]) -> None:
        """Seal ``payloads`` as consecutive log-record entries and wait until they are durable.

        The list is emptied once its records are sealed: they live on in the chain's entries, and a
        request waiting for its acknowledgement should not hold a second copy of them.

        Raises:
            CapacityExceededError: the spool is full or failing, or too much waits in memory;
                nothing was sealed.
            ArchiveUnavailableError: sealed, but not durable within ack_timeout (the records are
                kept and still archived).
        """
        if not self._accepting:
            raise CapacityExceededError("the sidecar is shutting down")
        for index, payload in enumerate(payloads):
            if len(payload) + ENTRY_HEADER_SIZE > MAX_ENTRY_BYTES:
                raise InvalidRequestError(
                    f"log record {index} of the request encodes to {len(payload)} bytes; a sealed record holds at "
                    f"most {MAX_ENTRY_BYTES - ENTRY_HEADER_SIZE} (proto/FORMAT.md 4.1); nothing was sealed"
                )
        size = sum(map(len, payloads)) + ENTRY_HEADER_SIZE * len(payloads)  # the entries' bytes
        refusal = self._refusal(len(payloads), size)
        if refusal is not None:
            self.stats.requests_refused += 1
            raise CapacityExceededError(refusal)
        durable = self._seal(EntryKind.LOG_RECORD, payloads, size)
        payloads.clear()
        try:
            await asyncio.wait_for(asyncio.shield(durable), timeout=self._settings.ack_timeout)
        except TimeoutError as exc:
            where = "spooled" if self._settings.ack == "spool" else "archived"
            raise ArchiveUnavailableError(
                f"records not {where} within ack_timeout={self._settings.ack_timeout}s; they are kept and "
                "archived later"
            ) from exc

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting; spool and archive what is sealed (as far as ``drain_timeout`` allows); write
        a final checkpoint; stop the background tasks. ``clean_shutdown`` tells whether every sealed
        record reached durable storage."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        if self._open is not None and self._open.entries:
            self._segment_full.set()
        try:
            # Records not yet durable are among those not yet archived: one wait covers both.
            await asyncio.wait_for(self._all_archived.wait(), timeout=drain_timeout)
        except TimeoutError:
            log.warning(
                "shutdown deadline reached with records not archived",
                extra={"not_durable": self._memory_records, "not_archived": self._unarchived_records},
            )
        self.clean_shutdown = self._memory_records == 0
        self._stopping.set()
        self._segment_ready.set()
        self._checkpoint_due.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checkpoint_write is not None:
            # A checkpoint the loop was writing is finished first (its outcome was logged or is moot).
            await asyncio.gather(self._checkpoint_write, return_exceptions=True)
        try:
            # Final when everything sealed is archived: the chain is closed cleanly here (FORMAT.md 11.1).
            await asyncio.wait_for(self._write_final_checkpoints(), timeout=max(1.0, deadline - time.monotonic()))
        except (DeliveryError, PermanentArchiveError, TimeoutError) as exc:
            log.warning("final checkpoint not written", extra={"error": str(exc)})
        await self._trim_spool()
        self._signing.close()

    # -- sealing ------------------------------------------------------------------------------------
    def _seal(
        self, kind: EntryKind, payloads: list[bytes], size: int | None = None, *, signer: Signer | None = None
    ) -> asyncio.Future[None]:
        """Chain ``payloads`` into the open segment; ``size`` is their entries' total length when the
        caller knows it already. ``signer`` (a retired key, at start-up only) signs instead of the
        signing pool; its entries get a segment of their own. A batch that would carry the open
        segment past MAX_SEGMENT_OBJECT_BYTES continues in new segments."""
        loop = asyncio.get_running_loop()
        if signer is None and kind != EntryKind.LOG_RECORD and self._run_signer is not None:
            signer = self._signer  # in run_key mode the pool holds the run key, which signs records only
        if self._open is not None and self._open.signer is not signer:
            self._close_open_segment()  # entries signed inline by another key get a segment of their own
        batch = chain_entries(self._head, kind, payloads, (signer or self._record_signer).key_id, self._clock())
        self._head = batch.head
        if size is None:
            size = sum(map(len, batch.entries))
        open_size, open_records = self._open_fill()
        if (
            segment_object_bound(open_size + size, open_records + len(payloads)) <= MAX_SEGMENT_OBJECT_BYTES
            and open_records + len(payloads) <= MAX_SEGMENT_RECORDS
        ):
            durable = self._append(loop, batch.first_sequence, batch.entries, batch.hashes, size, signer)
        else:
            durable = self._append_split(loop, batch.first_sequence, batch.entries, batch.hashes, signer)
        self._memory_records += len(payloads)
        self._memory_bytes += size
        self._unarchived_records += len(payloads)
        self._all_archived.clear()
        self.stats.records_sealed += len(payloads)
        self._segment_ready.set()
        return durable

    def _append_split(
        self,
        loop: asyncio.AbstractEventLoop,
        first_sequence: int,
        entries: list[bytes],
        hashes: list[bytes],
        signer: Signer | None,
    ) -> asyncio.Future[None]:
        """Spread a large batch over as many segments as it needs; durable when all of them are."""
        durables: list[asyncio.Future[None]] = []
        start = 0
        while start < len(entries):
            open_size, open_records = self._open_fill()
            bound = segment_object_bound(open_size, open_records)
            room = MAX_SEGMENT_RECORDS - open_records
            end, size = start, 0
            while end < len(entries) and end - start < room:
                cost = len(entries[end]) + RECORD_OVERHEAD_BYTES
                if bound + cost > MAX_SEGMENT_OBJECT_BYTES and (end > start or self._open is not None):
                    break
                bound += cost
                size += len(entries[end])
                end += 1
            if end == start:
                self._close_open_segment()  # the open segment is full: the rest goes to a new one
                continue
            durables.append(
                self._append(loop, first_sequence + start, entries[start:end], hashes[start:end], size, signer)
            )
            start = end
            if start < len(entries):
                self._close_open_segment()
        if len(durables) == 1:
            return durables[0]
        return asyncio.ensure_future(_all_of(durables))

    def _open_fill(self) -> tuple[int, int]:
        """Entry bytes and records in the open segment (0, 0 when none is open)."""
        return (self._open.size, len(self._open.entries)) if self._open is not None else (0, 0)

    def _close_open_segment(self) -> None:
        """Hand the open segment to the flush loop now; the next entries open a new one."""
        if self._open is not None and self._open.entries:
            self._full_segments.append(self._open)
            self._open = None
            self._segment_ready.set()

    def _append(
        self,
        loop: asyncio.AbstractEventLoop,
        first_sequence: int,
        entries: list[bytes],
        hashes: list[bytes],
        size: int,
        signer: Signer | None,
    ) -> asyncio.Future[None]:
        segment = self._open
        if segment is None:
            segment = _OpenSegment(first_sequence=first_sequence, created_unix_nano=self._clock(), signer=signer)
            segment.archived = loop.create_future()
            if self._spool is not None:
                segment.spooled = loop.create_future()
            self._open = segment
        assert segment.signer is signer, "entries of a retired key are sealed before requests are accepted"
        if signer is not None:
            signed: asyncio.Future[bytes] = loop.create_future()
            signed.set_result(b"".join(sign_entry_hashes(signer, hashes)))
            segment.signature_chunks.append(signed)
            segment.signing_submitted += len(hashes)
        segment.entries += entries
        segment.hashes += hashes
        if (
            len(segment.hashes) - segment.signing_submitted >= SIGNING_BATCH
            or self._signing_in_flight < self._signing.workers
        ):
            self._sign_rest(segment)
        segment.size += size
        if (
            len(segment.entries) >= self._settings.segment_max_records
            or segment.size >= self._settings.segment_max_bytes
        ):
            self._segment_full.set()
        durable = segment.spooled if self._settings.ack == "spool" else segment.archived
        assert durable is not None
        return durable

    def _sign_rest(self, segment: _OpenSegment) -> None:
        """Hand the segment's hashes not yet given to the signing pool to it, spread over every
        worker in chunks big enough to make each hand-over cheap."""
        hashes = segment.hashes[segment.signing_submitted :]
        if not hashes:
            return
        chunk_size = max(MIN_SIGNING_CHUNK, -(-len(hashes) // self._signing.workers))
        for start in range(0, len(hashes), chunk_size):
            chunk = self._signing.sign(hashes[start : start + chunk_size])
            self._signing_in_flight += 1
            chunk.add_done_callback(self._signing_done)
            segment.signature_chunks.append(chunk)
        segment.signing_submitted = len(segment.hashes)

    def _signing_done(self, _: asyncio.Future[bytes]) -> None:
        self._signing_in_flight -= 1
        # A worker is free: the open segment's hashes held back while all were busy go now, so a
        # request never waits for a batch to fill or its segment to close (latency at moderate load).
        segment = self._open
        if (
            segment is not None
            and len(segment.hashes) > segment.signing_submitted
            and self._signing_in_flight < self._signing.workers
        ):
            self._sign_rest(segment)

    def _to_persist(self, segment: _OpenSegment) -> None:
        """A closed segment goes to the persist loop; its last hashes go to the signing pool now."""
        self._sign_rest(segment)
        self._closed.put_nowait(segment)

    # -- segments -----------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            await self._segment_ready.wait()
            await self._stage_slots.acquire()
            if self._stopping.is_set():
                self._stage_slots.release()
                return
            if self._full_segments:
                # Closed early by a large batch: older than the open segment, so first.
                self._to_persist(self._full_segments.popleft())
                continue
            segment = self._open
            if segment is not None and not self._segment_full.is_set():
                linger = self._settings.max_linger - (time.monotonic() - segment.opened_at)
                if linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._segment_full.wait(), timeout=linger)
                if self._full_segments:
                    self._to_persist(self._full_segments.popleft())
                    continue
            segment = self._open
            self._open = None
            self._segment_ready.clear()
            self._segment_full.clear()
            if segment is None or not segment.entries:
                self._stage_slots.release()
                continue
            self._to_persist(segment)

    async def _signatures(self, segment: _OpenSegment) -> list[bytes]:
        self._sign_rest(segment)
        try:
            chunks = await asyncio.gather(*segment.signature_chunks)
        except BrokenExecutor as exc:
            # A signing worker died (killed, out of memory). The entries are chained already: sign
            # them again on a fresh pool rather than lose them.
            log.error("signing worker failed; restarting the signing pool", extra={"error": repr(exc)})
            self._signing.restart()
            if segment.signer is not None:
                chunks = [b"".join(sign_entry_hashes(segment.signer, segment.hashes))]
            else:
                chunks = [await self._signing.sign(segment.hashes)]
        except SigningTokenError as exc:
            chunks = [await self._sign_again_through_the_token(segment, exc)]
        size = SIGNATURE_SIZE
        return [chunk[i : i + size] for chunk in chunks for i in range(0, len(chunk), size)]

    async def _sign_again_through_the_token(self, segment: _OpenSegment, error: SigningTokenError) -> bytes:
        """The token failed to sign (removed, logged out, busy): the entries are chained already, so
        they are signed again on fresh sessions, once a second, until the token answers or the
        pipeline stops. Requests meanwhile wait and then get UNAVAILABLE (ack_timeout), so the
        collector keeps their records and retries."""
        while True:
            log.error("the signing token failed; retrying in 1 s on new sessions", extra={"error": str(error)})
            if self._stopping.is_set():
                raise ArchiveUnavailableError("the signing token failed and the pipeline is stopping") from error
            await asyncio.sleep(1.0)
            self._signing.restart()
            try:
                if segment.signer is not None:
                    return b"".join(sign_entry_hashes(segment.signer, segment.hashes))
                return await self._signing.sign(segment.hashes)
            except SigningTokenError as exc:
                error = exc

    async def _persist_loop(self) -> None:
        """Take closed segments in sequence order: sign, encode, spool (one at a time), then hand to
        the uploader."""
        while not self._stopping.is_set():
            segment = await self._closed.get()
            try:
                await self._persist(segment)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else ArchiveUnavailableError("archiving was interrupted")
                _resolve(segment.spooled, error)
                _resolve(segment.archived, error)
                self._stage_slots.release()
                raise

    async def _persist(self, segment: _OpenSegment) -> None:
        signatures = await self._signatures(segment)
        last_sequence = segment.first_sequence + len(segment.entries) - 1
        data = encode_segment(
            chain_id=self.chain_id,
            first_sequence=segment.first_sequence,
            created_unix_nano=segment.created_unix_nano,
            entries=segment.entries,
            signatures=signatures,
        )
        item = _ToArchive(
            segment.first_sequence,
            last_sequence,
            segment.created_unix_nano,
            data=data,
            last_hash=segment.hashes[-1],
            archived=segment.archived,
            # From the entries in memory (cheaper than decoding the segment object again), on a worker.
            leaves=self._leaf_hashes(segment.entries) if self._tiles is not None else None,
        )
        if self._on_archived is not None:
            entries, on_archived = segment.entries, self._on_archived
            item.on_archived = lambda: on_archived(entries, signatures)
        records, size = len(segment.entries), segment.size
        if self._spool is None:
            # The stage slot and the memory count are released when the upload completes.
            def release() -> None:
                self._memory_records -= records
                self._memory_bytes -= size
                self._stage_slots.release()

            assert segment.archived is not None
            segment.archived.add_done_callback(lambda _: release())
            self._in_memory_bytes += len(data)
            self._to_archive.put_nowait(item)
            return
        item.spooled = await self._write_spool(segment.first_sequence, last_sequence, segment.created_unix_nano, data)
        self._memory_records -= records
        self._memory_bytes -= size
        self.stats.records_spooled += records
        self._stage_slots.release()
        _resolve(segment.spooled)
        if self._on_spooled is not None:
            self._on_spooled(item.spooled)
        if self._in_memory_bytes + len(data) > KEEP_IN_MEMORY_BYTES:
            item.data = None  # the uploader reads it back from the spool file
        else:
            self._in_memory_bytes += len(data)
        self._to_archive.put_nowait(item)

    async def _write_spool(self, first: int, last: int, created: int, data: bytes) -> SpooledSegment:
        """Append to the spool, retrying (with backoff, for as long as it takes) while the disk is
        full or failing; requests are refused meanwhile and nothing already spooled is touched."""
        assert self._spool is not None
        attempt = 0
        while True:
            try:
                spooled = await asyncio.to_thread(self._spool.append, self.chain_id, first, last, created, data)
                if self._spool_failing_since is not None:
                    log.info("spool writable again", extra={"spool": str(self._spool.directory)})
                self._spool_failing_since = None
                return spooled
            except SpoolError as exc:
                if self._spool_failing_since is None:
                    self._spool_failing_since = time.monotonic()
                self._spool_error = str(exc)
                self.stats.spool_write_retries += 1
                delay = backoff_delay(attempt, self._settings.retry, random_fraction=0.5)
                log.error(
                    "spool write failed; retrying" + (" (disk full)" if isinstance(exc, SpoolFullError) else ""),
                    extra={"error": str(exc), "attempt": attempt + 1, "delay_s": round(delay, 3)},
                )
                attempt += 1
                await asyncio.sleep(delay)

    async def _upload_loop(self) -> None:
        while not self._stopping.is_set():
            item = await self._to_archive.get()
            self._uploading += 1
            try:
                await self._upload(item)
            except BaseException as exc:
                _resolve(item.archived, exc if isinstance(exc, Exception) else ArchiveUnavailableError("interrupted"))
                raise
            finally:
                self._uploading -= 1

    async def _upload(self, item: _ToArchive) -> None:
        data = item.data
        if data is None:
            assert self._spool is not None
            assert item.spooled is not None
            data = await asyncio.to_thread(self._spool.read, item.spooled)
        else:
            self._in_memory_bytes -= len(data)
        last_hash = item.last_hash
        if last_hash is None:
            last_hash = entry_hash(decode_segment(data).records[-1].entry)
        digest = hashlib.sha256(data).digest()
        key = segment_key("", self.chain_id, item.first_sequence, item.last_sequence, item.created_unix_nano)
        # The tree's leaf hashes: being made on a worker since sealing, or else from the data in a
        # thread (segments re-queued at start; the workers do not import the segment decoder). The
        # checkpoint that covers the segment waits for them; the acknowledgement does not.
        leaves = item.leaves
        if self._tiles is not None and leaves is None:
            leaves = asyncio.ensure_future(asyncio.to_thread(_segment_leaves, data))
        try:
            await self._put_with_retry(key, data, digest)
        except BaseException:
            if leaves is not None:
                leaves.cancel()
            raise
        if leaves is not None and self._tiles is not None:
            self._leaves[item.first_sequence] = leaves
        records = item.last_sequence - item.first_sequence + 1
        self._archived[item.first_sequence] = (
            SegmentRef(key, item.first_sequence, item.last_sequence, digest, len(data)),
            last_hash,
        )
        self._unarchived_records -= records
        if self._unarchived_records == 0:
            self._all_archived.set()
        self.stats.records_archived += records
        self.stats.segments_archived += 1
        self._checkpoint_due.set()
        _resolve(item.archived)
        if item.on_archived is not None:
            item.on_archived()

    async def _put_with_retry(self, key: str, data: bytes, digest: bytes) -> None:
        def on_retry(error: DeliveryError, attempt: int, delay: float) -> None:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            self.stats.upload_retries += 1
            log.warning(
                "archive write failed; retrying",
                extra={"object_key": key, "attempt": attempt + 1, "delay_s": round(delay, 3), "error": str(error)},
            )

        while True:
            try:
                await retry_async(
                    lambda: self._store.put(key, data, digest), policy=self._settings.retry, on_retry=on_retry
                )
                self._failing_since = None
                return
            except PermanentArchiveError as exc:
                # Access denied and the like: an operator must act. Keep the records and keep trying
                # slowly rather than drop sealed records; health reports NOT_SERVING meanwhile.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                log.error("archive refused a write", extra={"object_key": key, "error": str(exc)})
                await asyncio.sleep(self._settings.retry.max_delay)

    # -- checkpoints --------------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        interval = self._settings.checkpoint_interval
        while not self._stopping.is_set():
            # Idle or not, a checkpoint at least every interval, so a cut-off tail stays visible.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_due.wait(), timeout=interval)
            if self._checkpoint_due.is_set() and not self._stopping.is_set():
                # Under load many segments complete each second: one checkpoint covers them all.
                await asyncio.sleep(self._settings.checkpoint_min_spacing)
            if self._stopping.is_set():
                return  # close() writes the final checkpoint
            self._checkpoint_due.clear()
            try:
                # Shielded: a shutdown that cancels this loop must not cancel a write whose PUT may
                # already be stored (the archive's thread goes on), or the final checkpoint would take
                # the same number; close() waits for it instead.
                self._checkpoint_write = asyncio.ensure_future(self._write_checkpoint())
                await asyncio.shield(self._checkpoint_write)
            except PermanentArchiveError as exc:
                log.error("checkpoint refused by the archive", extra={"error": str(exc)})
            except SigningTokenError as exc:
                # The checkpoint is written at the next interval, or after the next upload.
                log.error("checkpoint not signed: the signing token failed", extra={"error": str(exc)})

    async def _trim_loop(self) -> None:
        """Trim once a second: a stored checkpoint or the Loki sender's cursor may have moved."""
        while not self._stopping.is_set():
            await asyncio.sleep(TRIM_INTERVAL)
            await self._trim_spool()

    async def _trim_spool(self) -> None:
        """Drop spool files that a stored checkpoint covers and the Loki sender has delivered."""
        if self._spool is None:
            return
        through = self._next_uncovered - 1
        if self._loki_cursor is not None:
            through = min(through, self._loki_cursor(self.chain_id))
        try:
            await asyncio.to_thread(self._spool.trim, through)
        except OSError as exc:
            log.warning("spool files not removed", extra={"error": str(exc)})

    async def _write_final_checkpoints(self) -> None:
        """At shutdown: checkpoints until every archived segment is covered, the last one final when
        everything sealed was archived."""
        while True:
            remaining = await self._write_checkpoint(final=self._unarchived_records == 0)
            if not remaining:
                return

    async def _write_checkpoint(self, *, final: bool = False) -> bool:
        """Write the next checkpoint; True when archived segments remain that it could not list."""
        covered: list[SegmentRef] = []
        remaining = False
        next_uncovered = self._next_uncovered
        head = self._last_covered_head
        while next_uncovered in self._archived:
            if len(covered) == MAX_SEGMENTS_PER_CHECKPOINT:
                # Keeps the checkpoint object within its format limit (after a long outage many
                # segments arrive at once); the next checkpoint, due at once, covers the rest.
                self._checkpoint_due.set()
                remaining = True
                break
            ref, head = self._archived[next_uncovered]
            covered.append(ref)
            next_uncovered = ref.last_sequence + 1
        if next_uncovered == 0:
            return False  # not even the genesis entry is archived yet
        # A checkpoint is signed by the key the chain is bound to after its last entry: before a key
        # rotation entry, the retired key.
        signer = self._signer
        if self._rotation is not None and next_uncovered - 1 < self._rotation[0]:
            signer = self._rotation[1]
        checkpoint = Checkpoint(
            chain_id=self.chain_id,
            checkpoint_number=self._checkpoint_number,
            previous_checkpoint_sha256=self._previous_checkpoint,
            last_sequence=next_uncovered - 1,
            head_sha256=head,
            time_unix_nano=self._clock(),
            key_id=signer.key_id,
            segments=tuple(covered),
            final=final and not remaining,
        )
        data, checkpoint_sha256 = sign_checkpoint(checkpoint, signer)
        key = checkpoint_key("", self.chain_id, checkpoint.checkpoint_number, checkpoint.last_sequence)
        note = await self._store_tree(checkpoint, covered, signer) if self._tiles is not None else None
        await self._put_with_retry(key, data, hashlib.sha256(data).digest())
        # Only a stored checkpoint moves the state on; a cancelled write leaves it for the next one.
        for ref in covered:
            del self._archived[ref.first_sequence]
            self._leaves.pop(ref.first_sequence, None)
        if note is not None:
            self._announce_checkpoint(*note)
        self._next_uncovered = next_uncovered
        self._last_covered_head = head
        self._checkpoint_number += 1
        self._previous_checkpoint = checkpoint_sha256
        self.stats.checkpoints_written += 1
        self.stats.last_checkpoint_unix = checkpoint.time_unix_nano / 1e9
        return remaining

    async def _store_tree(
        self, checkpoint: Checkpoint, covered: list[SegmentRef], signer: Signer
    ) -> tuple[bytes, int, int]:
        """Extend the tree by the covered segments' leaves and store its new tiles and the checkpoint's
        signed note (FORMAT.md 16.4, 16.5) before the checkpoint itself, so a stored checkpoint always
        has its tiles and note. The tree moves on only once they are stored. Returns the note, the
        tree size and the previous checkpoint's tree size (equal for an idle checkpoint)."""
        assert self._tiles is not None
        size = checkpoint.last_sequence + 1
        tiles = self._tiles
        if tiles.size != size:
            # A copy to extend: a cancelled write must leave the stored tree as it was.
            tiles = TileBuilder(tiles.size, {t.level: t.hashes for t in tiles.partial_tiles()})
            leaves = [await self._leaves[ref.first_sequence] for ref in covered]
            firsts = [ref.first_sequence for ref in covered]
            # Hashing the interior nodes takes about a microsecond per record: on a worker, off the
            # event loop's GIL.
            tiles, completed = await self._on_worker(extend_by_segments, tiles, firsts, leaves)
            for tile in completed:
                await self._put_tile(tile)
            if tiles.size != size:
                raise AssertionError(
                    f"tree of {tiles.size} leaves for a checkpoint ending at {checkpoint.last_sequence}"
                )
        partials = tiles.partial_tiles()
        for tile in partials:
            if (tile.level, tile.index, tile.width) not in self._stored_partials:
                await self._put_tile(tile)
        origin = chain_origin(self._archive_id, self.chain_id)
        note = sign_note(checkpoint_text(origin, size, tiles.root()), origin, signer)
        note_key = checkpoint_note_key("", self.chain_id, checkpoint.checkpoint_number, checkpoint.last_sequence)
        await self._put_with_retry(note_key, note, hashlib.sha256(note).digest())
        previous = self._tiles.size
        self._tiles = tiles
        self._stored_partials = {(t.level, t.index, t.width) for t in partials}
        return note, size, previous

    def _leaf_hashes(self, entries: list[bytes]) -> asyncio.Future[bytes]:
        """The entries' leaf hashes, concatenated, made on a worker (the event loop only joins them)."""
        lengths = array.array("I", map(len, entries))
        return asyncio.ensure_future(self._on_worker(concatenated_leaf_hashes, b"".join(entries), lengths))

    async def _on_worker(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the signing pool's workers (pure tree work); if a worker died, here
        in a thread instead (the signing path restarts the pool)."""
        try:
            return await self._signing.run(function, *args)
        except BrokenExecutor:
            return await asyncio.to_thread(function, *args)

    async def _put_tile(self, tile: Tile) -> None:
        data = tile.encode()
        key = tile_key("", self.chain_id, tile.level, tile.index, tile.width)
        await self._put_with_retry(key, data, hashlib.sha256(data).digest())

    def _announce_checkpoint(self, note: bytes, size: int, previous_size: int) -> None:
        for hook in self._checkpoint_hooks:
            try:
                hook(note, size, previous_size)
            except Exception:
                log.exception("a checkpoint subscriber failed", extra={"tree_size": size})


def _placeholder_partials(size: int) -> dict[int, list[bytes]]:
    """Partial tiles of the right widths for ``size`` (placeholder hashes): which tiles to read."""
    partial: dict[int, list[bytes]] = {}
    level = 0
    while size >> (8 * level):
        partial[level] = [ZERO_HASH] * ((size >> (8 * level)) % 256)
        level += 1
    return partial
