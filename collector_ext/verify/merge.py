"""One verdict from the reports of ``verify --shard I/N`` (``verify --merge REPORTS...``).

The reports must make one audit: the same archive, shard count, settings and pinned keys, the same
list of chains, every shard 0..N-1 exactly once and every chain checked by exactly one of them. Anything
else (a missing shard, a shard given twice, a report of another archive or run with other settings)
is an error that names the file, never a verdict over part of an archive.

The merged report is assembled in a single run's order (objects outside any chain, then each chain by
id) and ends with ``verify.run.relate_findings``, the step a single run ends with, so a merge of shards
and a single run give the same findings, totals and exit code.

This module works on decoded reports; reading the files is the command line's job.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector_ext.verify.findings import Finding, VerificationReport
from collector_ext.verify.run import build_report, relate_findings
from collector_ext.verify.shard import ShardReport, ShardReportError


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
    parts = sorted((part for _, report in reports for part in report.chains), key=lambda part: part.summary.chain_id)
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
