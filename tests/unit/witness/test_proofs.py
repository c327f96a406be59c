"""Consistency proofs read from an archive laid out as the writer stores its tree (full tiles above
level 0, partial tiles of every checkpointed size, level 0 from the segments), equal to the proofs
over the leaves in memory, reading each segment about once."""

from __future__ import annotations

import itertools

import pytest

from collector_ext.errors import UnreadableObjectError
from collector_ext.seal.layout import segment_key, tile_key
from collector_ext.seal.merkle import check_consistency, consistency_proof, leaf_hash, list_reader, tree_root
from collector_ext.seal.segment import encode_segment
from collector_ext.seal.tiles import TileBuilder
from collector_ext.witness.proofs import ArchiveTreeReader
from tests.fakes import InMemoryArchive

CHAIN = bytes(range(16))


def build(sizes: list[int], segment_records: int = 300) -> tuple[InMemoryArchive, list[bytes]]:
    """An archive of ``sizes[-1]`` entries in segments, with the tiles a writer checkpointing at ``sizes`` stores."""
    store = InMemoryArchive()
    entries = [b"entry %d" % i + bytes(60) for i in range(sizes[-1])]
    leaves = [leaf_hash(entry) for entry in entries]
    for first in range(0, len(entries), segment_records):
        chunk = entries[first : first + segment_records]
        key = segment_key("", CHAIN, first, first + len(chunk) - 1, 1_790_000_000 * 10**9)
        store.objects[key] = encode_segment(
            chain_id=CHAIN,
            first_sequence=first,
            created_unix_nano=1,
            entries=chunk,
            signatures=[bytes(64)] * len(chunk),
        )
    tiles = TileBuilder()
    done = 0
    for size in sizes:
        for tile in tiles.extend(leaves[done:size]):
            if tile.level > 0:
                store.objects[tile_key("", CHAIN, tile.level, tile.index, tile.width)] = tile.encode()
        for tile in tiles.partial_tiles():
            store.objects[tile_key("", CHAIN, tile.level, tile.index, tile.width)] = tile.encode()
        done = size
    return store, leaves


@pytest.mark.parametrize(
    ("sizes", "pairs"),
    [
        ([3, 100, 257, 600, 70_000], [(3, 100), (100, 257), (257, 600), (3, 70_000), (600, 70_000), (257, 257)]),
        ([256, 512, 65_536, 65_537], [(256, 512), (512, 65_536), (65_536, 65_537), (256, 65_537)]),
    ],
)
async def test_proofs_from_the_archive_equal_proofs_from_memory(sizes, pairs):
    store, leaves = build(sizes)
    reader = ArchiveTreeReader(store)
    memory = list_reader(leaves)
    for old, new in pairs:
        proof = await reader.consistency_proof(CHAIN, old, new)
        assert proof == consistency_proof(old, new, memory), (old, new)
        assert check_consistency(old, new, tree_root(leaves[:old]), tree_root(leaves[:new]), proof).ok


async def test_each_segment_is_read_about_once_across_consecutive_checkpoints():
    sizes = list(range(50, 3000, 50))
    store, leaves = build(sizes, segment_records=1000)
    reads = 0
    get = store.get

    async def counting_get(key, max_bytes=None):
        nonlocal reads
        reads += key.endswith(".cxseg")
        return await get(key, max_bytes)

    store.get = counting_get
    reader = ArchiveTreeReader(store)
    for old, new in itertools.pairwise(sizes):
        assert await reader.consistency_proof(CHAIN, old, new) == consistency_proof(old, new, list_reader(leaves))
    assert reads <= 3  # three segments of 1000


async def test_a_missing_tile_above_level_0_is_an_error_not_a_wrong_proof():
    store, _ = build([600, 70_000])
    del store.objects[tile_key("", CHAIN, 1, 0)]
    with pytest.raises(UnreadableObjectError):
        await ArchiveTreeReader(store).consistency_proof(CHAIN, 600, 70_000)
