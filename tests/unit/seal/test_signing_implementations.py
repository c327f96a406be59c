"""The Ed25519 implementations the sidecar can sign with make the same signatures.

Signatures are deterministic (RFC 8032), so libsodium (what ``Ed25519Signer`` and the signing workers
use) must give pyca/cryptography's bytes exactly; the golden vectors pin this for one key, these
tests for many keys and messages.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_ext import signing_worker
from collector_ext.seal.entry import RECORD_SIGNATURE_PREFIX
from collector_ext.seal.keys import (
    ED25519_IMPLEMENTATIONS,
    Ed25519Signer,
    libsodium_sign_function,
    private_key_seed,
    pyca_sign_function,
)


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2048))
def test_libsodium_and_pyca_sign_the_same_bytes(seed: bytes, message: bytes) -> None:
    expected = Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    for name, make in ED25519_IMPLEMENTATIONS.items():
        assert make(seed)(message) == expected, name


def test_the_signer_signs_with_libsodium_and_its_signatures_verify() -> None:
    private = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(private)
    seed = private_key_seed(private)
    message = RECORD_SIGNATURE_PREFIX + bytes(range(32))
    signature = signer.sign(message)
    assert len(signature) == 64
    assert signature == libsodium_sign_function(seed)(message) == pyca_sign_function(seed)(message)
    assert signer.public_key.is_valid_signature(signature, message)
    assert not signer.public_key.is_valid_signature(signature, message + b"x")


def test_a_signing_worker_signs_concatenated_hashes_like_the_signer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing_worker, "exit_with_parent", lambda parent_pid: None)  # no watcher thread here
    monkeypatch.setattr(signing_worker, "_sign", None)
    private = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(private)
    hashes = [bytes([n]) * 32 for n in range(5)]
    signing_worker.initialise(private_key_seed(private), parent_pid=1)
    blob = signing_worker.sign_concatenated(b"".join(hashes))
    assert blob == b"".join(signer.sign(RECORD_SIGNATURE_PREFIX + h) for h in hashes)
