"""Checkpointing: signed checkpoints over the archived prefix, with the Merkle tree's tiles and note.

Takes archived segments from ``ArchivedSegments`` (woken by its ``due`` event, at most once per
``checkpoint_min_spacing``, and at least every ``checkpoint_interval`` even when idle, so a cut-off
tail stays visible). Produces, in the archive, for the contiguous run of archived segments after the
previous checkpoint (at most MAX_SEGMENTS_PER_CHECKPOINT at once): the tree's new tiles and the
checkpoint's signed note (FORMAT.md 16.4, 16.5), then the checkpoint itself (FORMAT.md 9), signed by
the key the chain is bound to after its last entry. Subscribers (``CheckpointHook``) are told of each
new note after it is stored.

Guarantees: a stored checkpoint always has its tiles and note; only a stored checkpoint moves the
state on (``covered_through``, which lets the trimmer drop spool files), so a cancelled write
leaves everything for the next one. At shutdown ``write_final_checkpoints`` covers every archived
segment, the last checkpoint final when everything sealed was archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable

from collector_ext.errors import PermanentArchiveError
from collector_ext.pipeline.queues import ArchivedSegments, Backlog
from collector_ext.pipeline.settings import CheckpointHook, PipelineSettings, PipelineStats
from collector_ext.pipeline.uploading import ArchiveWriter
from collector_ext.seal.checkpoint import Checkpoint, SegmentRef, sign_checkpoint
from collector_ext.seal.entry import ZERO_HASH
from collector_ext.seal.framing import MAX_SEGMENTS_PER_CHECKPOINT
from collector_ext.seal.keys import Signer
from collector_ext.seal.layout import checkpoint_key, checkpoint_note_key, tile_key
from collector_ext.seal.note import chain_origin, checkpoint_text, sign_note
from collector_ext.seal.tiles import Tile, TileBuilder, extend_by_segments
from collector_ext.signing_pool import SigningPool
from collector_ext.token_signer import SigningTokenError

log = logging.getLogger("collector_ext.pipeline")


class Checkpointer:
    """Owns the checkpoint sequence and the Merkle tree up to the newest checkpoint.

    Its state starts empty for a new chain; ``resuming`` sets it from the archive for a continued one.
    """

    def __init__(
        self,
        archived: ArchivedSegments,
        writer: ArchiveWriter,
        signer: Signer,
        signing: SigningPool,
        backlog: Backlog,
        stats: PipelineStats,
        settings: PipelineSettings,
        *,
        chain_id: Callable[[], bytes],
        archive_id: str,
        clock: Callable[[], int],
        stopping: asyncio.Event,
    ) -> None:
        self._archived = archived
        self._writer = writer
        self._signer = signer
        self._signing = signing
        self._backlog = backlog
        self._stats = stats
        self._settings = settings
        self._chain_id = chain_id
        self._archive_id = archive_id
        self._clock = clock
        self._stopping = stopping
        self.next_uncovered = 0  # the first sequence no stored checkpoint covers
        self.last_covered_head = ZERO_HASH
        self.checkpoint_number = 0
        self.previous_checkpoint = b""
        # After a key rotation: its sequence number and the key it retired (checkpoints up to the
        # entry before it are signed by that key, FORMAT.md 10.2).
        self.rotation: tuple[int, Signer] | None = None
        # The Merkle tree up to the newest checkpoint (None until start() knows the chain, and when
        # the tree is off) and the partial tiles already stored.
        self.tiles: TileBuilder | None = None
        self.stored_partials: set[tuple[int, int, int]] = set()
        self.hooks: list[CheckpointHook] = []
        self.write_in_flight: asyncio.Future[bool] | None = None  # the loop's write, finished by close()

    def due(self) -> None:
        """Write a checkpoint soon (at start; at shutdown, to wake the loop so it sees ``stopping``)."""
        self._archived.due.set()

    async def run(self) -> None:
        interval = self._settings.checkpoint_interval
        due = self._archived.due
        while not self._stopping.is_set():
            # Idle or not, a checkpoint at least every interval, so a cut-off tail stays visible.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(due.wait(), timeout=interval)
            if due.is_set() and not self._stopping.is_set():
                # Under load many segments complete each second: one checkpoint covers them all.
                await asyncio.sleep(self._settings.checkpoint_min_spacing)
            if self._stopping.is_set():
                return  # close() writes the final checkpoint
            due.clear()
            try:
                # Shielded: a shutdown that cancels this loop must not cancel a write whose PUT may
                # already be stored (the archive's thread goes on), or the final checkpoint would take
                # the same number; close() waits for it instead.
                self.write_in_flight = asyncio.ensure_future(self.write_checkpoint())
                await asyncio.shield(self.write_in_flight)
            except PermanentArchiveError as exc:
                log.error("checkpoint refused by the archive", extra={"error": str(exc)})
            except SigningTokenError as exc:
                # The checkpoint is written at the next interval, or after the next upload.
                log.error("checkpoint not signed: the signing token failed", extra={"error": str(exc)})

    async def write_final_checkpoints(self) -> None:
        """At shutdown: checkpoints until every archived segment is covered, the last one final when
        everything sealed was archived."""
        while True:
            remaining = await self.write_checkpoint(final=self._backlog.unarchived_records == 0)
            if not remaining:
                return

    async def write_checkpoint(self, *, final: bool = False) -> bool:
        """Write the next checkpoint; True when archived segments remain that it could not list."""
        archived = self._archived.refs
        covered: list[SegmentRef] = []
        remaining = False
        next_uncovered = self.next_uncovered
        head = self.last_covered_head
        while next_uncovered in archived:
            if len(covered) == MAX_SEGMENTS_PER_CHECKPOINT:
                # Keeps the checkpoint object within its format limit (after a long outage many
                # segments arrive at once); the next checkpoint, due at once, covers the rest.
                self._archived.due.set()
                remaining = True
                break
            ref, head = archived[next_uncovered]
            covered.append(ref)
            next_uncovered = ref.last_sequence + 1
        if next_uncovered == 0:
            return False  # not even the genesis entry is archived yet
        # A checkpoint is signed by the key the chain is bound to after its last entry: before a key
        # rotation entry, the retired key.
        signer = self._signer
        if self.rotation is not None and next_uncovered - 1 < self.rotation[0]:
            signer = self.rotation[1]
        chain_id = self._chain_id()
        checkpoint = Checkpoint(
            chain_id=chain_id,
            checkpoint_number=self.checkpoint_number,
            previous_checkpoint_sha256=self.previous_checkpoint,
            last_sequence=next_uncovered - 1,
            head_sha256=head,
            time_unix_nano=self._clock(),
            key_id=signer.key_id,
            segments=tuple(covered),
            final=final and not remaining,
        )
        data, checkpoint_sha256 = sign_checkpoint(checkpoint, signer)
        key = checkpoint_key("", chain_id, checkpoint.checkpoint_number, checkpoint.last_sequence)
        note = await self._store_tree(checkpoint, covered, signer) if self.tiles is not None else None
        await self._writer.put(key, data, hashlib.sha256(data).digest())
        # Only a stored checkpoint moves the state on; a cancelled write leaves it for the next one.
        for ref in covered:
            del archived[ref.first_sequence]
            self._archived.leaves.pop(ref.first_sequence, None)
        if note is not None:
            self._announce(*note)
        self.next_uncovered = next_uncovered
        self.last_covered_head = head
        self.checkpoint_number += 1
        self.previous_checkpoint = checkpoint_sha256
        self._stats.checkpoints_written += 1
        self._stats.last_checkpoint_unix = checkpoint.time_unix_nano / 1e9
        return remaining

    async def _store_tree(
        self, checkpoint: Checkpoint, covered: list[SegmentRef], signer: Signer
    ) -> tuple[bytes, int, int]:
        """Extend the tree by the covered segments' leaves and store its new tiles and the checkpoint's
        signed note (FORMAT.md 16.4, 16.5) before the checkpoint itself, so a stored checkpoint always
        has its tiles and note. The tree moves on only once they are stored. Returns the note, the
        tree size and the previous checkpoint's tree size (equal for an idle checkpoint)."""
        assert self.tiles is not None
        size = checkpoint.last_sequence + 1
        tiles = self.tiles
        if tiles.size != size:
            # A copy to extend: a cancelled write must leave the stored tree as it was.
            tiles = TileBuilder(tiles.size, {t.level: t.hashes for t in tiles.partial_tiles()})
            leaves = [await self._archived.leaves[ref.first_sequence] for ref in covered]
            firsts = [ref.first_sequence for ref in covered]
            # Hashing the interior nodes takes about a microsecond per record: on a worker, off the
            # event loop's GIL.
            tiles, completed = await self._signing.run(extend_by_segments, tiles, firsts, leaves)
            for tile in completed:
                await self._put_tile(tile)
            if tiles.size != size:
                raise AssertionError(
                    f"tree of {tiles.size} leaves for a checkpoint ending at {checkpoint.last_sequence}"
                )
        partials = tiles.partial_tiles()
        for tile in partials:
            if (tile.level, tile.index, tile.width) not in self.stored_partials:
                await self._put_tile(tile)
        origin = chain_origin(self._archive_id, self._chain_id())
        note = sign_note(checkpoint_text(origin, size, tiles.root()), origin, signer)
        note_key = checkpoint_note_key("", self._chain_id(), checkpoint.checkpoint_number, checkpoint.last_sequence)
        await self._writer.put(note_key, note, hashlib.sha256(note).digest())
        previous = self.tiles.size
        self.tiles = tiles
        self.stored_partials = {(t.level, t.index, t.width) for t in partials}
        return note, size, previous

    async def _put_tile(self, tile: Tile) -> None:
        data = tile.encode()
        key = tile_key("", self._chain_id(), tile.level, tile.index, tile.width)
        await self._writer.put(key, data, hashlib.sha256(data).digest())

    def _announce(self, note: bytes, size: int, previous_size: int) -> None:
        for hook in self.hooks:
            try:
                hook(note, size, previous_size)
            except Exception:
                log.exception("a checkpoint subscriber failed", extra={"tree_size": size})
