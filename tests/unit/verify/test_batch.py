"""verify.batch computes what the record-by-record code computes, on clean and altered entries."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from collector_ext.seal.entry import ENTRY_HEADER_SIZE, entry_hash
from collector_ext.seal.merkle import CompactRange, leaf_hash, tree_root
from collector_ext.verify.batch import (
    all_headers,
    consecutive_from,
    entry_hashes,
    extend_range,
    leaf_hashes,
    same_slices,
)


def _entry(sequence: int, tail: bytes = b"payload") -> bytes:
    return b"\x00\x02\x01\x00" + bytes(16) + sequence.to_bytes(8, "big") + bytes(48) + tail


def _leaves(count: int, salt: int = 0) -> list[bytes]:
    return [hashlib.sha256(b"%d/%d" % (salt, i)).digest() for i in range(count)]


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_hashes_agree_with_one_at_a_time(entries: list[bytes]) -> None:
    assert entry_hashes(entries) == [entry_hash(entry) for entry in entries]
    assert leaf_hashes(entries) == [leaf_hash(entry) for entry in entries]


@settings(max_examples=300)
@given(st.integers(0, 700), st.lists(st.integers(0, 300), max_size=5))
def test_extend_range_agrees_with_compact_range(start: int, batches: list[int]) -> None:
    leaves = _leaves(start + sum(batches))
    slow = CompactRange().extend(leaves[:start])
    fast = extend_range(CompactRange(), leaves[:start])
    assert fast == slow
    done = start
    for count in batches:
        slow = slow.extend(leaves[done : done + count])
        fast = extend_range(fast, leaves[done : done + count])
        done += count
        assert fast == slow
        assert fast.root() == tree_root(leaves[:done])


def test_extend_range_at_powers_of_two() -> None:
    for size in (1, 2, 3, 255, 256, 257, 1023, 1024, 1025):
        for count in (1, 2, 255, 256, 257):
            leaves = _leaves(size + count, size)
            base = CompactRange().extend(leaves[:size])
            assert extend_range(base, leaves[size:]) == base.extend(leaves[size:])


@given(st.integers(0, 2**64 - 50), st.integers(0, 40), st.data())
def test_consecutive_from_matches_the_loop(first: int, count: int, data: st.DataObject) -> None:
    entries = [_entry(first + i) for i in range(count)]
    assert consecutive_from(entries, first)
    if not count:
        return
    index = data.draw(st.integers(0, count - 1))
    change = data.draw(st.sampled_from(["sequence", "short", "swap"]))
    altered = list(entries)
    if change == "sequence":
        delta = data.draw(st.integers(1, 2**64 - 1))
        altered[index] = _entry((first + index + delta) % 2**64)
    elif change == "short":
        altered[index] = altered[index][: data.draw(st.integers(0, ENTRY_HEADER_SIZE - 1))]
    else:
        if count < 2:
            return
        other = (index + 1) % count
        altered[index], altered[other] = altered[other], altered[index]

    def loop(values: list[bytes]) -> bool:
        return all(
            len(entry) >= ENTRY_HEADER_SIZE and int.from_bytes(entry[20:28], "big") == first + i
            for i, entry in enumerate(values)
        )

    assert consecutive_from(altered, first) == loop(altered) is False


def test_consecutive_from_refuses_sequences_past_the_largest() -> None:
    assert not consecutive_from([_entry(2**64 - 1), b"\xff" * 100], 2**64 - 1)
    assert consecutive_from([_entry(2**64 - 1)], 2**64 - 1)
    assert not consecutive_from([_entry(0)], -1)


@given(st.lists(st.binary(max_size=30), max_size=20), st.integers(0, 10), st.integers(0, 12), st.binary(max_size=12))
def test_same_slices_matches_the_loop(entries: list[bytes], start: int, width: int, expected: bytes) -> None:
    expected = (expected * 12)[:width] if expected else bytes(width)
    if entries:
        entries[0] = entries[0][:start].ljust(start, b"x") + expected + entries[0][start + width :]
    assert same_slices(entries, start, start + width, expected) == all(
        e[start : start + width] == expected for e in entries
    )


def test_all_headers() -> None:
    assert all_headers([])
    assert all_headers([bytes(ENTRY_HEADER_SIZE)])
    assert not all_headers([bytes(ENTRY_HEADER_SIZE), bytes(ENTRY_HEADER_SIZE - 1)])
