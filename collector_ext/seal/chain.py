"""The hash chain: sequence numbers, links and the chain head.

Entry n of a chain commits to its chain id, its sequence number n and the hash of entry n-1 (all in
the fixed entry header); entry 0 is the chain's genesis and links to 32 zero bytes. ``ChainHead`` is
the whole state a writer needs to extend a chain. Signing is separate (``sign_entry_hashes``) so a
writer can run it on worker threads while the next batch is chained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    CHAIN_ID_SIZE,
    ENTRY_HASH_PREFIX,
    ENTRY_HEADER,
    FORMAT_VERSION,
    RECORD_SIGNATURE_PREFIX,
    ZERO_HASH,
    EntryKind,
    key_rotation_message,
    run_key_message,
)
from collector_ext.seal.keys import PublicKey, Signer


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain stands: the next sequence number and the hash of the entry before it."""

    chain_id: bytes
    next_sequence: int
    head_hash: bytes

    @classmethod
    def new(cls, chain_id: bytes) -> ChainHead:
        if len(chain_id) != CHAIN_ID_SIZE:
            raise ValueError(f"a chain id is {CHAIN_ID_SIZE} bytes, got {len(chain_id)}")
        return cls(chain_id=chain_id, next_sequence=0, head_hash=ZERO_HASH)


@dataclass(frozen=True, slots=True)
class ChainedBatch:
    """Consecutive entries appended to a chain, with their hashes, and the head after them."""

    first_sequence: int
    entries: list[bytes]
    hashes: list[bytes]
    head: ChainHead


def chain_entries(
    head: ChainHead,
    kind: EntryKind,
    payloads: Sequence[bytes],
    key_id: bytes,
    sealed_unix_nano: int,
    format_version: int = FORMAT_VERSION,
) -> ChainedBatch:
    """Append one entry per payload to the chain at ``head``.

    All entries of a batch share one sealing time. This is the per-record hot path: one struct pack,
    one concatenation and one SHA-256 per record.
    """
    pack = ENTRY_HEADER.pack
    base = hashlib.sha256(ENTRY_HASH_PREFIX)
    chain_id = head.chain_id
    sequence = head.next_sequence
    previous = head.head_hash
    entries: list[bytes] = []
    hashes: list[bytes] = []
    for payload in payloads:
        entry = pack(format_version, kind, 0, chain_id, sequence, previous, key_id, sealed_unix_nano) + payload
        digest = base.copy()
        digest.update(entry)
        previous = digest.digest()
        entries.append(entry)
        hashes.append(previous)
        sequence += 1
    return ChainedBatch(
        first_sequence=head.next_sequence,
        entries=entries,
        hashes=hashes,
        head=ChainHead(chain_id=chain_id, next_sequence=sequence, head_hash=previous),
    )


def sign_entry_hashes(signer: Signer, hashes: Sequence[bytes]) -> list[bytes]:
    """Ed25519 signatures of RECORD_SIGNATURE_PREFIX || hash, one per entry hash."""
    sign = signer.sign
    prefix = RECORD_SIGNATURE_PREFIX
    return [sign(prefix + h) for h in hashes]


def genesis_payload(
    public_key: PublicKey,
    *,
    writer: str,
    reason: str,
    writer_id: str = "",
    supersedes_chain_id: bytes = b"",
    superseded_last_sequence: int = 0,
    superseded_covered_until: int = 0,
    archive_id: str = "",
    superseded_head_sha256: bytes = b"",
    superseded_checkpoint_sha256: bytes = b"",
    superseded_checkpoint_number: int = 0,
) -> bytes:
    """The payload of a chain's entry 0, naming its key, its archive (version 2) and, if any, the
    chain it supersedes with how far that chain reached."""
    message = archive_pb2.GenesisPayload(
        public_key=public_key.raw,
        writer=writer,
        reason=reason,
        writer_id=writer_id,
        supersedes_chain_id=supersedes_chain_id,
        superseded_last_sequence=superseded_last_sequence,
        superseded_covered_until=superseded_covered_until,
        archive_id=archive_id,
        superseded_head_sha256=superseded_head_sha256,
        superseded_checkpoint_sha256=superseded_checkpoint_sha256,
        superseded_checkpoint_number=superseded_checkpoint_number,
    )
    return message.SerializeToString(deterministic=True)


def key_rotation_payload(*, chain_id: bytes, sequence: int, retired: Signer, successor: Signer, reason: str) -> bytes:
    """The payload of a key rotation entry at ``sequence``: ``successor`` signs the chain from the next
    entry on, and proves it holds its key by signing the rotation message."""
    message = key_rotation_message(chain_id, sequence, retired.key_id)
    return archive_pb2.KeyRotationPayload(
        new_public_key=successor.public_key.raw, new_key_signature=successor.sign(message), reason=reason
    ).SerializeToString(deterministic=True)


def run_key_payload(*, chain_id: bytes, sequence: int, certifier: Signer, run_key: Signer, reason: str) -> bytes:
    """The payload of a run key entry at ``sequence`` (version 2): ``certifier`` (the chain's key,
    which signs the entry) vouches that ``run_key`` signs the log records of this run; ``run_key``
    proves it holds its key by signing the run key message."""
    message = run_key_message(chain_id, sequence, certifier.key_id)
    return archive_pb2.RunKeyPayload(
        run_public_key=run_key.public_key.raw, run_key_signature=run_key.sign(message), reason=reason
    ).SerializeToString(deterministic=True)


def restart_payload(*, writer: str, writer_id: str, previous_run_clean: bool, reason: str) -> bytes:
    """The payload of a restart mark: the chain continues after its writer stopped."""
    message = archive_pb2.RestartPayload(
        writer=writer, writer_id=writer_id, previous_run_clean=previous_run_clean, reason=reason
    )
    return message.SerializeToString(deterministic=True)
