"""Archive key layout (proto/FORMAT.md, "Archive layout").

    <prefix>/<chain id hex>/segments/<YYYY>/<MM>/<DD>/<first seq 20 digits>-<last seq 20 digits>.cxseg
    <prefix>/<chain id hex>/checkpoints/<checkpoint number 12 digits>-<last seq 20 digits>.cxckpt

Keys sort by chain, then time, then sequence; the date is the segment's UTC sealing date. Nothing in
the keys is trusted by the verifier: it checks them against the objects' contents.
"""

from __future__ import annotations

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
