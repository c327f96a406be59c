"""Drives the pure checker over a real archive: lists, reads in parallel, checks, reports progress.

Objects are fetched a few at a time ahead of the one being checked. As each arrives, its per-record
work (``verify.precheck``) starts in a worker process (or, for a small archive, a thread), so
downloading, hashing and parsing overlap on every CPU; the checker then accepts a clean segment from
its summary in O(1) and checks anything else record by record. Record signatures that must be checked are spread over a
thread pool (pyca/cryptography releases the GIL while verifying). Once every chain is checked,
``verify.supersede`` relates chains that replaced one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ArchiveUnavailableError
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.layout import CheckpointKey, SegmentKey, parse_checkpoint_key, parse_segment_key
from collector_ext.verify.check import ChainChecker, RecordObserver
from collector_ext.verify.findings import Finding, FindingKind, Severity, VerificationReport
from collector_ext.verify.precheck import SegmentSummary, precheck_segment
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
    # Worker processes for the per-record work of clean segments: 0 one per CPU; used when the
    # archive holds at least ``precheck_min_segments`` segments (starting processes costs a moment).
    prechecks: bool = True  # False: every segment through the per-record check (for comparison)
    precheck_processes: int = 0
    precheck_min_segments: int = 64


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
    segment_count = sum(map(len, listing.segments.values()))
    prechecks: Executor | None = None
    if options.prechecks and segment_count >= options.precheck_min_segments:
        prechecks = ProcessPoolExecutor(
            max_workers=options.precheck_processes or os.cpu_count() or 2,
            mp_context=multiprocessing.get_context("spawn"),
        )
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify"))
        if prechecks is not None:
            stack.enter_context(prechecks)

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
            await _check_segments(
                store, checker, segment_keys, options.read_ahead, advance, prechecks, use_prechecks=options.prechecks
            )
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
    prechecks: Executor | None,
    *,
    use_prechecks: bool,
) -> None:
    loop = asyncio.get_running_loop()
    fetches: dict[int, asyncio.Task[tuple[bytes, SegmentSummary | None]]] = {}

    async def fetch_and_precheck(key: SegmentKey) -> tuple[bytes, SegmentSummary | None]:
        data = await store.get(key.key)
        if not use_prechecks or not checker.uses_prechecks:
            return data, None
        claims = checker.claimed_sequences(key)
        if prechecks is None:
            return data, await asyncio.to_thread(precheck_segment, data, claims)
        return data, await loop.run_in_executor(prechecks, precheck_segment, data, claims)

    def fetch(index: int) -> None:
        if index < len(keys) and index not in fetches:
            fetches[index] = asyncio.create_task(fetch_and_precheck(keys[index]))

    try:
        for index, key in enumerate(keys):
            for ahead in range(index, index + read_ahead + 1):
                fetch(ahead)
            data, summary = await fetches.pop(index)
            await asyncio.to_thread(checker.add_prechecked_segment, key, data, summary)
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
