"""Resuming: at start, continue the spool's chain or begin a new one.

Takes what the spool holds (``SpoolContents``) and reads the archive (retrying while it is
unavailable: the receivers are not started yet, so the collector keeps its data). Produces:

- for a spool that holds a chain: the checkpointer's state from the chain's newest checkpoint and
  its tree tiles (or the tree recomputed from the archived segments when the tiles are missing), the
  spooled segments no checkpoint covers yet on the ``ArchiveQueue`` (uploaded again: same keys, same
  bytes), and a signed RESTART entry marking the seam; after a signed key rotation, the restart mark
  and a KEY_ROTATION entry signed by the retired key;
- otherwise: a GENESIS entry that names the chain this writer last wrote, found in the archive
  (``recovery``), which the new chain supersedes;
- in run_key mode, after either, the RUN_KEY entry by which the chain's key certifies this run's
  record key (FORMAT.md 7.7).

Guarantees: the returned future is done when those first entries are durable; a spool that cannot
be continued with this key or archive raises ``ConfigurationError`` before anything is sealed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError, ConfigurationError, UnreadableObjectError
from collector_ext.pipeline.checkpointing import Checkpointer
from collector_ext.pipeline.queues import ArchiveQueue, Backlog, SegmentToArchive
from collector_ext.pipeline.sealing import ChainSealer
from collector_ext.pipeline.settings import PipelineSettings, PipelineStats
from collector_ext.pipeline.uploading import segment_leaves
from collector_ext.recovery import find_predecessor, newest_checkpoint
from collector_ext.retry import backoff_delay
from collector_ext.seal.chain import genesis_payload, key_rotation_payload, restart_payload, run_key_payload
from collector_ext.seal.entry import KEY_ID_SLICE, ZERO_HASH, EntryKind
from collector_ext.seal.keys import Signer
from collector_ext.seal.layout import parse_segment_key, tile_key
from collector_ext.seal.merkle import split_hashes
from collector_ext.seal.segment import decode_segment
from collector_ext.seal.tiles import TileBuilder, decode_tile
from collector_ext.spool import Spool, SpoolContents, SpoolError

T = TypeVar("T")

log = logging.getLogger("collector_ext.pipeline")


class ChainStart:
    """Begins the run's part of the chain; ``reason`` says how (the start reason in logs and metrics)."""

    def __init__(
        self,
        sealer: ChainSealer,
        checkpointer: Checkpointer,
        to_archive: ArchiveQueue,
        store: ArchiveStore,
        spool: Spool | None,
        backlog: Backlog,
        stats: PipelineStats,
        settings: PipelineSettings,
        *,
        signer: Signer,
        run_signer: Signer | None,
        retired: Mapping[bytes, Signer],
        writer: str,
        writer_id: str,
        archive_id: str,
    ) -> None:
        self._sealer = sealer
        self._checkpointer = checkpointer
        self._to_archive = to_archive
        self._store = store
        self._spool = spool
        self._backlog = backlog
        self._stats = stats
        self._settings = settings
        self._signer = signer
        self._run_signer = run_signer
        self._retired = retired
        self._writer = writer
        self._writer_id = writer_id
        self._archive_id = archive_id
        self.reason = ""

    async def begin(self, contents: SpoolContents | None) -> asyncio.Future[None]:
        """Continue the chain in ``contents`` (the opened spool), or start a new one; returns the future
        that is done when the first entries are durable."""
        if contents is not None and contents.head is not None:
            return await self._continue_chain(contents)
        return await self._new_chain()

    async def _continue_chain(self, contents: SpoolContents) -> asyncio.Future[None]:
        assert contents.head is not None
        assert self._spool is not None
        head = contents.head
        checkpointer = self._checkpointer
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
            checkpointer.checkpoint_number = covered.checkpoint_number + 1
            checkpointer.previous_checkpoint = checkpoint.sha256
            checkpointer.next_uncovered = covered.last_sequence + 1
            checkpointer.last_covered_head = covered.head_sha256
        self._sealer.head = head
        if self._settings.merkle_tree:
            checkpointer.tiles = await self._resume_tree(head.chain_id, checkpointer.next_uncovered)
        for segment in contents.segments:
            if segment.last_sequence >= checkpointer.next_uncovered:
                self._backlog.add_unarchived(segment.record_count)
                self._to_archive.put(
                    SegmentToArchive(
                        segment.first_sequence,
                        segment.last_sequence,
                        segment.created_unix_nano,
                        data=None,
                        spooled=segment,
                    )
                )
        how = "after a clean shutdown" if contents.previous_run_clean else "after a crash or kill"
        self.reason = f"restarted {how}; chain continued from the local spool"
        self._stats.restarts += 1
        payload = restart_payload(
            writer=self._writer,
            writer_id=self._writer_id,
            previous_run_clean=contents.previous_run_clean,
            reason=self.reason,
        )
        if retired is None:
            durable = self._sealer.seal(EntryKind.RESTART, [payload])
            return self._certify_run_key() or durable
        # The chain is bound to the retired key: that key signs the restart mark and the rotation that
        # hands the chain to the new key; everything after is signed by the new key.
        self._sealer.seal(EntryKind.RESTART, [payload], signer=retired)
        sequence = self._sealer.head.next_sequence
        rotation = key_rotation_payload(
            chain_id=head.chain_id,
            sequence=sequence,
            retired=retired,
            successor=self._signer,
            reason=f"signing key {retired.key_id.hex()} retired; {self._signer.key_id.hex()} signs from here on",
        )
        checkpointer.rotation = (sequence, retired)
        self.reason += f"; key rotated from {retired.key_id.hex()} to {self._signer.key_id.hex()}"
        durable = self._sealer.seal(EntryKind.KEY_ROTATION, [rotation], signer=retired)
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
            self._checkpointer.stored_partials = {(t.level, t.index, t.width) for t in tiles.partial_tiles()}
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
            leaves = split_hashes(await asyncio.to_thread(segment_leaves, data))
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
            self._checkpointer.tiles = TileBuilder()
        predecessor = await self._read_archive(
            "the chain this writer wrote last",
            lambda: find_predecessor(
                self._store, self._writer_id, [self._signer.public_key, *(r.public_key for r in self._retired.values())]
            ),
        )
        if predecessor is None:
            self.reason = f"first chain of writer {self._writer_id!r} in this archive"
            payload = genesis_payload(
                self._signer.public_key,
                writer=self._writer,
                writer_id=self._writer_id,
                reason=self.reason,
                archive_id=self._archive_id,
            )
        else:
            self.reason = (
                f"local state of writer {self._writer_id!r} not found; superseding chain "
                f"{predecessor.chain_id.hex()}, seen in the archive up to sequence {predecessor.last_sequence}"
            )
            payload = genesis_payload(
                self._signer.public_key,
                writer=self._writer,
                writer_id=self._writer_id,
                reason=self.reason,
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
        durable = self._sealer.seal(EntryKind.GENESIS, [payload])
        return self._certify_run_key() or durable

    def _certify_run_key(self) -> asyncio.Future[None] | None:
        """In run_key mode: seal the entry by which the chain's key certifies this run's record key
        (FORMAT.md 7.7), right after the genesis or restart mark; None otherwise."""
        if self._run_signer is None:
            return None
        head = self._sealer.head
        sequence = head.next_sequence
        payload = run_key_payload(
            chain_id=head.chain_id,
            sequence=sequence,
            certifier=self._signer,
            run_key=self._run_signer,
            reason=f"run key {self._run_signer.key_id.hex()} signs this run's records",
        )
        self.reason += f"; run key {self._run_signer.key_id.hex()} certified at seq {sequence}"
        return self._sealer.seal(EntryKind.RUN_KEY, [payload], signer=self._signer)

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


def _placeholder_partials(size: int) -> dict[int, list[bytes]]:
    """Partial tiles of the right widths for ``size`` (placeholder hashes): which tiles to read."""
    partial: dict[int, list[bytes]] = {}
    level = 0
    while size >> (8 * level):
        partial[level] = [ZERO_HASH] * ((size >> (8 * level)) % 256)
        level += 1
    return partial
