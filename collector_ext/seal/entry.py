"""Entry bytes: the exact bytes that are hashed into the chain and, through their hash, signed.

An entry is a fixed 76-byte big-endian header followed by a kind-specific protobuf payload
(proto/FORMAT.md, "Entry bytes"). A fixed header lets a verifier read sequence numbers and links
without parsing the payload, and leaves no freedom in how the chain fields are encoded.

This module does not decide *which* entries to build (see ``chain``) and never re-encodes stored
entries: verification hashes the stored bytes as they are.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from collector_ext.errors import MalformedObjectError

# The version this writer writes. Version 1 archives are still read and verified under the rules of
# version 1 (proto/FORMAT.md, "Versions").
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
CHAIN_ID_SIZE = 16
HASH_SIZE = 32
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64
ZERO_HASH = bytes(HASH_SIZE)

# Domain-separation prefixes. Each names its purpose and the format version, so a hash or
# signature made for one purpose can never be taken for another (a record signature never
# verifies as a checkpoint signature).
ENTRY_HASH_PREFIX = b"collector-ext/v1/entry\x00"
RECORD_SIGNATURE_PREFIX = b"collector-ext/v1/record-signature\x00"
CHECKPOINT_SIGNATURE_PREFIX = b"collector-ext/v1/checkpoint-signature\x00"
CHECKPOINT_HASH_PREFIX = b"collector-ext/v1/checkpoint\x00"
KEY_ID_PREFIX = b"collector-ext/v1/key-id\x00"
# Version 2: what the new key signs in a key rotation entry (proof of possession).
KEY_ROTATION_PREFIX = b"collector-ext/v2/key-rotation\x00"
# Version 2: what a per-run record key signs when the chain's key certifies it (proof of possession).
RUN_KEY_PREFIX = b"collector-ext/v2/run-key\x00"

# version u16 | kind u8 | reserved u8 | chain id 16 | sequence u64 | previous hash 32 | key id 8 |
# sealed time u64 (ns since the Unix epoch)
ENTRY_HEADER = struct.Struct(">HBB16sQ32s8sQ")
ENTRY_HEADER_SIZE = ENTRY_HEADER.size  # 76
SEQUENCE_SLICE = slice(20, 28)
PREVIOUS_HASH_SLICE = slice(28, 60)
KEY_ID_SLICE = slice(60, 68)

_ENTRY_HASH_BASE = hashlib.sha256(ENTRY_HASH_PREFIX)


class EntryKind(IntEnum):
    """What an entry's payload holds."""

    LOG_RECORD = 1
    GENESIS = 2
    RESTART = 3
    KEY_ROTATION = 4  # version 2
    RUN_KEY = 5  # version 2


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """The decoded fixed header of an entry."""

    format_version: int
    kind: int
    chain_id: bytes
    sequence: int
    previous_hash: bytes
    key_id: bytes
    sealed_unix_nano: int


def encode_entry(
    *,
    kind: EntryKind,
    chain_id: bytes,
    sequence: int,
    previous_hash: bytes,
    key_id: bytes,
    sealed_unix_nano: int,
    payload: bytes,
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """Build one entry's bytes. ``chain.chain_entries`` is the fast path for whole batches."""
    header = ENTRY_HEADER.pack(format_version, kind, 0, chain_id, sequence, previous_hash, key_id, sealed_unix_nano)
    return header + payload


def decode_entry_header(entry: bytes) -> EntryHeader:
    """Decode the fixed header of stored entry bytes.

    Raises:
        MalformedObjectError: the bytes are shorter than a header or of an unknown format version.
    """
    if len(entry) < ENTRY_HEADER_SIZE:
        raise MalformedObjectError(f"entry of {len(entry)} bytes is shorter than the 76-byte header")
    version, kind, _reserved, chain_id, sequence, previous, key_id, sealed = ENTRY_HEADER.unpack_from(entry)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise MalformedObjectError(f"entry format version {version} is not supported (expected 1 or 2)")
    return EntryHeader(version, kind, chain_id, sequence, previous, key_id, sealed)


def entry_payload(entry: bytes) -> bytes:
    """The kind-specific payload after the fixed header."""
    return entry[ENTRY_HEADER_SIZE:]


def entry_hash(entry: bytes) -> bytes:
    """SHA-256 over ENTRY_HASH_PREFIX || entry: the chain link and the record signature's subject."""
    digest = _ENTRY_HASH_BASE.copy()
    digest.update(entry)
    return digest.digest()


def record_signature_message(hash_of_entry: bytes) -> bytes:
    """The exact message an entry's Ed25519 signature is made over."""
    return RECORD_SIGNATURE_PREFIX + hash_of_entry


def key_rotation_message(chain_id: bytes, sequence: int, retired_key_id: bytes) -> bytes:
    """What the new key signs in a key rotation entry at ``sequence`` (version 2)."""
    return KEY_ROTATION_PREFIX + chain_id + sequence.to_bytes(8, "big") + retired_key_id


def run_key_message(chain_id: bytes, sequence: int, certifier_key_id: bytes) -> bytes:
    """What the run key signs in a run key entry at ``sequence`` (version 2)."""
    return RUN_KEY_PREFIX + chain_id + sequence.to_bytes(8, "big") + certifier_key_id
