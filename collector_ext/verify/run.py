"""Drives the pure checker over a real archive: lists, reads in parallel, checks, reports progress.

Objects are fetched a few at a time ahead of the one being checked, and checking runs on a worker
thread, so reading and hashing overlap. Record signatures that must be checked are spread over a
thread pool (pyca/cryptography releases the GIL while verifying). Once every chain is checked,
``verify.supersede`` relates chains that replaced one another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import CheckpointKey, SegmentKey, parse_checkpoint_key, parse_segment_key
from collector_ext.verify.check import ChainChecker, RecordObserver
from collector_ext.verify.findings import Finding, FindingKind, Severity, VerificationReport
from collector_ext.verify.supersede import relate_chains

ProgressCallback = Callable[[int, int], None]  # (objects done, objects in all)


class EmptyArchiveError(ArchiveUnavailableError):
    """No collector-ext object was found where the archive was said to be."""


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    check_all_signatures: bool = False
    read_ahead: int = 8
    signature_threads: int = 0  # 0: one per CPU
    # Report resent log records anywhere in a chain, not only after restart marks (a little work per
    # record; see verify.resends).
    report_resends: bool = False


@dataclass
class _Listing:
    segments: dict[str, list[SegmentKey]]
    checkpoints: dict[str, list[CheckpointKey]]
    unrecognised: list[str]

    @property
    def total(self) -> int:
        return sum(map(len, self.segments.values())) + sum(map(len, self.checkpoints.values()))


async def _list(store: ArchiveStore) -> _Listing:
    listing = _Listing(defaultdict(list), defaultdict(list), [])
    async for key in store.list_keys():
        segment = parse_segment_key(key)
        if segment is not None:
            listing.segments[segment.chain_id_hex].append(segment)
            continue
        checkpoint = parse_checkpoint_key(key)
        if checkpoint is not None:
            listing.checkpoints[checkpoint.chain_id_hex].append(checkpoint)
            continue
        listing.unrecognised.append(key)
    return listing


async def check_archive(
    store: ArchiveStore,
    trusted_keys: Mapping[bytes, PublicKey],
    options: VerifyOptions | None = None,
    progress: ProgressCallback | None = None,
    record_observer: RecordObserver | None = None,
) -> VerificationReport:
    """Check every chain in ``store``; never raises for what it finds, only for what stops it.

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or read.
        EmptyArchiveError: the archive holds no collector-ext objects at all.
    """
    options = options or VerifyOptions()
    listing = await _list(store)
    if listing.total == 0:
        raise EmptyArchiveError(f"no collector-ext objects under {store.description}: check the archive location")
    threads = options.signature_threads or os.cpu_count() or 2
    findings: list[Finding] = [
        Finding(
            FindingKind.UNRECOGNISED_OBJECT,
            Severity.WARNING,
            "object does not belong to the archive layout; it was not checked",
            object_key=key,
        )
        for key in listing.unrecognised
    ]
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, listing.total)

    summaries = []
    records = signatures = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:

        def check_batch(batch: Sequence[tuple[PublicKey, bytes, bytes]]) -> list[bool]:
            if len(batch) < 64:
                return [key.is_valid_signature(signature, message) for key, signature, message in batch]
            size = -(-len(batch) // threads)
            chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
            results = pool.map(
                lambda chunk: [key.is_valid_signature(signature, message) for key, signature, message in chunk],
                chunks,
            )
            return [ok for chunk in results for ok in chunk]

        for chain_id_hex in sorted(set(listing.segments) | set(listing.checkpoints)):
            checker = ChainChecker(
                chain_id_hex,
                trusted_keys,
                check_all_signatures=options.check_all_signatures,
                check_signature_batch=check_batch,
                record_observer=record_observer,
                report_resends=options.report_resends,
            )
            checkpoint_keys = sorted(listing.checkpoints.get(chain_id_hex, []), key=lambda k: k.key)
            checkpoint_data = await asyncio.gather(*(store.get(k.key) for k in checkpoint_keys))
            for _ in checkpoint_keys:
                advance()
            checker.add_checkpoints(zip(checkpoint_keys, checkpoint_data, strict=True))
            segment_keys = sorted(
                listing.segments.get(chain_id_hex, []), key=lambda k: (k.first_sequence, k.last_sequence, k.key)
            )
            await _check_segments(store, checker, segment_keys, options.read_ahead, advance)
            summaries.append(checker.finish())
            findings += checker.findings
            records += checker.records
            signatures += checker.signatures_checked
    # Every chain under the archive root was listed, so a superseded chain that is not among them is
    # not in the archive.
    findings = relate_chains(summaries, findings, all_chains_listed=True)
    counts: dict[str, int] = defaultdict(int)
    for finding in findings:
        counts[finding.severity.value] += 1
    return VerificationReport(
        findings=tuple(findings),
        chains=tuple(summaries),
        objects_read=listing.total,
        records_checked=records,
        signatures_checked=signatures,
        counts=dict(counts),
    )


async def _check_segments(
    store: ArchiveStore,
    checker: ChainChecker,
    keys: list[SegmentKey],
    read_ahead: int,
    advance: Callable[[], None],
) -> None:
    fetches: dict[int, asyncio.Task[bytes]] = {}

    def fetch(index: int) -> None:
        if index < len(keys) and index not in fetches:
            fetches[index] = asyncio.create_task(store.get(keys[index].key))

    try:
        for index, key in enumerate(keys):
            for ahead in range(index, index + read_ahead + 1):
                fetch(ahead)
            data = await fetches.pop(index)
            await asyncio.to_thread(checker.add_segment, key, data)
            advance()
    finally:
        for task in fetches.values():
            task.cancel()


def with_findings(report: VerificationReport, extra: list[Finding]) -> VerificationReport:
    """The report with more findings (e.g. the Loki cross-check's) added, totals updated."""
    counts = dict(report.counts)
    for finding in extra:
        counts[finding.severity.value] = counts.get(finding.severity.value, 0) + 1
    return dataclasses.replace(report, findings=report.findings + tuple(extra), counts=counts)
