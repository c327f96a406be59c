"""What a starting sidecar reads back from its archive: where its chain's checkpoints stand, and
which chain it supersedes when its local state is gone.

Only the writer's own objects are trusted here, and only after their signature checks against the
writer's key: an object that does not verify is skipped as if absent (the verifier reports it).
Listing is cheap on S3 only by prefix and ``StartAfter``; the newest checkpoint of a chain is found
by a binary search over checkpoint numbers (about 2 x log2(n) one-key listings), never by listing a
chain's whole history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import MalformedObjectError
from collector_ext.pb import archive_pb2
from collector_ext.seal.checkpoint import DecodedCheckpoint, decode_checkpoint
from collector_ext.seal.entry import (
    CHAIN_ID_SIZE,
    ENTRY_HEADER_SIZE,
    KEY_ID_SLICE,
    EntryKind,
    decode_entry_header,
    entry_hash,
    entry_payload,
    record_signature_message,
    run_key_message,
)
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import parse_segment_key
from collector_ext.seal.segment import decode_segment

log = logging.getLogger(__name__)

# How many of a chain's newest segments are searched for the certification of the run key that signed
# its last record (a lost spool in run_key mode).
RUN_KEY_SEARCH_SEGMENTS = 256

DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class ChainEnd:
    """How far a chain reached in the archive."""

    chain_id: bytes
    last_sequence: int  # newest entry found in the archive
    covered_until: int  # newest sequence a checkpoint vouches for, -1 if none
    head_sha256: bytes = b""  # entry hash of last_sequence
    checkpoint_sha256: bytes = b""  # checkpoint hash of the newest checkpoint (empty: none)
    checkpoint_number: int = 0


async def _first_key(store: ArchiveStore, under: str, start_after: str = "") -> str | None:
    async for key in store.list_keys(under, start_after):
        return key
    return None


async def newest_checkpoint(
    store: ArchiveStore, chain_id: bytes, keys: Sequence[PublicKey]
) -> DecodedCheckpoint | None:
    """The chain's checkpoint with the highest number, if one exists and is signed by one of ``keys``
    (the writer's key and the keys it retired: a chain may have rotated).

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or read now.
    """
    under = f"{chain_id.hex()}/checkpoints/"

    async def exists_from(number: int) -> str | None:
        # Keys sort by their 12-digit number: the first key after "<number>" has a number >= it.
        return await _first_key(store, under, f"{under}{number:012d}")

    if await exists_from(0) is None:
        return None
    low, high = 0, 1
    while await exists_from(high) is not None:
        low, high = high, high * 2
    while high - low > 1:  # a checkpoint numbered >= low exists, none >= high
        middle = (low + high) // 2
        if await exists_from(middle) is not None:
            low = middle
        else:
            high = middle
    found = await exists_from(low)
    assert found is not None
    checkpoint = decode_checkpoint(await store.get(found))
    key = next((k for k in keys if k.key_id == checkpoint.checkpoint.key_id), None)
    if key is None or not checkpoint.is_signed_by(key) or checkpoint.checkpoint.chain_id != chain_id:
        raise MalformedObjectError(
            f"{found} is not a checkpoint of chain {chain_id.hex()} signed by this writer's keys"
        )
    return checkpoint


async def _genesis(
    store: ArchiveStore, chain_hex: str, keys: Sequence[PublicKey]
) -> tuple[archive_pb2.GenesisPayload, int, PublicKey] | None:
    """A chain's genesis payload, sealing time and key, if its first segment starts with a genesis
    signed by one of ``keys``."""
    first = await _first_key(store, f"{chain_hex}/segments/")
    if first is None or (parsed := parse_segment_key(first)) is None or parsed.first_sequence != 0:
        return None
    try:
        segment = decode_segment(await store.get(first))
        record = segment.records[0]
        header = decode_entry_header(record.entry)
        key = next((k for k in keys if k.key_id == record.entry[KEY_ID_SLICE]), None)
        if header.kind != EntryKind.GENESIS or key is None:
            return None
        if not key.is_valid_signature(record.signature, record_signature_message(entry_hash(record.entry))):
            return None
        return archive_pb2.GenesisPayload.FromString(entry_payload(record.entry)), header.sealed_unix_nano, key
    except (MalformedObjectError, DecodeError, IndexError):
        return None


async def find_predecessor(store: ArchiveStore, writer_id: str, keys: Sequence[PublicKey]) -> ChainEnd | None:
    """The newest chain in the archive begun by ``writer_id`` with one of ``keys`` (the signing key and
    the keys it retired), and how far it reached.

    Newest means the latest genesis time. Chains of other writers sharing the archive prefix are
    never chosen: their writers may still be running.
    """
    started = time.monotonic()
    best: tuple[int, bytes, PublicKey] | None = None
    for chain_hex in await store.list_children(""):
        if len(chain_hex) != 2 * CHAIN_ID_SIZE:
            continue
        found = await _genesis(store, chain_hex, keys)
        if found is None or found[0].writer_id != writer_id:
            continue
        sealed = found[1]
        if best is None or sealed > best[0]:
            best = (sealed, bytes.fromhex(chain_hex), found[2])
    if best is None:
        return None
    chain_id = best[1]
    checkpoint = await newest_checkpoint(store, chain_id, keys)
    covered = checkpoint.checkpoint.last_sequence if checkpoint is not None else -1
    last, head = await _last_archived_entry(store, chain_id, checkpoint, keys)
    log.info(
        "found the chain this writer last wrote",
        extra={
            "chain_id": chain_id.hex(),
            "last_sequence": last,
            "covered_until": covered,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    if checkpoint is not None and covered >= last:
        last, head = covered, checkpoint.checkpoint.head_sha256
    return ChainEnd(
        chain_id,
        last,
        covered,
        head_sha256=head,
        checkpoint_sha256=checkpoint.sha256 if checkpoint is not None else b"",
        checkpoint_number=checkpoint.checkpoint.checkpoint_number if checkpoint is not None else 0,
    )


async def _certified_run_key(
    store: ArchiveStore, chain_id: bytes, key_id: bytes, segments: Sequence[tuple[int, str]], keys: Sequence[PublicKey]
) -> PublicKey | None:
    """The run key ``key_id`` if a run key entry signed by one of ``keys`` certifies it (FORMAT.md
    7.7), looked for in ``segments`` (newest first, at most RUN_KEY_SEARCH_SEGMENTS of them): the last
    records of a chain in run_key mode are signed by its run key, not by the writer's own key."""
    for _first, object_key in segments[:RUN_KEY_SEARCH_SEGMENTS]:
        try:
            records = decode_segment(await store.get(object_key)).records
        except MalformedObjectError:
            return None
        for record in reversed(records):
            if len(record.entry) < ENTRY_HEADER_SIZE or record.entry[2] != EntryKind.RUN_KEY:
                continue
            header = decode_entry_header(record.entry)
            certifier = next((k for k in keys if k.key_id == header.key_id), None)
            if certifier is None or not certifier.is_valid_signature(
                record.signature, record_signature_message(entry_hash(record.entry))
            ):
                continue
            try:
                payload = archive_pb2.RunKeyPayload.FromString(entry_payload(record.entry))
                run_key = PublicKey.from_raw(payload.run_public_key)
            except (DecodeError, ValueError):
                continue
            message = run_key_message(chain_id, header.sequence, header.key_id)
            if run_key.key_id == key_id and run_key.is_valid_signature(payload.run_key_signature, message):
                return run_key
    return None


async def _last_archived_entry(
    store: ArchiveStore, chain_id: bytes, checkpoint: DecodedCheckpoint | None, keys: Sequence[PublicKey]
) -> tuple[int, bytes]:
    """The highest sequence in any segment of the chain, and that entry's hash (taken from the
    segment, whose record signature must verify under ``key``). Segment keys sort by day, then
    sequence; a segment after the newest checkpoint was created at most a day before that
    checkpoint's time, so the listing starts there rather than at the chain's beginning."""
    under = f"{chain_id.hex()}/segments/"
    start_after = ""
    if checkpoint is not None:
        day = time.strftime("%Y/%m/%d", time.gmtime((checkpoint.checkpoint.time_unix_nano - DAY_NS) // 1_000_000_000))
        start_after = f"{under}{day}"
    last, newest = -1, ""
    listed: list[tuple[int, str]] = []
    async for object_key in store.list_keys(under, start_after):
        parsed = parse_segment_key(object_key)
        if parsed is not None:
            listed.append((parsed.first_sequence, object_key))
            if parsed.last_sequence > last:
                last, newest = parsed.last_sequence, object_key
    if not newest:
        return last, b""
    try:
        record = decode_segment(await store.get(newest)).records[-1]
        header = decode_entry_header(record.entry)
        digest = entry_hash(record.entry)
        key = next((k for k in keys if k.key_id == header.key_id), None)
        if key is None:
            key = await _certified_run_key(store, chain_id, header.key_id, sorted(listed, reverse=True), keys)
        if (
            header.sequence == last
            and key is not None
            and key.is_valid_signature(record.signature, record_signature_message(digest))
        ):
            return last, digest
    except (MalformedObjectError, DecodeError, IndexError):
        pass
    log.warning("the newest segment of the superseded chain does not verify", extra={"object_key": newest})
    return last, b""
