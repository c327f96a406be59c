"""Interoperability: our checkpoint notes and inclusion proofs, checked by someone else's code.

The independent implementation is sigstore-python 4.5.1 (``pip install sigstore==4.5.1``), which checks
Rekor's signed-note checkpoints and RFC 6962 inclusion proofs. Its public API verifies whole Sigstore
bundles only; the two functions that do the work live in private modules,
``sigstore._internal.rekor.checkpoint.verify_checkpoint`` and
``sigstore._internal.merkle.verify_merkle_inclusion``, so this test pins the version and feeds them a
``TransparencyLogEntry`` built from one of our proof files: the entry bytes as the log's canonicalized
body, our tlog-proof's index, path and tree root, our checkpoint note as the checkpoint, and our
writer's Ed25519 key in its keyring, found by the note's key hint (sigstore matches signatures by the
4-byte hint only). The proofs come from a real sidecar process writing to SeaweedFS's S3.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import sigstore._internal.merkle as sigstore_merkle
import sigstore._internal.rekor.checkpoint as sigstore_checkpoint
import sigstore._internal.trust as sigstore_trust
import sigstore.errors as sigstore_errors
import sigstore.models as sigstore_bundle_models
import sigstore_models.common.v1 as common_v1
import sigstore_models.rekor.v1 as rekor_v1

from collector_ext.prove.build import build_proof
from collector_ext.prove.proof_file import ProofFile
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.note import parse_note, parse_tree_head
from collector_ext.service import open_archive
from tests.integration.conftest import KeyPairFiles, S3Server
from tests.integration.test_s3_archive import _send_with_otel_sdk

SIGSTORE_VERSION = "4.5.1"


@pytest.fixture
def sidecar_archive(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> Iterator[tuple[str, bytes, PublicKey, int]]:
    """A real sidecar writes 600 OpenTelemetry SDK records to SeaweedFS; (url, chain, key, last seq)."""
    bucket = seaweedfs.create_bucket("interop")
    url = f"s3://{bucket}/audit"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 600)
        chain_id = sidecar.pipeline.chain_id
    # Closed cleanly: the final checkpoint's note covers every record.
    yield url, chain_id, key_pair.public_key, 600
    del seaweedfs  # the session's server keeps running for the other tests


def _prove(url: str, endpoint: str, chain_id: bytes, first: int, last: int) -> ProofFile:
    async def run() -> ProofFile:
        store = open_archive(url, for_writing=False, endpoint_url=endpoint)
        await store.open()
        try:
            return (await build_proof(store, chain_id, first, last)).proof
        finally:
            await store.close()

    return asyncio.run(run())


def test_the_pinned_sigstore_version_is_the_one_installed() -> None:
    # The functions used are private: another version may move or change them.
    assert version("sigstore") == SIGSTORE_VERSION


def _sigstore_entry(proof: ProofFile, index: int = 0, *, root: bytes | None = None) -> object:
    record = proof.records[index]
    note = parse_note(proof.note)
    head = parse_tree_head(note.text)
    # sigstore's models take bytes as base64 and 64-bit integers as decimal strings, the way protobuf JSON writes them.
    b64 = lambda value: base64.b64encode(value).decode()  # noqa: E731
    inner = rekor_v1.TransparencyLogEntry(
        log_index=str(record.index),
        log_id=common_v1.LogId(key_id=b64(note.signatures[0].key_hint)),
        kind_version=rekor_v1.KindVersion(kind="collector-ext-entry", version="1"),
        inclusion_proof=rekor_v1.InclusionProof(
            log_index=str(record.index),
            root_hash=b64(root if root is not None else head.root),
            tree_size=str(head.size),
            hashes=[b64(h) for h in record.path],
            checkpoint=rekor_v1.Checkpoint(envelope=proof.note.decode()),
        ),
        canonicalized_body=b64(record.entry),
    )
    return sigstore_bundle_models.TransparencyLogEntry(inner)


def _keyring(key: PublicKey) -> object:
    der = b"".join(key.pem().splitlines()[1:-1]).decode()  # the SubjectPublicKeyInfo, base64
    return sigstore_trust.Keyring(
        [common_v1.PublicKey(raw_bytes=der, key_details=common_v1.PublicKeyDetails.PKIX_ED25519)]
    )


def check_with_sigstore(proof: ProofFile, key: PublicKey, index: int = 0, *, root: bytes | None = None) -> None:
    entry = _sigstore_entry(proof, index, root=root)
    sigstore_checkpoint.verify_checkpoint(_keyring(key), entry)
    sigstore_merkle.verify_merkle_inclusion(entry)


def test_sigstore_accepts_our_notes_and_proofs_and_refuses_altered_ones(
    sidecar_archive: tuple[str, bytes, PublicKey, int], seaweedfs: S3Server
) -> None:
    url, chain_id, key, last = sidecar_archive
    run = _prove(url, seaweedfs.endpoint_url, chain_id, 0, last)
    # Every leaf of the tree: each position shape (left edge, right edge, inner) of a 601-leaf tree.
    for index in range(len(run.records)):
        check_with_sigstore(run, key, index)
    proof = _prove(url, seaweedfs.endpoint_url, chain_id, 300, 300)
    check_with_sigstore(proof, key)
    record = proof.records[0]
    # A changed entry, a changed path, another root, another key: sigstore refuses each.
    changed_entry = type(record)(record.index, record.entry[:-1] + b"!", record.signature, record.path)
    flipped = (bytes(32), *record.path[1:]) if record.path else ()
    changed_path = type(record)(record.index, record.entry, record.signature, flipped)
    for altered in (changed_entry, changed_path):
        with pytest.raises(sigstore_errors.VerificationError):
            check_with_sigstore(ProofFile((altered,), proof.note), key)
    with pytest.raises(sigstore_errors.VerificationError):
        check_with_sigstore(proof, key, root=bytes(32))
    stranger = PublicKey.from_raw(bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"))
    with pytest.raises(sigstore_errors.VerificationError):
        check_with_sigstore(proof, stranger)
