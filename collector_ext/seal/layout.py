"""Archive key layout (proto/FORMAT.md, "Archive layout").

    <prefix>/<chain id hex>/segments/<YYYY>/<MM>/<DD>/<first seq 20 digits>-<last seq 20 digits>.cxseg
    <prefix>/<chain id hex>/checkpoints/<checkpoint number 12 digits>-<last seq 20 digits>.cxckpt
    <prefix>/<chain id hex>/notes/<checkpoint number 12 digits>-<last seq 20 digits>.note
    <prefix>/<chain id hex>/notes/<number>-<last seq>.note.cosig.<16 hex: SHA-256(witness name)[:8]>
    <prefix>/<chain id hex>/notes/<number>-<last seq>.note.tsr
    <prefix>/<chain id hex>/tile/<level>/<index path>[.p/<width>]

Keys sort by chain, then time, then sequence; the date is the segment's UTC sealing date. Nothing in
the keys is trusted by the verifier: it checks them against the objects' contents. A checkpoint's
signed note (FORMAT.md 16.4) sits in ``notes/`` under the same number and sequence, not among the
checkpoints, so that a search over checkpoint keys never meets one; hash tiles follow C2SP tlog-tiles
with the chain's directory as the log prefix (FORMAT.md 16.5).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

SEGMENT_SUFFIX = ".cxseg"
CHECKPOINT_SUFFIX = ".cxckpt"

# ASCII digits only (``\d`` would take any Unicode digit) and ``\Z``, the very end (``$`` also
# matches before a trailing newline): proto/FORMAT.md 3.
_SEGMENT_RE = re.compile(
    r"(?:^|/)(?P<chain>[0-9a-f]{32})/segments/[0-9]{4}/[0-9]{2}/[0-9]{2}/(?P<first>[0-9]{20})-(?P<last>[0-9]{20})"
    r"\.cxseg\Z"
)
NOTE_SUFFIX = ".note"
TILE_WIDTH = 256
_NOTE_RE = re.compile(r"(?:^|/)(?P<chain>[0-9a-f]{32})/notes/(?P<number>[0-9]{12})-(?P<last>[0-9]{20})\.note\Z")
_TILE_RE = re.compile(
    r"(?:^|/)(?P<chain>[0-9a-f]{32})/tile/(?P<level>[0-9]|[1-5][0-9]|6[0-3])/"
    r"(?P<index>(?:x[0-9]{3}/)*[0-9]{3})(?:\.p/(?P<width>[0-9]{1,3}))?\Z"
)
_CHECKPOINT_RE = re.compile(
    r"(?:^|/)(?P<chain>[0-9a-f]{32})/checkpoints/(?P<number>[0-9]{12})-(?P<last>[0-9]{20})\.cxckpt\Z"
)


def _join(prefix: str, rest: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{rest}" if prefix else rest


def segment_key(prefix: str, chain_id: bytes, first_sequence: int, last_sequence: int, unix_nano: int) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(unix_nano // 1_000_000_000))
    return _join(prefix, f"{chain_id.hex()}/segments/{day}/{first_sequence:020d}-{last_sequence:020d}{SEGMENT_SUFFIX}")


def checkpoint_key(prefix: str, chain_id: bytes, checkpoint_number: int, last_sequence: int) -> str:
    return _join(
        prefix, f"{chain_id.hex()}/checkpoints/{checkpoint_number:012d}-{last_sequence:020d}{CHECKPOINT_SUFFIX}"
    )


def checkpoint_note_key(prefix: str, chain_id: bytes, checkpoint_number: int, last_sequence: int) -> str:
    """Where the C2SP signed note of checkpoint ``checkpoint_number`` is stored (FORMAT.md 16.4)."""
    return _join(prefix, f"{chain_id.hex()}/notes/{checkpoint_number:012d}-{last_sequence:020d}{NOTE_SUFFIX}")


def tile_index_path(index: int) -> str:
    """A tile index as tlog-tiles writes it: 3-digit groups, all but the last prefixed with ``x``."""
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_key(prefix: str, chain_id: bytes, level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The key of hash tile ``index`` at tile ``level``; ``width`` below 256 names a partial tile."""
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"a tile holds 1 to {TILE_WIDTH} hashes, not {width}")
    partial = f".p/{width}" if width < TILE_WIDTH else ""
    return _join(prefix, f"{chain_id.hex()}/tile/{level}/{tile_index_path(index)}{partial}")


@dataclass(frozen=True, slots=True)
class NoteKey:
    key: str
    chain_id_hex: str
    checkpoint_number: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class TileKey:
    key: str
    chain_id_hex: str
    level: int
    index: int
    width: int


def parse_note_key(key: str) -> NoteKey | None:
    match = _NOTE_RE.search(key)
    if match is None:
        return None
    return NoteKey(key, match["chain"], int(match["number"]), int(match["last"]))


# Beside a note, what outside parties said of it (FORMAT.md 19.1): a witness's cosignature lines and
# a time-stamping authority's RFC 3161 reply.
COSIGNATURE_INFIX = ".cosig."
TIMESTAMP_SUFFIX = ".tsr"
_WITNESS_OBJECT_RE = re.compile(
    r"(?:^|/)(?P<chain>[0-9a-f]{32})/notes/(?P<number>[0-9]{12})-(?P<last>[0-9]{20})\.note"
    r"(?:\.cosig\.(?P<witness>[0-9a-f]{16})|(?P<tsr>\.tsr))\Z"
)


def cosignature_key(note_key: str, witness_name: str) -> str:
    """Where witness ``witness_name``'s cosignature lines on the note at ``note_key`` are stored."""
    return f"{note_key}{COSIGNATURE_INFIX}{witness_key_tag(witness_name)}"


def witness_key_tag(witness_name: str) -> str:
    """The 16 hex digits that name a witness in object keys (its name may hold '/' and ':')."""
    return hashlib.sha256(witness_name.encode()).hexdigest()[:16]


def timestamp_key(note_key: str) -> str:
    """Where the RFC 3161 reply over the note at ``note_key`` is stored."""
    return note_key + TIMESTAMP_SUFFIX


@dataclass(frozen=True, slots=True)
class WitnessObjectKey:
    """A cosignature (``witness_tag`` set) or time-stamp reply (``witness_tag`` None) beside a note."""

    key: str
    note_key: str
    chain_id_hex: str
    checkpoint_number: int
    last_sequence: int
    witness_tag: str | None


def parse_witness_object_key(key: str) -> WitnessObjectKey | None:
    match = _WITNESS_OBJECT_RE.search(key)
    if match is None:
        return None
    note_key = key[: key.rindex(NOTE_SUFFIX) + len(NOTE_SUFFIX)]
    return WitnessObjectKey(key, note_key, match["chain"], int(match["number"]), int(match["last"]), match["witness"])


def parse_tile_key(key: str) -> TileKey | None:
    match = _TILE_RE.search(key)
    if match is None:
        return None
    index = int(match["index"].replace("x", "").replace("/", ""))
    width = int(match["width"]) if match["width"] else TILE_WIDTH
    if tile_index_path(index) != match["index"] or (
        match["width"] and (not 1 <= width < TILE_WIDTH or str(width) != match["width"])
    ):
        return None  # only the one spelling tlog-tiles allows (no extra zero groups, no leading zeros)
    return TileKey(key, match["chain"], int(match["level"]), index, width)


@dataclass(frozen=True, slots=True)
class SegmentKey:
    key: str
    chain_id_hex: str
    first_sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    key: str
    chain_id_hex: str
    checkpoint_number: int
    last_sequence: int


def parse_segment_key(key: str) -> SegmentKey | None:
    match = _SEGMENT_RE.search(key)
    if match is None:
        return None
    return SegmentKey(key, match["chain"], int(match["first"]), int(match["last"]))


def parse_checkpoint_key(key: str) -> CheckpointKey | None:
    match = _CHECKPOINT_RE.search(key)
    if match is None:
        return None
    return CheckpointKey(key, match["chain"], int(match["number"]), int(match["last"]))
