"""One verdict from the reports of ``verify --shard I/N`` (``verify --merge REPORTS...``).

The reports must make one audit: the same archive, shard count, way of splitting, settings and pinned
keys, the same list of chains, every shard 0..N-1 exactly once and every chain (by chain) or every
range of every chain (by range) checked by exactly one of them. Anything else (a missing shard or
range, a shard given twice, a report of another archive or run with other settings, ranges planned
from another listing, ranges that leave a segment out or take one twice) is an error that names the
file, never a verdict over part of an archive.

By range, each seam is proven, not assumed: the range after a seam says what it resumed from (the
seam checkpoint's number, hash, last sequence number, head and key), the range before says what its
walk reached there, and the two must be equal; where they are not, the merge reports a
``checkpoint-mismatch`` at the seam (the walk up to the seam does not end where the checkpoint the
next range trusted says it does). The ranges' summaries and findings are then joined in a single
run's order (a chain's note findings, then its witnesses', then its walk's).

The merged report is assembled in a single run's order (objects outside any chain, then each chain by
id) and ends with ``verify.run.relate_findings``, the step a single run ends with, so a merge of shards
and a single run give the same findings, totals and exit code.

This module works on decoded reports; reading the files is the command line's job.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from collector_ext.verify.findings import (
    ChainSummary,
    Finding,
    FindingKind,
    FoldedFindings,
    Severity,
    VerificationReport,
)
from collector_ext.verify.run import build_report, relate_findings
from collector_ext.verify.shard import ChainPart, RangePart, SeamState, ShardReport, ShardReportError


def merge_shard_reports(reports: Sequence[tuple[str, ShardReport]]) -> VerificationReport:
    """Merge ``(file name, report)`` pairs into the report a single run would have given.

    Raises:
        ShardReportError: the reports do not make one whole audit (names the file at fault).
    """
    if not reports:
        raise ShardReportError("--merge", "no shard reports given")
    first_name, first = reports[0]
    by_index: dict[int, str] = {}
    owner: dict[str, str] = {}
    for name, report in reports:
        where = f"--merge {name}"
        if report.archive != first.archive:
            raise ShardReportError(where, f"is a report of {report.archive}, not of {first.archive} ({first_name})")
        if report.shard.count != first.shard.count:
            raise ShardReportError(
                where,
                f"is shard {report.shard.index}/{report.shard.count}; "
                f"{first_name} is one of {first.shard.count} shards",
            )
        if report.shard.by != first.shard.by:
            raise ShardReportError(
                where, f"was split by {report.shard.by}, {first_name} by {first.shard.by}: run every shard alike"
            )
        if report.settings != first.settings:
            raise ShardReportError(
                where, f"was verified with other settings or pinned keys than {first_name}: run every shard alike"
            )
        if report.chains_listed != first.chains_listed:
            raise ShardReportError(
                where,
                f"saw {len(report.chains_listed)} chains in the archive where {first_name} saw "
                f"{len(first.chains_listed)} (the archive changed between the shards' listings): run the shards again",
            )
        if report.shard.index in by_index:
            raise ShardReportError(
                where, f"is shard {report.shard.index}/{report.shard.count} again (also {by_index[report.shard.index]})"
            )
        by_index[report.shard.index] = name
        if report.shard.by == "range":
            continue
        expected = set(report.shard.chains_of(report.chains_listed))
        checked = [part.summary.chain_id for part in report.chains]
        if set(checked) != expected or len(checked) != len(expected):
            raise ShardReportError(
                where, f"does not hold the chains shard {report.shard.index}/{report.shard.count} checks"
            )
        for chain_id in checked:
            if chain_id in owner:
                raise ShardReportError(where, f"checked chain {chain_id} too, as did {owner[chain_id]}")
            owner[chain_id] = name
    missing = sorted(set(range(first.shard.count)) - set(by_index))
    if missing:
        shown = ", ".join(f"{index}/{first.shard.count}" for index in missing)
        raise ShardReportError(
            "--merge", f"shard report(s) {shown} missing (given: {', '.join(n for n, _ in reports)})"
        )
    if first.shard.by == "range":
        parts = _join_ranges(reports, by_index)
    else:
        parts = sorted(
            (part for _, report in reports for part in report.chains), key=lambda part: part.summary.chain_id
        )
    shard_zero = next(report for _, report in reports if report.shard.index == 0)
    findings: list[Finding] = list(shard_zero.archive_findings)
    for part in parts:
        findings += part.findings
    summaries = [part.summary for part in parts]
    settings = first.settings
    now = max(report.now_unix_nano for _, report in reports)
    findings = relate_findings(summaries, findings, settings.archive_id, settings.stale_after_seconds, now)
    return build_report(
        findings,
        summaries,
        sum(report.objects_read for _, report in reports),
        sum(report.records_checked for _, report in reports),
        sum(report.signatures_checked for _, report in reports),
        settings.pinned_key_ids,
    )


def _join_ranges(reports: Sequence[tuple[str, ShardReport]], by_index: dict[int, str]) -> list[ChainPart]:
    """Every chain's ranges, checked to cover it exactly once, joined into one part per chain."""
    first = reports[0][1]
    count = first.shard.count
    ranks = {chain_id: rank for rank, chain_id in enumerate(first.chains_listed)}
    ranges: dict[str, dict[int, tuple[str, ChainPart, RangePart]]] = {chain_id: {} for chain_id in ranks}
    for name, report in reports:
        where = f"--merge {name}"
        for part in report.chains:
            chain_id = part.summary.chain_id
            segment_range = part.range
            if segment_range is None or chain_id not in ranks:
                raise ShardReportError(where, f"holds chain {chain_id} not as a range of its listed chains")
            owner = (segment_range.part + ranks[chain_id]) % count
            if owner != report.shard.index:
                raise ShardReportError(
                    where,
                    f"holds range {segment_range.part} of chain {chain_id}, which is shard {owner}/{count}'s to check",
                )
            held = ranges[chain_id]
            if segment_range.part in held:
                raise ShardReportError(
                    where,
                    f"checked range {segment_range.part} of chain {chain_id} too, as did {held[segment_range.part][0]}",
                )
            if held:
                other_name, _, other = next(iter(held.values()))
                if (other.parts, other.listing_sha256, other.segments_listed) != (
                    segment_range.parts,
                    segment_range.listing_sha256,
                    segment_range.segments_listed,
                ):
                    raise ShardReportError(
                        where,
                        f"cut chain {chain_id} from another listing of it than {other_name} did (the archive changed "
                        "between the shards' listings): run the shards again",
                    )
            held[segment_range.part] = (name, part, segment_range)
    joined = []
    for chain_id, held in ranges.items():
        expected = next(iter(held.values()))[2].parts if held else 1
        for part_number in range(expected):
            if part_number not in held:
                owner = (part_number + ranks[chain_id]) % count
                raise ShardReportError(
                    f"--merge {by_index[owner]}", f"does not hold range {part_number} of chain {chain_id}, its to check"
                )
        joined.append(_join_chain(chain_id, [held[n] for n in range(expected)]))
    return joined


def _join_chain(chain_id: str, held: list[tuple[str, ChainPart, RangePart]]) -> ChainPart:
    tree: list[Finding] = []
    evidence: list[Finding] = []
    walk: list[Finding] = []
    previous: tuple[str, ChainPart, RangePart] | None = None
    for name, part, segment_range in held:
        where = f"--merge {name}"
        if previous is None:
            if segment_range.first_segment != 0 or segment_range.start_checkpoint_key:
                raise ShardReportError(
                    where, f"range 0 of chain {chain_id} does not start at the chain's first segment"
                )
        else:
            before = previous[2]
            if segment_range.first_segment != before.end_segment:
                raise ShardReportError(
                    where,
                    f"range {segment_range.part} of chain {chain_id} starts at listed segment "
                    f"{segment_range.first_segment}, but range {before.part} ({previous[0]}) ends before segment "
                    f"{before.end_segment}: the ranges leave a gap or overlap",
                )
            if (
                not segment_range.start_checkpoint_key
                or segment_range.start_checkpoint_key != before.end_checkpoint_key
            ):
                raise ShardReportError(
                    where,
                    f"range {segment_range.part} of chain {chain_id} resumes after "
                    f"{segment_range.start_checkpoint_key!r}, but range {before.part} ({previous[0]}) ends with "
                    f"{before.end_checkpoint_key!r}",
                )
            own = [f for f in previous[1].findings if f.severity in (Severity.TAMPERING, Severity.LOSS)]
            if not own:
                # Where the range before reports tampering or loss itself, that is why its walk does not
                # end where the seam checkpoint says (as a single run reports it), and the verdict says so.
                walk += _seam_findings(chain_id, before, segment_range)
        tree += segment_range.tree_findings
        evidence += segment_range.evidence_findings
        walk += part.findings
        previous = (name, part, segment_range)
    last = held[-1][2]
    if last.end_segment != last.segments_listed:
        raise ShardReportError(
            f"--merge {held[-1][0]}",
            f"the last range of chain {chain_id} ends before listed segment {last.end_segment} of "
            f"{last.segments_listed}",
        )
    return ChainPart(
        _join_summaries([part.summary for _, part, _ in held]),
        tuple(tree + evidence + _refold(_join_unpinned(walk))),
    )


def _refold(findings: list[Finding]) -> list[Finding]:
    """A walk lists a chain's first MAX_LISTED_FINDINGS findings and counts the rest per kind and
    severity (``FoldedFindings``); each range did so for its own, so the joined walk is folded again
    past the same limit. (A range's own summary of its folded findings is counted whole; its example
    is then that summary, not the first finding it stands for.)"""
    listed: list[Finding] = []
    folded = FoldedFindings()
    for finding in findings:
        if finding.count == 1 and len(listed) < folded.limit:
            listed.append(finding)
        else:
            folded.add(finding)
    return listed + folded.summaries()


_UNPINNED = re.compile(
    r"(\d+) record\(s\) and (\d+) checkpoint\(s\) (are signed with key id [0-9a-f]+, which .*)", re.S
)


def _join_unpinned(findings: list[Finding]) -> list[Finding]:
    """A walk reports each unpinned key once per chain, with counts; each range reported it for its
    own objects, so the first range's finding takes the others' counts and sequence numbers."""
    joined: list[Finding] = []
    first_of: dict[str, int] = {}
    for finding in findings:
        match = _UNPINNED.fullmatch(finding.message) if finding.kind is FindingKind.UNKNOWN_KEY else None
        if match is None:
            joined.append(finding)
            continue
        rest = match.group(3)
        if rest not in first_of:
            first_of[rest] = len(joined)
            joined.append(finding)
            continue
        earlier = joined[first_of[rest]]
        counts = _UNPINNED.fullmatch(earlier.message)
        assert counts is not None
        records = int(counts.group(1)) + int(match.group(1))
        checkpoints = int(counts.group(2)) + int(match.group(2))
        firsts = [s for s in (earlier.first_sequence, finding.first_sequence) if s is not None]
        lasts = [s for s in (earlier.last_sequence, finding.last_sequence) if s is not None]
        joined[first_of[rest]] = dataclasses.replace(
            earlier,
            message=f"{records} record(s) and {checkpoints} checkpoint(s) {rest}",
            first_sequence=min(firsts) if firsts else None,
            last_sequence=max(lasts) if lasts else None,
        )
    return joined


_SEAM_FIELDS = ("checkpoint_number", "checkpoint_sha256", "last_sequence", "head_sha256", "key_id", "run_public_key")


def _seam_findings(chain_id: str, before: RangePart, after: RangePart) -> list[Finding]:
    """The seam between two ranges holds when the walk up to it reached the state the range after it
    resumed from (FORMAT.md 13.9: a resumed walk trusts its checkpoint's head and key)."""
    start = after.start
    if start is None:
        return []  # the range after walked from the genesis: no seam was assumed
    reached: SeamState | None = before.end
    differences = []
    if before.walked_to != start.last_sequence or before.walked_head != start.head_sha256:
        walked = "nothing" if before.walked_to is None else f"seq {before.walked_to} (entry hash {before.walked_head})"
        differences.append(f"the walk up to it reached {walked}")
    if reached is None:
        differences.append("the walk did not pass a valid checkpoint there")
    else:
        for name in _SEAM_FIELDS:
            if getattr(reached, name) != getattr(start, name):
                differences.append(f"its {name.replace('_', ' ')} is {getattr(reached, name)!r} by the walk")
    if not differences:
        return []
    return [
        Finding(
            FindingKind.CHECKPOINT_MISMATCH,
            Severity.TAMPERING,
            f"checkpoint {start.checkpoint_number} (seq {start.last_sequence}, head {start.head_sha256}, key id "
            f"{start.key_id}), which the check of the records after it trusted, does not hold: "
            + "; ".join(differences),
            chain_id,
            start.last_sequence,
            None,
            after.start_checkpoint_key,
        )
    ]


def _join_summaries(summaries: Sequence[ChainSummary]) -> ChainSummary:
    """One chain's summary from its ranges': what the genesis said from the first, where the chain
    ends from the last, counts added up."""
    first, last = summaries[0], summaries[-1]
    return dataclasses.replace(
        last,
        records=sum(s.records for s in summaries),
        segments=sum(s.segments for s in summaries),
        checkpoints=sum(s.checkpoints for s in summaries),
        restart_marks=sum(s.restart_marks for s in summaries),
        key_ids=tuple(sorted({k for s in summaries for k in s.key_ids})),
        supersedes=first.supersedes,
        format_version=first.format_version or last.format_version,
        archive_id=first.archive_id,
        writer_id=first.writer_id,
        newest_segment_key=max(s.newest_segment_key for s in summaries),
        resumed_from=None,
    )
