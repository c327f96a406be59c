"""Builds a period report over an archive: verifies everything it reads, collects the period's rows
as the verifier walks the chains, bounds each chain in seal order, then writes the report and its
manifest.

Rows go to a temporary file beside the output while the archive is verified (memory stays bounded
however long the period); the report is written once the verdict is known, so its top says whether
what follows was verified, and each row carries its status. Rows are in chain order, then sequence
order (seal order); sort by time in the spreadsheet if needed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from collector_ext import __version__
from collector_ext.deliver.archive import ArchiveStore
from collector_ext.errors import ConfigurationError
from collector_ext.report.csv_jsonl import iso, render_csv, render_jsonl
from collector_ext.report.model import PeriodReport, ReportRow
from collector_ext.report.period import BoundsTracker, Period
from collector_ext.report.rows import event_time, int_attribute, log_record_bytes, read_fields
from collector_ext.report.summaries import SummaryBuilder
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, entry_hash
from collector_ext.seal.keys import PublicKey
from collector_ext.seal.segment import SealedRecord
from collector_ext.verify.findings import Severity, VerificationReport
from collector_ext.verify.keys import Keyring
from collector_ext.verify.run import ProgressCallback, VerifyOptions, check_archive_with_state
from collector_ext.verify.state import VerifierState

ReportFormat = Literal["csv", "jsonl", "html"]
MANIFEST_FORMAT = "collector-ext/report-manifest/v1"


@dataclass(frozen=True)
class ReportOptions:
    period: Period
    format: ReportFormat = "csv"
    body_limit: int = 500
    html_row_cap: int = 5000


@dataclass(frozen=True)
class ReportResult:
    report: PeriodReport
    verification: VerificationReport
    state: VerifierState
    manifest: dict[str, Any]
    warnings: tuple[str, ...] = ()


@dataclass
class _Collector:
    """The record observer: bounds every entry, keeps the rows of the period."""

    options: ReportOptions
    rows_file: Any
    tracker: BoundsTracker
    summary: SummaryBuilder = field(default_factory=SummaryBuilder)
    filter_keys_seen: set[str] = field(default_factory=set)
    rows: int = 0

    def observe_segment(self, records: Sequence[SealedRecord], object_key: str) -> None:
        """A segment's records. Sealing times do not decrease in a chain: a segment sealed wholly
        before or after the period's reach is bounded by one entry, not read record by record."""
        if not records:
            return
        first, last = records[0].entry, records[-1].entry
        period = self.options.period
        if len(first) >= ENTRY_HEADER_SIZE and len(last) >= ENTRY_HEADER_SIZE and first[4:20] == last[4:20]:
            first_sealed = int.from_bytes(first[68:76], "big")
            last_sealed = int.from_bytes(last[68:76], "big")
            wholly_before = last_sealed < period.since_unix_nano - period.late_nanos
            wholly_after = first_sealed >= period.seal_end
            if first_sealed <= last_sealed and (wholly_before or wholly_after):
                edge, edge_sealed = (last, last_sealed) if wholly_before else (first, first_sealed)
                self.tracker.see(edge[4:20], int.from_bytes(edge[20:28], "big"), edge_sealed)
                return
        for record in records:
            self.observe(record.entry)

    def observe(self, entry: bytes) -> None:
        if len(entry) < ENTRY_HEADER_SIZE:
            return
        chain_id = entry[4:20]
        sequence = int.from_bytes(entry[20:28], "big")
        sealed = int.from_bytes(entry[68:76], "big")
        self.tracker.see(chain_id, sequence, sealed)
        period = self.options.period
        if not period.may_hold(sealed):
            return  # sealed too far from the period for any record of it (FORMAT-independent, README)
        record = log_record_bytes(entry)
        if record is None:
            return
        moment = event_time(record)
        if moment is None or not period.contains(moment):
            return
        fields = read_fields(entry, moment)
        if fields is None:
            return
        for item in period.filters:
            if item.value_of(fields) is not None:
                self.filter_keys_seen.add(item.key)
        if not period.selects(fields):
            return
        body = fields.body
        if len(body) > self.options.body_limit:
            body = body[: self.options.body_limit] + f"... [cut: {len(fields.body)} characters]"
        attributes = fields.attributes
        row = ReportRow(
            time_unix_nano=moment,
            service=fields.service,
            event_name=fields.event_name,
            severity=fields.severity,
            user=attributes.get("user.id") or attributes.get("enduser.id", ""),
            model=attributes.get("gen_ai.request.model") or attributes.get("gen_ai.response.model", ""),
            operation=attributes.get("gen_ai.operation.name", ""),
            input_tokens=int_attribute(attributes, "gen_ai.usage.input_tokens"),
            output_tokens=int_attribute(attributes, "gen_ai.usage.output_tokens"),
            body=body,
            trace_id=fields.trace_id,
            chain_id=chain_id.hex(),
            sequence=sequence,
            entry_hash=entry_hash(entry).hex(),
            sealed_unix_nano=sealed,
            sender=fields.sender,
        )
        self.tracker.row(chain_id, sealed)
        self.summary.add(row, fields)
        self.rows_file.write(json.dumps(row.values(), ensure_ascii=False) + "\n")
        self.rows += 1


def _disjoint(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Overlapping [first, last] ranges merged into disjoint ones: their firsts and lasts, sorted."""
    firsts: list[int] = []
    lasts: list[int] = []
    for first, last in sorted(ranges):
        if lasts and first <= lasts[-1] + 1:
            lasts[-1] = max(lasts[-1], last)
        else:
            firsts.append(first)
            lasts.append(last)
    return firsts, lasts


class _Status:
    """A row's status from the findings: tampered where a finding of tampering covers its sequence
    number, else unverified where one of loss does or one without a sequence range names its chain."""

    def __init__(self, verification: VerificationReport) -> None:
        spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._whole: set[str] = set()
        for finding in verification.findings:
            if finding.severity not in (Severity.TAMPERING, Severity.LOSS) or not finding.chain_id:
                continue
            if finding.first_sequence is None:
                self._whole.add(finding.chain_id)
                continue
            status = "tampered" if finding.severity is Severity.TAMPERING else "unverified"
            last = finding.last_sequence if finding.last_sequence is not None else finding.first_sequence
            spans.setdefault((finding.chain_id, status), []).append((finding.first_sequence, last))
        self._spans = {key: _disjoint(ranges) for key, ranges in spans.items()}

    def _covers(self, chain_id: str, status: str, sequence: int) -> bool:
        spans = self._spans.get((chain_id, status))
        if spans is None:
            return False
        firsts, lasts = spans
        index = bisect.bisect_right(firsts, sequence) - 1
        return index >= 0 and sequence <= lasts[index]

    def of(self, chain_id: str, sequence: int) -> str:
        if self._covers(chain_id, "tampered", sequence):
            return "tampered"
        if self._covers(chain_id, "unverified", sequence) or chain_id in self._whole:
            return "unverified"
        return "verified"


def _read_rows(path: Path, status: _Status, digest: Any) -> Iterator[ReportRow]:
    """The rows from the temporary file, each with its status, fed into ``digest`` as canonical JSON
    lines (the manifest pins the rows by it)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            values = json.loads(line)
            values[-1] = status.of(values[11], values[12])  # chain id, sequence
            digest.update(json.dumps(values, ensure_ascii=True).encode() + b"\n")
            yield ReportRow(*values)


async def build_report(
    store: ArchiveStore,
    keys: Keyring | Mapping[bytes, PublicKey],
    options: ReportOptions,
    out: Path,
    *,
    verify_options: VerifyOptions | None = None,
    state: VerifierState | None = None,
    progress: ProgressCallback | None = None,
) -> ReportResult:
    """Verify the archive, write the report to ``out`` and its manifest beside it.

    Raises:
        ArchiveUnavailableError, EmptyArchiveError: as ``verify``.
        ConfigurationError: ``out`` cannot be written.
    """
    period = options.period
    temporary_rows = out.with_name(f".{out.name}.rows.tmp")
    try:
        rows_file = temporary_rows.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError("--out", f"cannot write beside {out}: {exc.strerror}") from exc
    try:
        collector = _Collector(options, rows_file, BoundsTracker(period))
        with rows_file:
            checked = await check_archive_with_state(
                store,
                keys,
                state,
                verify_options,
                progress,
                record_observer=collector.observe_segment,
                read_everything=True,
            )
        verification = checked.report
        report = _period_report(store.description, options, verification, collector)
        manifest = _write(out, report, temporary_rows, _Status(verification), options)
    finally:
        temporary_rows.unlink(missing_ok=True)
    warnings = tuple(
        f"--where {item}: no record of the period has {item.key!r} (check the attribute's name)"
        for item in period.filters
        if item.key not in collector.filter_keys_seen and item.key not in ("event_name", "severity", "service")
    )
    return ReportResult(report, verification, checked.state, manifest, warnings)


def _period_report(
    archive: str, options: ReportOptions, verification: VerificationReport, collector: _Collector
) -> PeriodReport:
    period = options.period
    failed = {
        f.chain_id for f in verification.findings if f.severity in (Severity.TAMPERING, Severity.LOSS) and f.chain_id
    }
    successors: dict[str, list[str]] = {}
    for chain in verification.chains:
        if chain.supersedes is not None:
            successors.setdefault(chain.supersedes.chain_id, []).append(chain.chain_id)
    chains = tuple(
        collector.tracker.bounds(
            chain.chain_id,
            final=chain.final,
            superseded_by=successors.get(chain.chain_id, []),
            verified=chain.chain_id not in failed,
            newest_checkpoint=(
                (chain.newest_checkpoint_number, chain.newest_checkpoint_sha256, chain.newest_checkpoint_unix_nano or 0)
                if chain.newest_checkpoint_number is not None
                else None
            ),
        )
        for chain in verification.chains
    )
    return PeriodReport(
        archive=archive,
        since_unix_nano=period.since_unix_nano,
        until_unix_nano=period.until_unix_nano,
        late_seconds=period.late_nanos / 1e9,
        filters=tuple(str(f) for f in period.filters),
        generated_unix_nano=max((c.newest_checkpoint_unix_nano or 0 for c in verification.chains), default=0),
        verified=verification.clean,
        findings=verification.findings,
        chains=chains,
        summary=collector.summary.build(),
        records_read=verification.records_checked,
        signatures_checked=verification.signatures_checked,
        body_limit=options.body_limit,
    )


def _write(out: Path, report: PeriodReport, rows_path: Path, status: _Status, options: ReportOptions) -> dict[str, Any]:
    """The report (atomically) and its manifest; returns the manifest."""
    rows_digest = hashlib.sha256()
    counted = [0]

    def rows() -> Iterator[ReportRow]:
        for row in _read_rows(rows_path, status, rows_digest):
            counted[0] += 1
            yield row

    render: Callable[..., Iterator[str]]
    if options.format == "csv":
        chunks = render_csv(report, rows())
    elif options.format == "jsonl":
        chunks = render_jsonl(report, rows())
    else:
        from collector_ext.report.html import render_html

        render = render_html
        chunks = render(report, rows(), row_cap=options.html_row_cap)
    file_digest = hashlib.sha256()
    temporary = out.with_name(f".{out.name}.tmp")
    size = 0
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            for chunk in chunks:
                data = chunk.encode("utf-8")
                file_digest.update(data)
                size += len(data)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigurationError("--out", f"cannot write {out}: {exc.strerror}") from exc
    rows_sha256 = rows_digest.hexdigest()
    manifest = manifest_document(report, out.name, file_digest.hexdigest(), size, counted[0], rows_sha256, options)
    manifest_path = manifest_path_for(out)
    try:
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError("--out", f"cannot write {manifest_path}: {exc.strerror}") from exc
    return manifest


def manifest_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def manifest_document(
    report: PeriodReport,
    file_name: str,
    sha256: str,
    size: int,
    rows: int,
    rows_sha256: str,
    options: ReportOptions,
) -> dict[str, Any]:
    """What pins a report: its digest, the parameters to reproduce it, and the chains that vouch."""
    return {
        "format": MANIFEST_FORMAT,
        "generator": f"collector-ext {__version__}",
        "generated": iso(time.time_ns()),
        "report": {"file": file_name, "sha256": sha256, "size": size, "rows": rows, "rows_sha256": rows_sha256},
        "parameters": {
            "archive": report.archive,
            "since": iso(report.since_unix_nano),
            "until": iso(report.until_unix_nano),
            "late_seconds": report.late_seconds,
            "filters": list(report.filters),
            "format": options.format,
            "body_limit": options.body_limit,
        },
        "verified": report.verified,
        "complete": all(c.complete for c in report.chains),
        "findings": {s.value: sum(1 for f in report.findings if f.severity is s) for s in Severity},
        "chains": [
            {
                "chain_id": c.chain_id,
                "rows": c.rows,
                "before": asdict(c.before) if c.before is not None else None,
                "after": asdict(c.after) if c.after is not None else None,
                "complete": c.complete,
                "newest_checkpoint_number": c.newest_checkpoint_number,
                "newest_checkpoint_sha256": c.newest_checkpoint_sha256,
                "newest_checkpoint": iso(c.newest_checkpoint_unix_nano),
            }
            for c in report.chains
        ],
    }


def compare_manifests(pinned: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """What differs between a pinned manifest and one made again from the same parameters: the rows,
    or a chain's lower bound or row count (a chain's upper bound may appear later, as the archive grows)."""
    problems = []
    if pinned["report"]["rows_sha256"] != again["report"]["rows_sha256"]:
        problems.append(
            f"the rows differ: {pinned['report']['rows']} pinned, {again['report']['rows']} now "
            "(records of the period were changed, removed or added)"
        )
    now = {c["chain_id"]: c for c in again["chains"]}
    for chain in pinned["chains"]:
        current = now.get(chain["chain_id"])
        if current is None:
            problems.append(f"chain {chain['chain_id']} is not in the archive any more")
        elif current["before"] != chain["before"] or current["rows"] != chain["rows"]:
            problems.append(f"chain {chain['chain_id']}: its bounds or row count differ from the pinned report")
        elif chain["after"] is not None and current["after"] != chain["after"]:
            problems.append(f"chain {chain['chain_id']}: its upper bound differs from the pinned report")
    if not again["verified"]:
        problems.append("the archive does not verify now")
    return problems
