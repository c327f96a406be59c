"""Consistency proofs for the submitter, read from a chain's tree as the archive stores it.

The archive holds hash tiles (FORMAT.md 16.5): full tiles above level 0, and the partial tiles of
every checkpointed size; the full tiles of level 0 are the chain's own entries, hashed, so they are
rebuilt from the segment objects that hold them. Segment keys are listed once and then only after
the last key seen (new segments sort after old ones), so a long-running sidecar does not list its
whole chain for every checkpoint.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import MalformedObjectError, UnreadableObjectError
from collector_ext.seal.framing import MAX_SEGMENT_OBJECT_BYTES
from collector_ext.seal.layout import TILE_WIDTH, SegmentKey, parse_segment_key, tile_key
from collector_ext.seal.merkle import HASH_SIZE, consistency_proof, leaf_hash
from collector_ext.seal.segment import decode_segment
from collector_ext.seal.tiles import Tile, consistency_tiles, decode_tile, node_reader

# Leaf hashes are kept as one bytes object per segment: at most 2 x 200,000 x 32 bytes (12.8 MB) at
# the largest segments allowed, 1.3 MB at the default 20,000 records.
CACHED_SEGMENTS = 2


class ArchiveTreeReader:
    """Tree nodes of the chains in ``store``, for consistency proofs between checkpointed sizes."""

    def __init__(self, store: ArchiveStore) -> None:
        self._store = store
        # Per chain: segment keys listed so far, sorted by first sequence, and the last key listed.
        self._segments: dict[bytes, list[SegmentKey]] = {}
        self._listed_until: dict[bytes, str] = {}
        # The leaf hashes of the segments read last (by key): consecutive checkpoints usually need the
        # same segment again, so each segment is read about once.
        self._segment_leaves: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    async def consistency_proof(self, chain_id: bytes, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """PROOF(old_size, D[new_size]) of the chain's tree; both sizes must be checkpointed sizes.

        Raises:
            ArchiveUnavailableError: the archive cannot be read now (retried by the caller).
            UnreadableObjectError, MalformedObjectError: a tile or segment it needs is missing or bad.
        """
        tiles: dict[tuple[int, int], Tile] = {}
        for level, index, width in consistency_tiles(old_size, new_size):
            tiles[(level, index)] = await self._tile(chain_id, level, index, width)
        return consistency_proof(old_size, new_size, node_reader(new_size, tiles))

    async def _tile(self, chain_id: bytes, level: int, index: int, width: int) -> Tile:
        if level > 0 or width < TILE_WIDTH:
            key = tile_key("", chain_id, level, index, width)
            try:
                data = await self._store.get(key, width * HASH_SIZE)
            except UnreadableObjectError:
                if level > 0:
                    raise
            else:
                try:
                    return decode_tile(level, index, width, data)
                except ValueError as exc:
                    raise MalformedObjectError(f"tile {key!r}: {exc}") from exc
        start = index * TILE_WIDTH
        leaves = await self._leaves(chain_id, start, start + width)
        return Tile(0, index, tuple(leaves))

    async def _leaves(self, chain_id: bytes, start: int, end: int) -> list[bytes]:
        """Leaf hashes of sequences ``[start, end)``, from the segments holding them."""
        segments = await self._segments_of(chain_id, end - 1)
        firsts = [segment.first_sequence for segment in segments]
        position = max(0, bisect.bisect_right(firsts, start) - 1)
        leaves: list[bytes] = []
        for segment in segments[position:]:
            if segment.first_sequence >= end:
                break
            if segment.last_sequence < start:
                continue
            first, hashes = await self._leaves_of(segment)
            for offset in range(len(hashes) // HASH_SIZE):
                sequence = first + offset
                if start <= sequence < end and sequence == start + len(leaves):
                    leaves.append(hashes[offset * HASH_SIZE : (offset + 1) * HASH_SIZE])
        if len(leaves) != end - start:
            raise UnreadableObjectError(
                f"{chain_id.hex()}/segments/", f"the segments do not hold entries {start} to {end - 1} in order"
            )
        return leaves

    async def _leaves_of(self, segment: SegmentKey) -> tuple[int, bytes]:
        """The segment's first sequence and its entries' leaf hashes, concatenated."""
        cached = self._segment_leaves.get(segment.key)
        if cached is not None:
            self._segment_leaves.move_to_end(segment.key)
            return cached
        decoded = decode_segment(await self._store.get(segment.key, MAX_SEGMENT_OBJECT_BYTES))
        cached = (decoded.first_sequence, b"".join(leaf_hash(record.entry) for record in decoded.records))
        self._segment_leaves[segment.key] = cached
        while len(self._segment_leaves) > CACHED_SEGMENTS:
            self._segment_leaves.popitem(last=False)
        return cached

    async def _segments_of(self, chain_id: bytes, through: int) -> list[SegmentKey]:
        known = self._segments.setdefault(chain_id, [])
        if known and known[-1].last_sequence >= through:
            return known
        under = f"{chain_id.hex()}/segments/"
        async for key in self._store.list_keys(under, self._listed_until.get(chain_id, "")):
            parsed = parse_segment_key(key)
            if parsed is not None:
                known.append(parsed)
            self._listed_until[chain_id] = key
        known.sort(key=lambda segment: (segment.first_sequence, segment.last_sequence))
        return known
