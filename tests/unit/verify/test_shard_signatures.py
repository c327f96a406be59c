"""The verifier's record-signature batches (libsodium, used by every shard and a single run alike)
agree with pyca/cryptography on valid and altered signatures, and never accept one pyca refuses."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from collector_ext.seal.keys import PublicKey
from collector_ext.verify.run import check_signatures_libsodium

# The order of the Ed25519 base point (RFC 8032, section 5.1): S + L encodes the same scalar as S.
L = 2**252 + 27742317777372353535851937790883648493


def _keys(count: int, rng: random.Random) -> list[tuple[Ed25519PrivateKey, PublicKey]]:
    keys = []
    for _ in range(count):
        private = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keys.append((private, PublicKey.from_raw(raw)))
    return keys


def _variants(signature: bytes, message: bytes, rng: random.Random) -> list[tuple[bytes, bytes]]:
    flipped = bytearray(signature)
    flipped[rng.randrange(64)] ^= 1 << rng.randrange(8)
    s = int.from_bytes(signature[32:], "little")
    non_canonical = signature[:32] + (s + L).to_bytes(32, "little") if s + L < 2**256 else signature
    return [
        (signature, message),
        (bytes(flipped), message),
        (signature, message + b"x"),
        (signature, message[:-1]),
        (non_canonical, message),
        (signature[:63], message),
        (b"", message),
    ]


def test_libsodium_and_pyca_agree_on_valid_and_altered_signatures() -> None:
    rng = random.Random(14)
    batch = []
    for private, public in _keys(40, rng):
        message = rng.randbytes(rng.randrange(1, 300))
        for signature, text in _variants(private.sign(message), message, rng):
            batch.append((public, signature, text))
    by_libsodium = check_signatures_libsodium(batch)
    by_pyca = [key.is_valid_signature(signature, message) for key, signature, message in batch]
    assert by_libsodium == by_pyca
    assert by_libsodium.count(True) == 40  # exactly the unaltered ones


@pytest.mark.parametrize(
    "raw_key",
    [
        bytes([1]) + bytes(31),  # the neutral element
        bytes(32),  # a point of order 4
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # order 2
    ],
)
def test_small_order_keys_never_verify_with_libsodium(raw_key: bytes) -> None:
    # With a small-order key and R the neutral element, S = 0 satisfies RFC 8032's equation for every
    # message; libsodium refuses such keys outright, so it is never more lenient than pyca here.
    key = PublicKey.from_raw(raw_key)
    signature = bytes([1]) + bytes(31) + bytes(32)
    assert check_signatures_libsodium([(key, signature, b"any message")]) == [False]
