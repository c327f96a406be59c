"""Entry headers and the payloads of special entries (proto/FORMAT.md 7 and 13.3 step 8.3a).

``header_problem`` says what is wrong with an entry's fixed header fields and kind (beyond the
chain links, which ``verify.links`` checks), and parses the payload of a genesis, restart mark or
key rotation so the checker can act on it. Log record payloads are never parsed: the verifier
hashes stored bytes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    CHAIN_ID_SIZE,
    ENTRY_HEADER_SIZE,
    HASH_SIZE,
    KEY_ID_SLICE,
    SUPPORTED_FORMAT_VERSIONS,
    EntryKind,
    entry_payload,
    key_rotation_message,
    run_key_message,
)
from collector_ext.seal.keys import PublicKey, key_id_for

# The kinds each format version may hold (FORMAT.md 7.2).
KINDS_BY_VERSION = {
    1: frozenset({EntryKind.LOG_RECORD, EntryKind.GENESIS, EntryKind.RESTART}),
    2: frozenset(
        {EntryKind.LOG_RECORD, EntryKind.GENESIS, EntryKind.RESTART, EntryKind.KEY_ROTATION, EntryKind.RUN_KEY}
    ),
}
_V2_GENESIS_FIELDS = (
    "archive_id",
    "superseded_head_sha256",
    "superseded_checkpoint_sha256",
    "superseded_checkpoint_number",
)

SpecialPayload = (
    archive_pb2.GenesisPayload | archive_pb2.RestartPayload | archive_pb2.KeyRotationPayload | archive_pb2.RunKeyPayload
)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A sound key rotation entry: the chain is signed by ``new_key_id`` after it."""

    new_key_id: bytes
    reason: str


def entry_version(entry: bytes) -> int:
    return int.from_bytes(entry[0:2], "big") if len(entry) >= 2 else 0


def header_problem(entry: bytes, sequence: int, chain_version: int) -> tuple[str, SpecialPayload | None]:
    """What is wrong with an entry of at least ``ENTRY_HEADER_SIZE`` bytes (or ''), and the parsed
    payload of a sound genesis, restart mark or key rotation."""
    version, kind, reserved = entry_version(entry), entry[2], entry[3]
    if version not in SUPPORTED_FORMAT_VERSIONS:
        return f"entry format version {version} is not supported", None
    if chain_version and version != chain_version:
        return f"entry of format version {version} in a chain of format version {chain_version}", None
    if reserved != 0:
        return f"reserved header byte is {reserved}, not 0", None
    if kind not in KINDS_BY_VERSION[version]:
        return f"entry kind {kind} does not exist in format version {version}", None
    if (sequence == 0) != (kind == EntryKind.GENESIS):
        if sequence == 0:
            return "entry 0 must be the genesis entry", None
        return "genesis entry after entry 0", None
    payload = entry_payload(entry)
    if kind == EntryKind.GENESIS:
        return _genesis_problem(entry, payload, version)
    if kind == EntryKind.RESTART:
        try:
            return "", archive_pb2.RestartPayload.FromString(payload)
        except DecodeError:
            return "restart payload does not parse", None
    if kind == EntryKind.KEY_ROTATION:
        try:
            rotation = archive_pb2.KeyRotationPayload.FromString(payload)
        except DecodeError:
            return "key rotation payload does not parse", None
        if len(rotation.new_public_key) != 32 or len(rotation.new_key_signature) != 64:
            return "key rotation names no 32-byte public key or no 64-byte signature of it", None
        return "", rotation
    if kind == EntryKind.RUN_KEY:
        try:
            run_key = archive_pb2.RunKeyPayload.FromString(payload)
        except DecodeError:
            return "run key payload does not parse", None
        if len(run_key.run_public_key) != 32 or len(run_key.run_key_signature) != 64:
            return "run key entry names no 32-byte public key or no 64-byte signature of it", None
        return "", run_key
    return "", None


def _genesis_problem(entry: bytes, payload: bytes, version: int) -> tuple[str, SpecialPayload | None]:
    try:
        genesis = archive_pb2.GenesisPayload.FromString(payload)
    except DecodeError:
        return "genesis payload does not parse", None
    if key_id_for(genesis.public_key) != entry[KEY_ID_SLICE]:
        return "genesis entry names a public key that does not match its key id", None
    if len(genesis.supersedes_chain_id) not in (0, CHAIN_ID_SIZE):
        return f"genesis names a superseded chain id of {len(genesis.supersedes_chain_id)} bytes, not 16", None
    if version == 1:
        present = [name for name in _V2_GENESIS_FIELDS if getattr(genesis, name)]
        if present:
            return f"a format version 1 genesis carries version 2 field(s) {', '.join(present)}", None
        return "", genesis
    for name in ("superseded_head_sha256", "superseded_checkpoint_sha256"):
        if len(getattr(genesis, name)) not in (0, HASH_SIZE):
            return f"genesis {name} is not 32 bytes", None
    if genesis.supersedes_chain_id and len(genesis.superseded_head_sha256) != HASH_SIZE:
        return "a version 2 genesis that supersedes a chain must name that chain's head hash", None
    if not genesis.supersedes_chain_id and any(
        getattr(genesis, name) for name in _V2_GENESIS_FIELDS if name != "archive_id"
    ):
        return "genesis describes a superseded chain without naming it", None
    return "", genesis


def rotation_of(
    payload: archive_pb2.KeyRotationPayload, chain_id: bytes, sequence: int, retired_key_id: bytes
) -> tuple[Rotation | None, str]:
    """The rotation if the new key proved possession by signing the rotation message, else why not."""
    try:
        new_key = PublicKey.from_raw(payload.new_public_key)
    except ValueError:
        return None, "key rotation names an invalid Ed25519 public key"
    if not new_key.is_valid_signature(
        payload.new_key_signature, key_rotation_message(chain_id, sequence, retired_key_id)
    ):
        return None, "the new key's signature in the key rotation does not verify"
    return Rotation(new_key.key_id, payload.reason), ""


@dataclass(frozen=True, slots=True)
class RunKey:
    """A sound run key certification at ``sequence``: ``key`` may sign the log records after it, up to
    the next restart mark, run key or key rotation entry (FORMAT.md 10.3)."""

    key: PublicKey
    sequence: int
    certifier_key_id: bytes
    reason: str


def run_key_of(
    payload: archive_pb2.RunKeyPayload, chain_id: bytes, sequence: int, certifier_key_id: bytes
) -> tuple[RunKey | None, str]:
    """The run key if it proved possession by signing the run key message, else why not."""
    try:
        key = PublicKey.from_raw(payload.run_public_key)
    except ValueError:
        return None, "run key entry names an invalid Ed25519 public key"
    if not key.is_valid_signature(payload.run_key_signature, run_key_message(chain_id, sequence, certifier_key_id)):
        return None, "the run key's signature in the run key entry does not verify"
    return RunKey(key, sequence, certifier_key_id, payload.reason), ""


def is_entry(entry: bytes) -> bool:
    return len(entry) >= ENTRY_HEADER_SIZE
