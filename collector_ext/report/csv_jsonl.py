"""CSV and JSONL renderings of a period report, streamed row by row.

CSV: a preamble of ``#`` lines (verdict, period, filters, per-chain completeness bounds, findings)
above one header row and the rows, RFC 4180 quoting, UTF-8. A cell that a spreadsheet would read as
a formula (starting with = + - @, a tab or a carriage return) is prefixed with a single quote, as
OWASP advises against CSV injection; no other change is made to any value.

JSONL: the first line is the report header as one object (``"type": "report"``), then one object per
row (``"type": "row"``), with exact values.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from collector_ext.report.model import PeriodReport, ReportRow
from collector_ext.verify.findings import Severity
from collector_ext.verify.render import finding_as_json

COLUMNS = (
    "time",
    "service",
    "event_name",
    "severity",
    "user",
    "gen_ai_model",
    "gen_ai_operation",
    "gen_ai_input_tokens",
    "gen_ai_output_tokens",
    "body",
    "trace_id",
    "chain_id",
    "sequence",
    "entry_hash",
    "sealed_time",
    "sender",
    "status",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_STAMPS: dict[int, str] = {}


def iso(unix_nano: int | None) -> str:
    """UTC ISO 8601 with nanoseconds, e.g. 2026-01-31T12:00:00.123456789Z."""
    if unix_nano is None:
        return ""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    stamp = _STAMPS.get(seconds)
    if stamp is None:
        # Rows come in seal order: consecutive ones share their second, so a small cache does.
        if len(_STAMPS) > 4096:
            _STAMPS.clear()
        stamp = _STAMPS[seconds] = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def row_cells(row: ReportRow) -> list[str]:
    return [
        iso(row.time_unix_nano),
        row.service,
        row.event_name,
        row.severity,
        row.user,
        row.model,
        row.operation,
        "" if row.input_tokens is None else str(row.input_tokens),
        "" if row.output_tokens is None else str(row.output_tokens),
        row.body,
        row.trace_id,
        row.chain_id,
        str(row.sequence),
        row.entry_hash,
        iso(row.sealed_unix_nano),
        row.sender,
        row.status,
    ]


def header_document(report: PeriodReport) -> dict[str, Any]:
    """The report's header as plain data (also the JSONL first line)."""
    problems = [f for f in report.findings if f.severity is not Severity.INFO]
    return {
        "type": "report",
        "verdict": "VERIFIED" if report.verified else "NOT VERIFIED",
        "archive": report.archive,
        "since": iso(report.since_unix_nano),
        "until": iso(report.until_unix_nano),
        "late_seconds": report.late_seconds,
        "filters": list(report.filters),
        "records_read": report.records_read,
        "signatures_checked": report.signatures_checked,
        "body_limit": report.body_limit,
        "complete": all(c.complete for c in report.chains),
        "chains": [
            {
                **asdict(chain),
                "before": asdict(chain.before) if chain.before is not None else None,
                "after": asdict(chain.after) if chain.after is not None else None,
            }
            for chain in report.chains
        ],
        "findings": [finding_as_json(f) for f in problems],
        "summary": {
            **{k: v for k, v in asdict(report.summary).items() if k not in ("model_usage", "uses")},
            "model_usage": {m: asdict(u) for m, u in report.summary.model_usage.items()},
            "uses": [asdict(u) for u in report.summary.uses],
        },
    }


def render_jsonl(report: PeriodReport, rows: Iterable[ReportRow]) -> Iterator[str]:
    yield json.dumps(header_document(report), ensure_ascii=False, sort_keys=True) + "\n"
    for row in rows:
        yield json.dumps({"type": "row", **asdict(row)}, ensure_ascii=False, sort_keys=True) + "\n"


def _preamble(report: PeriodReport) -> Iterator[str]:
    verdict = "VERIFIED" if report.verified else "NOT VERIFIED: tampering or loss found (see the findings below)"
    yield f"verdict: {verdict}"
    yield (
        f"period: [{iso(report.since_unix_nano)}, {iso(report.until_unix_nano)}) by event time; late allowance "
        f"{report.late_seconds:g} s; filters: {', '.join(report.filters) or 'none'}"
    )
    yield f"archive: {report.archive}; records read and verified: {report.records_read}"
    complete = all(c.complete for c in report.chains)
    yield f"complete: {'yes' if complete else 'NO'} ({len(report.chains)} chains)"
    for chain in report.chains:
        before = (
            f"seq {chain.before.sequence} sealed {iso(chain.before.sealed_unix_nano)}" if chain.before else "genesis"
        )
        after = f"seq {chain.after.sequence} sealed {iso(chain.after.sealed_unix_nano)}" if chain.after else "none yet"
        yield (
            f"chain {chain.chain_id}: {chain.rows} rows; bounds: after {before}, before {after}; "
            f"complete: {'yes' if chain.complete else 'NO'} ({chain.reason})"
        )
    for finding in report.findings:
        if finding.severity is not Severity.INFO:
            yield f"finding: {finding.severity.value} {finding.kind.value} {finding.location()}: {finding.message}"


def render_csv(report: PeriodReport, rows: Iterable[ReportRow]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    # The preamble's lines are one cell each, so a CSV reader keeps them intact (commas, quotes).
    for line in _preamble(report):
        writer.writerow([neutralise("# " + line)])
    writer.writerow(COLUMNS)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([neutralise(cell) for cell in row_cells(row)])
        yield buffer.getvalue()
