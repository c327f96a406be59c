"""RFC 6962 tree hashing, proofs and their checks, against published vectors and a naive recursion."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_ext.seal.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    check_consistency,
    check_inclusion,
    consistency_proof,
    inclusion_path,
    leaf_hash,
    list_reader,
    node_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# The leaves and roots used by Certificate Transparency implementations (RFC 6962 test data).
LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _mth(leaves: list[bytes]) -> bytes:
    """MTH written straight from RFC 6962 2.1 over leaf hashes (the oracle)."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _hashes(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert tree_root([]) == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert CompactRange().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_published_roots(size: int) -> None:
    hashes = [leaf_hash(d) for d in LEAVES[:size]]
    assert tree_root(hashes).hex() == ROOTS[size - 1]
    assert CompactRange().extend(hashes).root().hex() == ROOTS[size - 1]


def test_published_consistency_vector_one_to_eight() -> None:
    hashes = [leaf_hash(d) for d in LEAVES]
    proof = consistency_proof(1, 8, list_reader(hashes))
    assert len(proof) == 3
    verify_consistency(1, 8, bytes.fromhex(ROOTS[0]), bytes.fromhex(ROOTS[7]), proof)


def test_generation_matches_the_rfc_recursion_and_verifies_for_every_small_tree() -> None:
    for n in range(1, 40):
        hashes = _hashes(n)
        reader = list_reader(hashes)
        root = _mth(hashes)
        assert tree_root(hashes) == root
        for m in range(n):
            path = inclusion_path(m, n, reader)
            assert list(path) == _path(m, hashes)
            assert check_inclusion(m, n, hashes[m], path, root).ok
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, reader)
            assert list(proof) == (_subproof(m, hashes, True) if m < n else [])
            assert check_consistency(m, n, _mth(hashes[:m]), root, proof).ok


def test_the_inner_shift_cases_naive_code_gets_wrong() -> None:
    # (2, 3), (4, 5), (4, 6): the first pairs a verifier without the inner shift loop rejects.
    for m, n in [(2, 3), (4, 5), (4, 6), (6, 7), (8, 11)]:
        hashes = _hashes(n)
        verify_inclusion(m, n, hashes[m], inclusion_path(m, n, list_reader(hashes)), _mth(hashes))


def test_a_modified_truncated_or_extended_inclusion_proof_fails_naming_why() -> None:
    hashes = _hashes(13)
    root = _mth(hashes)
    path = inclusion_path(5, 13, list_reader(hashes))
    assert "too short" in str(check_inclusion(5, 13, hashes[5], path[:-1], root).problem)
    assert "too long" in str(check_inclusion(5, 13, hashes[5], (*path, path[0]), root).problem)
    flipped = (bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:])
    assert "root" in str(check_inclusion(5, 13, hashes[5], flipped, root).problem)
    assert not check_inclusion(5, 13, hashes[6], path, root).ok
    assert not check_inclusion(6, 13, hashes[5], path, root).ok
    assert "not inside" in str(check_inclusion(13, 13, hashes[5], path, root).problem)
    assert "32 bytes" in str(check_inclusion(5, 13, hashes[5], (path[0][:31], *path[1:]), root).problem)
    with pytest.raises(ProofError) as caught:
        verify_inclusion(5, 13, hashes[5], path[:-1], root)
    assert caught.value.check == "inclusion"


def test_consistency_edges_and_bad_proofs() -> None:
    hashes = _hashes(9)
    reader = list_reader(hashes)
    root9, root4, root5 = _mth(hashes), _mth(hashes[:4]), _mth(hashes[:5])
    assert check_consistency(0, 9, EMPTY_ROOT, root9, ()).ok
    assert not check_consistency(0, 9, root4, root9, ()).ok
    assert check_consistency(9, 9, root9, root9, ()).ok
    assert "two different roots" in str(check_consistency(5, 5, root5, root9, ()).problem)
    assert "cannot extend" in str(check_consistency(9, 5, root9, root5, ()).problem)
    proof = consistency_proof(5, 9, reader)
    assert check_consistency(5, 9, root5, root9, proof).ok
    assert not check_consistency(5, 9, root4, root9, proof).ok
    assert not check_consistency(5, 9, root5, root5, proof).ok
    assert not check_consistency(5, 9, root5, root9, proof[:-1]).ok
    assert not check_consistency(5, 9, root5, root9, (*proof, proof[0])).ok
    assert "empty" in str(check_consistency(5, 9, root5, root9, ()).problem)
    # 4 is a power of two: its root is a node of the new tree and is left out of the proof.
    assert len(consistency_proof(4, 8, reader)) == 1


@given(st.integers(min_value=1, max_value=3000), st.data())
def test_compact_range_and_proofs_agree_on_larger_trees(n: int, data: st.DataObject) -> None:
    hashes = _hashes(n)
    reader = list_reader(hashes)
    split = data.draw(st.integers(min_value=0, max_value=n))
    compact = CompactRange().extend(hashes[:split]).extend(hashes[split:])
    assert compact.size == n
    root = compact.root()
    assert root == tree_root(hashes)
    m = data.draw(st.integers(min_value=0, max_value=n - 1))
    verify_inclusion(m, n, hashes[m], inclusion_path(m, n, reader), root)
    old = data.draw(st.integers(min_value=1, max_value=n))
    verify_consistency(old, n, tree_root(hashes[:old]), root, consistency_proof(old, n, reader))


def test_compact_range_rejects_an_inconsistent_shape() -> None:
    with pytest.raises(ValueError, match="has 2 nodes"):
        CompactRange(3, (EMPTY_ROOT,))
    assert CompactRange().append(node_hash(EMPTY_ROOT, EMPTY_ROOT)).size == 1
