"""Signed checkpoints: a chain's length and head hash, and the digests of newly archived segments.

A checkpoint states "entries 0..last_sequence of chain C are archived, entry last_sequence hashes to
H, and these segment objects hold them", signed with Ed25519 over CHECKPOINT_SIGNATURE_PREFIX ||
body. Checkpoints of a chain are numbered and each names the hash of the one before, so a removed
checkpoint is visible; they are written when segments are archived and on a timer when idle, so a
cut-off tail is visible too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import (
    CHECKPOINT_HASH_PREFIX,
    CHECKPOINT_SIGNATURE_PREFIX,
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
)
from collector_ext.seal.framing import CHECKPOINT_MAGIC, MAX_SEGMENTS_PER_CHECKPOINT, frame, unframe
from collector_ext.seal.keys import PublicKey, Signer
from collector_ext.seal.wire import wire_fields


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A segment object as it was written: its key, sequence range, SHA-256 and size."""

    object_key: str
    first_sequence: int
    last_sequence: int
    sha256: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_id: bytes
    checkpoint_number: int
    previous_checkpoint_sha256: bytes
    last_sequence: int
    head_sha256: bytes
    time_unix_nano: int
    key_id: bytes
    segments: tuple[SegmentRef, ...]
    final: bool = False  # version 2: stored at a clean shutdown
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class DecodedCheckpoint:
    checkpoint: Checkpoint
    body: bytes
    signature: bytes
    appended: int

    @property
    def sha256(self) -> bytes:
        return checkpoint_hash(self.body)

    def is_signed_by(self, key: PublicKey) -> bool:
        return key.is_valid_signature(self.signature, CHECKPOINT_SIGNATURE_PREFIX + self.body)


def checkpoint_hash(body: bytes) -> bytes:
    """The hash the next checkpoint names as ``previous_checkpoint_sha256``."""
    return hashlib.sha256(CHECKPOINT_HASH_PREFIX + body).digest()


def encode_checkpoint_body(checkpoint: Checkpoint) -> bytes:
    if checkpoint.final and checkpoint.format_version < 2:
        raise ValueError("a final checkpoint needs format version 2")
    message = archive_pb2.CheckpointBody(
        format_version=checkpoint.format_version,
        chain_id=checkpoint.chain_id,
        checkpoint_number=checkpoint.checkpoint_number,
        previous_checkpoint_sha256=checkpoint.previous_checkpoint_sha256,
        last_sequence=checkpoint.last_sequence,
        head_sha256=checkpoint.head_sha256,
        time_unix_nano=checkpoint.time_unix_nano,
        key_id=checkpoint.key_id,
        segments=[
            archive_pb2.SegmentDigest(
                object_key=s.object_key,
                first_sequence=s.first_sequence,
                last_sequence=s.last_sequence,
                sha256=s.sha256,
                size=s.size,
            )
            for s in checkpoint.segments
        ],
        final=checkpoint.final,
    )
    return message.SerializeToString(deterministic=True)


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> tuple[bytes, bytes]:
    """The framed checkpoint object and its body's checkpoint hash."""
    body = encode_checkpoint_body(checkpoint)
    signature = signer.sign(CHECKPOINT_SIGNATURE_PREFIX + body)
    signed = archive_pb2.SignedCheckpoint(body=body, signature=signature).SerializeToString(deterministic=True)
    return frame(CHECKPOINT_MAGIC, signed), checkpoint_hash(body)


def decode_checkpoint(data: bytes) -> DecodedCheckpoint:
    """Parse a checkpoint object (signature not checked: see ``DecodedCheckpoint.is_signed_by``).

    Raises:
        MalformedObjectError: not a checkpoint object of format version 1.
    """
    unframed = unframe(CHECKPOINT_MAGIC, data)
    try:
        signed = archive_pb2.SignedCheckpoint.FromString(unframed.body)
    except DecodeError as exc:
        raise MalformedObjectError(f"checkpoint does not parse: {exc}") from exc
    # Count the segment digests before the protobuf runtime parses them all (a hostile body of
    # millions of empty digests would cost hundreds of MB): FORMAT.md 4.1.
    digests = 0
    for number, _value in wire_fields(memoryview(signed.body)):
        if number == 9:
            digests += 1
            if digests > MAX_SEGMENTS_PER_CHECKPOINT:
                raise MalformedObjectError(
                    f"checkpoint lists more than {MAX_SEGMENTS_PER_CHECKPOINT} segments (FORMAT.md 4.1)"
                )
    try:
        body = archive_pb2.CheckpointBody.FromString(signed.body)
    except DecodeError as exc:
        raise MalformedObjectError(f"checkpoint does not parse: {exc}") from exc
    if body.format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise MalformedObjectError(f"checkpoint format version {body.format_version} is not supported")
    checkpoint = Checkpoint(
        chain_id=body.chain_id,
        checkpoint_number=body.checkpoint_number,
        previous_checkpoint_sha256=body.previous_checkpoint_sha256,
        last_sequence=body.last_sequence,
        head_sha256=body.head_sha256,
        time_unix_nano=body.time_unix_nano,
        key_id=body.key_id,
        segments=tuple(
            SegmentRef(s.object_key, s.first_sequence, s.last_sequence, s.sha256, s.size) for s in body.segments
        ),
        # A version 1 body cannot carry field 10; one that does was not written by a version 1 writer.
        final=body.final,
        format_version=body.format_version,
    )
    return DecodedCheckpoint(
        checkpoint=checkpoint, body=signed.body, signature=signed.signature, appended=unframed.appended
    )
