"""Ed25519 keys and key ids, from and to bytes.

Key files are PEM: PKCS#8 for the private key, SubjectPublicKeyInfo for the public key. The key id is
the first 8 bytes of SHA-256 over KEY_ID_PREFIX || the raw 32-byte public key; it is written into
every entry and checkpoint so a verifier can pick the pinned key and report unknown ones.

Signatures are made by libsodium (through PyNaCl), not by pyca/cryptography: Ed25519 signatures are
deterministic (RFC 8032), so both give the same bytes for the same key and message (the golden
vectors pin them), and libsodium signs faster (README, "Dependencies"). Keys are parsed and written
by pyca/cryptography only; libsodium receives the raw 32-byte seed.

Reading the files is the caller's job; this module only parses bytes. Error messages name the key
source but never include key material.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from collector_ext.errors import KeyFileError
from collector_ext.seal.entry import KEY_ID_PREFIX, KEY_ID_SIZE, SIGNATURE_SIZE

SignFunction = Callable[[bytes], bytes]
"""Ed25519-signs a message with one key and returns the 64-byte signature; safe to call from threads."""


def pyca_sign_function(seed: bytes) -> SignFunction:
    """pyca/cryptography's Ed25519 signing for the 32-byte private key ``seed`` (releases the GIL)."""
    return Ed25519PrivateKey.from_private_bytes(seed).sign


def libsodium_sign_function(seed: bytes) -> SignFunction:
    """libsodium's Ed25519 signing (crypto_sign, through PyNaCl's cffi binding, which releases the GIL
    during the call) for the 32-byte private key ``seed``."""
    _, secret = crypto_sign_seed_keypair(seed)

    def sign(message: bytes) -> bytes:
        # crypto_sign returns signature || message; the detached form is not in PyNaCl's bindings.
        return crypto_sign(message, secret)[:SIGNATURE_SIZE]

    return sign


ED25519_IMPLEMENTATIONS: dict[str, Callable[[bytes], SignFunction]] = {
    "libsodium": libsodium_sign_function,
    "pyca": pyca_sign_function,
}
"""The Ed25519 signing implementations the package depends on, the one it signs with first
(tests/benchmark.py measures each of them)."""


SIGNING_IMPLEMENTATION = "libsodium"
"""The implementation the sidecar signs with (measured the fastest on 1 and 2 threads)."""


def fastest_sign_function(seed: bytes) -> SignFunction:
    """The signing function the sidecar uses (SIGNING_IMPLEMENTATION) for the 32-byte private key
    ``seed``."""
    return ED25519_IMPLEMENTATIONS[SIGNING_IMPLEMENTATION](seed)


def private_key_seed(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte private key (RFC 8032's seed); never log or print it."""
    return private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def key_id_for(public_key_raw: bytes) -> bytes:
    """The 8-byte key id of a raw Ed25519 public key."""
    return hashlib.sha256(KEY_ID_PREFIX + public_key_raw).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True)
class PublicKey:
    """A pinned Ed25519 public key and its key id."""

    raw: bytes
    key_id: bytes
    _key: Ed25519PublicKey = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        return cls(raw=raw, key_id=key_id_for(raw), _key=Ed25519PublicKey.from_public_bytes(raw))

    def pem(self) -> bytes:
        """The key as a PEM SubjectPublicKeyInfo (FORMAT.md 8.1), as `collector-ext keygen` writes it."""
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def is_valid_signature(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer(Protocol):
    """Something that makes Ed25519 signatures with one key. Implementations must be thread-safe."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


class Ed25519Signer:
    """A Signer holding a private key in memory; sign() uses ``fastest_sign_function`` and releases
    the GIL while it signs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._public_key = PublicKey.from_raw(raw)
        self.sign: SignFunction = fastest_sign_function(private_key_seed(private_key))

    @property
    def key_id(self) -> bytes:
        return self._public_key.key_id

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The key itself, for handing to signing workers; never log or print it."""
        return self._private_key

    def __repr__(self) -> str:
        return f"Ed25519Signer(key_id={self.key_id.hex()})"


def load_private_key_pem(data: bytes, source: str) -> Ed25519Signer:
    """Parse a PEM (PKCS#8) Ed25519 private key.

    Raises:
        KeyFileError: the data is not an unencrypted Ed25519 private key; ``source`` names the file.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            source, "not an unencrypted PEM private key (create one with `collector-ext keygen`)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(source, f"holds a {type(key).__name__}, not an Ed25519 private key")
    return Ed25519Signer(key)


def load_public_key_pem(data: bytes, source: str) -> PublicKey:
    """Parse a PEM (SubjectPublicKeyInfo) Ed25519 public key.

    Raises:
        KeyFileError: the data is not an Ed25519 public key; ``source`` names the file.
    """
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(source, "not a PEM public key (the .pub file written by `collector-ext keygen`)") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(source, f"holds a {type(key).__name__}, not an Ed25519 public key")
    return PublicKey.from_raw(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class GeneratedKeyPair:
    private_pem: bytes = field(repr=False)
    public_pem: bytes
    key_id: bytes


def generate_key_pair() -> GeneratedKeyPair:
    """A new Ed25519 key pair as PEM bytes, with its key id."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return GeneratedKeyPair(private_pem=private_pem, public_pem=public_pem, key_id=key_id_for(raw))
