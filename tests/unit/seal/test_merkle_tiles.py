"""Hash tiles: the writer's TileBuilder and the prover's reader against the in-memory tree."""

from __future__ import annotations

import pickle
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_ext.seal.layout import parse_tile_key, tile_index_path, tile_key
from collector_ext.seal.merkle import (
    concatenated_leaf_hashes,
    consistency_proof,
    inclusion_path,
    leaf_hash,
    list_reader,
    split_hashes,
    tree_root,
)
from collector_ext.seal.tiles import (
    Tile,
    TileBuilder,
    consistency_tiles,
    decode_tile,
    extend_by_segments,
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


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=6),
    resume_at=st.integers(min_value=0, max_value=300),
    overlap=st.integers(min_value=0, max_value=5),
)
def test_extending_by_segments_through_a_pickle_matches_the_tree(
    sizes: list[int], resume_at: int, overlap: int
) -> None:
    """What the writer sends to a worker process (entries laid end to end, then a builder and the
    segments' concatenated leaf hashes) gives the tree of those entries, whatever the segment sizes,
    where the builder resumed, and when a segment starts inside the tree already built."""
    entries = [f"entry {i}".encode() * (1 + i % 3) for i in range(resume_at + sum(sizes))]
    leaves = [leaf_hash(entry) for entry in entries]
    builder = TileBuilder()
    builder.extend(leaves[:resume_at])
    firsts, blobs, first = [], [], resume_at
    for size in sizes:
        start = max(0, first - overlap)  # uploaded again after a restart: starts inside the tree
        segment = entries[start : first + size]
        blob = concatenated_leaf_hashes(b"".join(segment), array("I", map(len, segment)))
        assert split_hashes(blob) == leaves[start : first + size]
        firsts.append(start)
        blobs.append(blob)
        first += size
    builder, completed = pickle.loads(
        pickle.dumps(extend_by_segments(pickle.loads(pickle.dumps(builder)), firsts, blobs))
    )
    assert builder.size == len(entries)
    assert builder.root() == tree_root(leaves)
    assert all(tile.level > 0 and tile.width == 256 for tile in completed)


def test_entry_lengths_that_do_not_add_up_are_refused() -> None:
    with pytest.raises(ValueError, match="add up"):
        concatenated_leaf_hashes(b"abcdef", [2, 2])
