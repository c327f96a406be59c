"""Object framing: an 8-byte magic, an 8-byte big-endian body length, the body, nothing after it.

Framing makes bytes appended to an object visible (a protobuf body alone would silently absorb
them as extra fields) and tells a segment from a checkpoint before any parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector_ext.errors import MalformedObjectError

SEGMENT_MAGIC = b"CXSEG\x00v1"
CHECKPOINT_MAGIC = b"CXCKP\x00v1"
FRAME_PREFIX_SIZE = 16


@dataclass(frozen=True, slots=True)
class Unframed:
    body: bytes
    framed_size: int  # bytes covered by the frame: 16 + body length
    appended: int  # bytes after the frame (0 in an untouched object)


def frame(magic: bytes, body: bytes) -> bytes:
    return magic + len(body).to_bytes(8, "big") + body


def unframed_extent(magic: bytes, data: bytes) -> tuple[int, int]:
    """(framed size, bytes appended after the frame) of an object, without copying its body.

    Raises:
        MalformedObjectError: wrong magic, or the object is shorter than its frame says.
    """
    if len(data) < FRAME_PREFIX_SIZE or data[:8] != magic:
        raise MalformedObjectError(f"does not start with the {magic!r} magic")
    length = int.from_bytes(data[8:16], "big")
    end = FRAME_PREFIX_SIZE + length
    if end > len(data):
        raise MalformedObjectError(f"frame says {length} body bytes but only {len(data) - FRAME_PREFIX_SIZE} follow")
    return end, len(data) - end


def unframe(magic: bytes, data: bytes) -> Unframed:
    """Split an object into its body and whatever was appended after the frame.

    Raises:
        MalformedObjectError: wrong magic, or the object is shorter than its frame says.
    """
    end, appended = unframed_extent(magic, data)
    return Unframed(body=data[FRAME_PREFIX_SIZE:end], framed_size=end, appended=appended)


# The largest objects a writer produces (proto/FORMAT.md 4.1); a verifier reports a larger object
# without reading it. The limits keep the verifier's memory bounded: it holds an object, its parse
# and its records at once. The writer closes a segment before it would pass the limit and refuses a
# record whose entry alone would not fit (MAX_ENTRY_BYTES).
MAX_SEGMENT_OBJECT_BYTES = 64 * 1024 * 1024
MAX_SEGMENT_RECORDS = 262_144
MAX_CHECKPOINT_OBJECT_BYTES = 4 * 1024 * 1024
MAX_SEGMENTS_PER_CHECKPOINT = 10_000
MAX_ENTRY_BYTES = 16 * 1024 * 1024
