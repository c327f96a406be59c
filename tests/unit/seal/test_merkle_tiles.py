"""Hash tiles: the writer's TileBuilder and the prover's reader against the in-memory tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_ext.seal.layout import parse_tile_key, tile_index_path, tile_key
from collector_ext.seal.merkle import consistency_proof, inclusion_path, leaf_hash, list_reader, tree_root
from collector_ext.seal.tiles import (
    Tile,
    TileBuilder,
    consistency_tiles,
    decode_tile,
    inclusion_tiles,
    node_reader,
    tile_width,
)


def _hashes(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _store(builder: TileBuilder, leaves: list[bytes], chunks: list[int]) -> dict[tuple[int, int, int], Tile]:
    """Every tile a writer would have written, extending in ``chunks`` and writing partials at each."""
    stored: dict[tuple[int, int, int], Tile] = {}
    start = 0
    for chunk in [*chunks, len(leaves)]:
        end = min(len(leaves), start + chunk)
        for tile in builder.extend(leaves[start:end]):
            stored[(tile.level, tile.index, tile.width)] = tile
        for tile in builder.partial_tiles():
            stored[(tile.level, tile.index, tile.width)] = tile
        start = end
    return stored


def test_tile_paths_follow_tlog_tiles() -> None:
    assert tile_index_path(1234067) == "x001/x234/067"
    assert tile_index_path(0) == "000"
    chain = bytes(16)
    assert tile_key("", chain, 2, 1234067, 17).endswith("/tile/2/x001/x234/067.p/17")
    assert parse_tile_key(tile_key("pre", chain, 0, 3)) is not None
    assert parse_tile_key(f"{chain.hex()}/tile/0/x000/003") is None  # a zero group is not the spelling
    assert parse_tile_key(f"{chain.hex()}/tile/0/003.p/256") is None
    # The tlog-tiles example: size 70000 has 273 full + a 112-wide tile at level 0, 1 + 17 at 1, 1 at 2.
    assert tile_width(0, 273, 70000) == 112 and tile_width(0, 272, 70000) == 256
    assert tile_width(1, 1, 70000) == 17 and tile_width(2, 0, 70000) == 1


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=70000), st.data())
def test_tiles_give_the_same_root_and_proofs_as_the_tree(size: int, data: st.DataObject) -> None:
    leaves = _hashes(size)
    chunks = data.draw(st.lists(st.integers(min_value=1, max_value=5000), max_size=5))
    builder = TileBuilder()
    stored = _store(builder, leaves, chunks)
    memory = list_reader(leaves)
    root = tree_root(leaves)
    assert builder.root() == root
    # Resuming from the partial tiles of the size gives the same state.
    resumed = TileBuilder(size, {t.level: t.hashes for t in builder.partial_tiles()})
    assert resumed.root() == root
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    needed = inclusion_tiles(index, size)
    tiles = {(level, i): stored[(level, i, width)] for level, i, width in needed}
    assert inclusion_path(index, size, node_reader(size, tiles)) == inclusion_path(index, size, memory)
    old = data.draw(st.integers(min_value=1, max_value=size))
    needed = consistency_tiles(old, size)
    tiles = {(level, i): stored[(level, i, width)] for level, i, width in needed}
    assert consistency_proof(old, size, node_reader(size, tiles)) == consistency_proof(old, size, memory)


def test_a_proof_in_a_large_tree_needs_few_tiles() -> None:
    assert len(inclusion_tiles(4_567_891, 10_000_000)) <= 6


def test_resuming_with_a_missing_or_short_partial_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="partial tile of 4 hashes"):
        TileBuilder(260, {0: _hashes(3), 1: _hashes(1)})
    with pytest.raises(ValueError, match="should be 64 bytes"):
        decode_tile(0, 0, 2, bytes(63))
