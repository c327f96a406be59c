"""The RFC 6962 / RFC 9162 Merkle tree over a chain's entries (proto/FORMAT.md 16).

Leaf ``i`` of a chain's tree is ``SHA-256(0x00 || entry bytes of sequence i)``, interior nodes are
``SHA-256(0x01 || left || right)``; the tree of size ``n`` splits at the largest power of two below
``n``. This module computes roots, inclusion paths and consistency proofs, checks them, and keeps the
incremental right edge (a compact range) the writer extends by one hash per record.

Proof generation reads tree nodes through a ``NodeReader``: a function giving the hash of the perfect
subtree at ``(level, index)`` (the ``2**level`` leaves from ``index * 2**level`` on). The reader
decides where the hashes come from (a list of leaf hashes in memory, or hash tiles read from an
archive); this module never reads anything itself and holds no state beyond its arguments.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from collector_ext.errors import DataError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# MTH({}) = SHA-256 of the empty string (RFC 6962 2.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeReader = Callable[[int, int], bytes]
"""``reader(level, index)``: the hash of the perfect subtree over leaves ``[index << level, (index + 1) << level)``."""


class ProofError(DataError):
    """A Merkle proof does not hold; ``check`` names the step that failed."""

    def __init__(self, check: str, problem: str) -> None:
        super().__init__(f"{check}: {problem}")
        self.check = check
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """The outcome of checking one proof: ``problem`` is None when it holds."""

    check: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def raise_if_failed(self) -> None:
        if self.problem is not None:
            raise ProofError(self.check, self.problem)


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 leaf hash of ``data`` (for a chain: the entry bytes as stored)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def prefixed_hashes(prefix: bytes, messages: Iterable[bytes | memoryview]) -> list[bytes]:
    """SHA-256(prefix || message) of each message: leaf hashes with LEAF_PREFIX, interior nodes with
    NODE_PREFIX over the two children joined.

    A loop over copies of one hash of the prefix: measured faster than hashing ``prefix + message``
    with a new hash object each time, or than the same driven by ``map`` (OpenSSL makes a new hash
    context more slowly than it copies one)."""
    copy = hashlib.sha256(prefix).copy
    hashes: list[bytes] = []
    append = hashes.append
    for message in messages:
        digest = copy()
        digest.update(message)
        append(digest.digest())
    return hashes


def concatenated_leaf_hashes(entries: bytes, lengths: Sequence[int]) -> bytes:
    """The leaf hashes of entries laid end to end in ``entries`` (``lengths`` their sizes, in order),
    concatenated: one bytes object each way, so a worker process gets and returns them cheaply."""
    if sum(lengths) != len(entries):
        raise ValueError(f"entry lengths add up to {sum(lengths)} bytes, not {len(entries)}")
    view = memoryview(entries)
    ends = list(itertools.accumulate(lengths))
    starts = [0, *ends[:-1]]
    return b"".join(prefixed_hashes(LEAF_PREFIX, map(view.__getitem__, map(slice, starts, ends))))


def split_hashes(concatenated: bytes) -> list[bytes]:
    """Concatenated 32-byte hashes as a list."""
    return [concatenated[i : i + HASH_SIZE] for i in range(0, len(concatenated), HASH_SIZE)]


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 interior-node hash of two child hashes."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_root(start: int, end: int, reader: NodeReader) -> bytes:
    """MTH of leaves ``[start, end)``, where ``start`` is a multiple of the smallest power of two
    ``>= end - start`` (every range the RFC 6962 recursion produces is of this kind).

    The range is split into perfect subtrees of decreasing size, read with ``reader``, and folded from
    the right.
    """
    if end <= start:
        raise ValueError(f"empty range [{start}, {end})")
    nodes: list[bytes] = []
    position = start
    remaining = end - start
    while remaining:
        level = remaining.bit_length() - 1
        nodes.append(reader(level, position >> level))
        position += 1 << level
        remaining -= 1 << level
    result = nodes[-1]
    for node in reversed(nodes[:-1]):
        result = node_hash(node, result)
    return result


def inclusion_path(index: int, size: int, reader: NodeReader) -> tuple[bytes, ...]:
    """PATH(index, D[size]) of RFC 6962 2.1.1: the sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            path.append(range_root(start + k, end, reader))
            end = start + k
        else:
            path.append(range_root(start, start + k, reader))
            start += k
    path.reverse()
    return tuple(path)


def consistency_proof(old_size: int, new_size: int, reader: NodeReader) -> tuple[bytes, ...]:
    """PROOF(old_size, D[new_size]) of RFC 6962 2.1.2; empty when ``old_size`` is 0 or equals ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return ()
    proof: list[bytes] = []
    start, end, whole = 0, new_size, True
    m = old_size
    # SUBPROOF(m, D[start:end], whole), unrolled: each step appends one hash, deepest last.
    while True:
        n = end - start
        if m == n:
            if not whole:
                proof.append(range_root(start, end, reader))
            break
        k = _split(n)
        if m <= k:
            proof.append(range_root(start + k, end, reader))
            end = start + k
        else:
            proof.append(range_root(start, start + k, reader))
            start += k
            m -= k
            whole = False
    proof.reverse()
    return tuple(proof)


def list_reader(leaf_hashes: Sequence[bytes]) -> NodeReader:
    """A NodeReader over leaf hashes held in memory (interior nodes are computed, and remembered)."""
    cache: dict[tuple[int, int], bytes] = {}

    def read(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hashes[index]
        key = (level, index)
        found = cache.get(key)
        if found is None:
            found = node_hash(read(level - 1, 2 * index), read(level - 1, 2 * index + 1))
            cache[key] = found
        return found

    return read


def tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (``EMPTY_ROOT`` for none).

    Computed level by level, pairing neighbours and carrying an odd last node up unchanged: for the
    left-balanced trees of RFC 6962 this gives the same root as the recursive definition, with one
    SHA-256 call per interior node and no recursion (the writer runs it for every 256 records).
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [sha256(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _bad_hash(value: bytes) -> bool:
    return len(value) != HASH_SIZE


def check_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes, *, check: str = "inclusion"
) -> ProofCheck:
    """RFC 9162 2.1.3.2: does ``path`` prove leaf hash ``leaf`` at ``index`` in the tree ``root`` of ``size``?

    Never raises; the result names what failed.
    """
    if size <= 0 or not 0 <= index < size:
        return ProofCheck(check, f"leaf index {index} is not inside a tree of size {size}")
    if _bad_hash(leaf) or _bad_hash(root) or any(_bad_hash(p) for p in path):
        return ProofCheck(check, f"every hash must be {HASH_SIZE} bytes")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return ProofCheck(check, f"the inclusion path is too long ({len(path)} hashes)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return ProofCheck(check, f"the inclusion path is too short ({len(path)} hashes)")
    if r != root:
        return ProofCheck(check, "the inclusion path does not lead to the checkpoint's root hash")
    return ProofCheck(check)


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Like ``check_inclusion``, raising ``ProofError`` when the proof does not hold."""
    check_inclusion(index, size, leaf, path, root).raise_if_failed()


def check_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
    *,
    check: str = "consistency",
) -> ProofCheck:
    """RFC 9162 2.1.4.2, with the edges the RFC leaves open: size 0 needs an empty proof and the
    empty-tree root; equal sizes need an empty proof and equal roots. Never raises."""
    if old_size < 0 or new_size < old_size:
        return ProofCheck(check, f"tree size {new_size} cannot extend tree size {old_size}")
    if _bad_hash(old_root) or _bad_hash(new_root) or any(_bad_hash(p) for p in proof):
        return ProofCheck(check, f"every hash must be {HASH_SIZE} bytes")
    if old_size == 0:
        if proof:
            return ProofCheck(check, "a proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            return ProofCheck(check, "the root of the empty tree must be SHA-256 of the empty string")
        return ProofCheck(check)
    if old_size == new_size:
        if proof:
            return ProofCheck(check, "a proof between equal sizes must be empty")
        if old_root != new_root:
            return ProofCheck(check, f"two different roots for the same tree size {old_size}")
        return ProofCheck(check)
    if not proof:
        return ProofCheck(check, "the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return ProofCheck(check, f"the consistency proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return ProofCheck(check, f"the consistency proof is too short ({len(proof)} hashes)")
    if fr != old_root:
        return ProofCheck(check, f"the proof does not lead to the root of the tree of size {old_size}")
    if sr != new_root:
        return ProofCheck(check, f"the proof does not lead to the root of the tree of size {new_size}")
    return ProofCheck(check)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Like ``check_consistency``, raising ``ProofError`` when the proof does not hold."""
    check_consistency(old_size, new_size, old_root, new_root, proof).raise_if_failed()


@dataclass(frozen=True, slots=True)
class CompactRange:
    """The right edge of a tree of ``size`` leaves: the roots of its perfect subtrees, largest first.

    That is all a writer needs to append leaves and compute the root; it holds at most one hash per
    bit of ``size``. Immutable: ``append`` returns the extended range.
    """

    size: int = 0
    nodes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.nodes) != self.size.bit_count():
            raise ValueError(f"a compact range of size {self.size} has {self.size.bit_count()} nodes")

    def append(self, leaf: bytes) -> CompactRange:
        """The range with one more leaf hash."""
        return self.extend((leaf,))

    def extend(self, leaves: Sequence[bytes]) -> CompactRange:
        """The range with these leaf hashes appended, in order."""
        nodes = list(self.nodes)
        size = self.size
        for leaf in leaves:
            node = leaf
            carry = size
            while carry & 1:
                node = node_hash(nodes.pop(), node)
                carry >>= 1
            nodes.append(node)
            size += 1
        return CompactRange(size, tuple(nodes))

    def root(self) -> bytes:
        """MTH of the whole tree (``EMPTY_ROOT`` when empty)."""
        if not self.nodes:
            return EMPTY_ROOT
        result = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            result = node_hash(node, result)
        return result
