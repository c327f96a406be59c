"""Hash tiles in the C2SP tlog-tiles shape: how a chain's Merkle tree is stored (FORMAT.md 16.5).

Tile ``n`` at tile level ``l`` holds up to 256 consecutive hashes of tree level ``8 * l``: at level 0 the
leaf hashes, above it the roots of full tiles one level down. A tile is full at 256 hashes; a tree whose
size leaves a tile short is served by a *partial* tile of that width, written once per checkpointed size
and never hashed into the level above. With the tiles, any node of the tree is at most 128 hashes of
one tile away, so a proof needs one or two tiles per tile level, never the chain.

``TileBuilder`` is the writer's side: it takes leaf hashes in order and says which full tiles were
completed and what the partial tiles of the current size are. ``node_reader`` is the prover's: a
``merkle.NodeReader`` over tiles already fetched. Neither reads or writes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from collector_ext.seal.layout import TILE_WIDTH
from collector_ext.seal.merkle import (
    HASH_SIZE,
    NODE_PREFIX,
    NodeReader,
    consistency_proof,
    inclusion_path,
    node_hash,
    prefixed_hashes,
    split_hashes,
    tree_root,
)

TILE_HEIGHT = 8  # 2**8 == TILE_WIDTH


@dataclass(frozen=True, slots=True)
class Tile:
    """``hashes`` of tile ``index`` at tile ``level`` (fewer than 256: a partial tile)."""

    level: int
    index: int
    hashes: tuple[bytes, ...]

    @property
    def width(self) -> int:
        return len(self.hashes)

    def encode(self) -> bytes:
        return b"".join(self.hashes)


def decode_tile(level: int, index: int, width: int, data: bytes) -> Tile:
    """A tile object's bytes as hashes.

    Raises:
        ValueError: the object is not ``width`` hashes long.
    """
    if len(data) != width * HASH_SIZE:
        raise ValueError(f"tile {level}/{index} should be {width * HASH_SIZE} bytes, not {len(data)}")
    return Tile(level, index, tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)))


def tile_width(level: int, index: int, size: int) -> int:
    """How many hashes tile ``index`` at ``level`` holds in a tree of ``size`` leaves (0: none yet)."""
    count = size >> (TILE_HEIGHT * level)  # hashes at tree level 8 * level
    return max(0, min(TILE_WIDTH, count - index * TILE_WIDTH))


class TileBuilder:
    """The writer's tiles: extended leaf by leaf, it reports full tiles as they complete.

    Holds only the unfinished tile of each level (at most 256 hashes per level).
    """

    def __init__(self, size: int = 0, partial: Mapping[int, Sequence[bytes]] | None = None) -> None:
        """Resume at ``size`` from the partial tiles of that size, by level.

        Raises:
            ValueError: a partial tile is missing or of the wrong width for ``size``.
        """
        self._size = size
        self._partial: list[list[bytes]] = []
        partial = partial or {}
        level = 0
        while size >> (TILE_HEIGHT * level):
            width = (size >> (TILE_HEIGHT * level)) % TILE_WIDTH
            hashes = list(partial.get(level, ()))
            if len(hashes) != width:
                raise ValueError(f"tree size {size} needs a partial tile of {width} hashes at level {level}")
            self._partial.append(hashes)
            level += 1
        if any(level not in range(len(self._partial)) for level in partial if partial[level]):
            raise ValueError(f"a partial tile above the top level of tree size {size}")

    @property
    def size(self) -> int:
        return self._size

    def extend(self, leaves: Iterable[bytes]) -> list[Tile]:
        """Append leaf hashes; the full tiles this completed, in the order they completed."""
        completed: list[Tile] = []
        pending = list(leaves)
        start = 0
        while start < len(pending):
            if not self._partial:
                self._partial.append([])
            row = self._partial[0]
            take = min(TILE_WIDTH - len(row), len(pending) - start)
            row.extend(pending[start : start + take])
            start += take
            self._size += take
            if len(row) == TILE_WIDTH:
                self._complete(0, completed)
        return completed

    def _complete(self, level: int, completed: list[Tile]) -> None:
        """The tile at ``level`` just filled up: report it and hash it into the level above."""
        row = self._partial[level]
        index = (self._size >> (TILE_HEIGHT * (level + 1))) - 1
        completed.append(Tile(level, index, tuple(row)))
        self._partial[level] = []
        if level + 1 == len(self._partial):
            self._partial.append([])
        above = self._partial[level + 1]
        above.append(_full_tile_root(row))
        if len(above) == TILE_WIDTH:
            self._complete(level + 1, completed)

    def partial_tiles(self) -> list[Tile]:
        """The partial tiles of the current size (levels whose last tile is not full), lowest first."""
        tiles = []
        for level, row in enumerate(self._partial):
            if row:
                index = (self._size >> (TILE_HEIGHT * level)) // TILE_WIDTH
                tiles.append(Tile(level, index, tuple(row)))
        return tiles

    def root(self) -> bytes:
        """The tree root at the current size."""
        return tree_root_from_partials(self._size, {t.level: t.hashes for t in self.partial_tiles()})


def extend_by_segments(
    builder: TileBuilder, firsts: Sequence[int], leaves: Sequence[bytes]
) -> tuple[TileBuilder, list[Tile]]:
    """Extend ``builder`` by consecutive segments' leaf hashes (each segment's concatenated, starting at
    sequence ``firsts[i]``; those below the builder's size are skipped, as a segment uploaded again
    after a restart may start inside the tree). Returns the builder and the full tiles completed above
    level 0 (level 0 is the segments' own entries, hashed: FORMAT.md 16.5).

    Pure, so the writer runs it in a worker process: the builder goes there and comes back pickled."""
    completed: list[Tile] = []
    for first, hashes in zip(firsts, leaves, strict=True):
        completed += builder.extend(split_hashes(hashes)[max(0, builder.size - first) :])
    return builder, [tile for tile in completed if tile.level > 0]


def _full_tile_root(row: Sequence[bytes]) -> bytes:
    """MTH of a full tile's TILE_WIDTH hashes (a power of two: a perfect subtree), level by level.
    Equal to ``tree_root(row)``, several times faster: this runs once per TILE_WIDTH records written."""
    level = list(row)
    while len(level) > 1:
        level = prefixed_hashes(NODE_PREFIX, map(bytes.__add__, level[0::2], level[1::2]))
    return level[0]


def tree_root_from_partials(size: int, partial: Mapping[int, Sequence[bytes]]) -> bytes:
    """The root of the tree of ``size`` leaves from its partial tiles alone (the right edge lives in
    them: every perfect subtree of the size's binary decomposition is a run of one partial tile)."""

    def read(level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height
        offset = first - ((size >> (TILE_HEIGHT * tile_level)) // TILE_WIDTH) * TILE_WIDTH
        return tree_root(list(partial[tile_level][offset : offset + (1 << height)]))

    return _fold_edge(size, read)


def _fold_edge(size: int, read: NodeReader) -> bytes:
    if size == 0:
        return tree_root([])
    nodes = []
    position = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append(read(level, position >> level))
            position += 1 << level
    result = nodes[-1]
    for node in reversed(nodes[:-1]):
        result = node_hash(node, result)
    return result


TileRef = tuple[int, int, int]
"""(tile level, tile index, width)."""


def node_reader(size: int, tiles: Mapping[tuple[int, int], Tile]) -> NodeReader:
    """A NodeReader for the tree of ``size`` leaves over fetched tiles, keyed by (level, index)."""

    def read(level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height
        tile = tiles[(tile_level, first // TILE_WIDTH)]
        offset = first % TILE_WIDTH
        hashes = tile.hashes[offset : offset + (1 << height)]
        if len(hashes) != 1 << height:
            raise KeyError((tile_level, first // TILE_WIDTH))
        return tree_root(list(hashes))

    return read


def tiles_needed(size: int, proof: Callable[[NodeReader], object]) -> list[TileRef]:
    """The tiles ``proof`` (a call of ``inclusion_path`` or ``consistency_proof`` over a reader) reads
    in a tree of ``size``, found by running it over placeholder hashes."""
    wanted: dict[tuple[int, int], int] = {}
    placeholder = bytes(HASH_SIZE)

    def record(level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height
        for position in range(first, first + (1 << height), TILE_WIDTH):
            key = (tile_level, position // TILE_WIDTH)
            wanted[key] = tile_width(tile_level, key[1], size)
        return placeholder

    proof(record)
    return [(level, index, width) for (level, index), width in sorted(wanted.items())]


def inclusion_tiles(index: int, size: int) -> list[TileRef]:
    """The tiles an inclusion proof of leaf ``index`` in a tree of ``size`` needs."""
    return tiles_needed(size, lambda reader: inclusion_path(index, size, reader))


def consistency_tiles(old_size: int, new_size: int) -> list[TileRef]:
    """The tiles a consistency proof from ``old_size`` to ``new_size`` needs."""
    return tiles_needed(new_size, lambda reader: consistency_proof(old_size, new_size, reader))
