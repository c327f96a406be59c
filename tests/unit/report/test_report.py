"""Period reports over archives built from the pure core: rows by event time, filters, the bounds that
prove a period complete, a tampered range, an empty range, CSV safety, the manifest and its check."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.errors import ConfigurationError
from collector_ext.pb import archive_pb2
from collector_ext.report.csv_jsonl import neutralise
from collector_ext.report.period import BoundsTracker, Filter, Period, parse_time
from collector_ext.report.run import ReportOptions, ReportResult, build_report, compare_manifests
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.payload import log_payloads
from tests.archive_builder import BASE_TIME, BuiltArchive, build_archive
from tests.fakes import InMemoryArchive

USERS = ["alice", "bob", "carol", "=cmd|' /C calc'!A0"]
EVENTS = ["access.denied", "gen_ai.client.inference.operation.details", "permission.change", "login.failed"]


def _text(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _payload(sequence: int) -> bytes:
    """A real OTLP record whose event time is the sealing time of its segment (BASE_TIME + segment)."""
    segment = sequence // 4
    record = LogRecord(
        time_unix_nano=BASE_TIME + segment,
        severity_text="WARN",
        event_name=EVENTS[sequence % 4],
        body=AnyValue(string_value=f'record {sequence}, "quoted", line\nbreak, naïve'),
        attributes=[
            _text("user.id", USERS[sequence % 4]),
            _text("gen_ai.request.model", "gpt-4o"),
            KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=10)),
            _text("session.id", f"session-{segment}"),
        ],
    )
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[_text("service.name", "ai-workflow")]),
                scope_logs=[ScopeLogs(log_records=[record])],
            )
        ]
    )
    (payload,) = log_payloads(request)
    return payload


def _archive(signer: Ed25519Signer) -> BuiltArchive:
    # 5 segments of 4 entries; segment i sealed at BASE_TIME + i; entry 0 is the genesis.
    return build_archive(signer, segments=5, per_segment=4, payloads=_payload)


def _report(
    signer: Ed25519Signer,
    objects: dict[str, bytes],
    tmp_path: Path,
    *,
    since: int = BASE_TIME + 1,
    until: int = BASE_TIME + 3,
    filters: tuple[Filter, ...] = (),
    report_format: str = "csv",
) -> ReportResult:
    store = InMemoryArchive()
    store.objects = dict(objects)
    options = ReportOptions(period=Period(since, until, 0, filters), format=report_format)  # type: ignore[arg-type]
    return asyncio.run(
        build_report(store, {signer.key_id: signer.public_key}, options, tmp_path / f"r.{report_format}")
    )


def _csv_rows(path: Path) -> list[dict[str, str]]:
    lines = [
        line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if not line.startswith(("#", '"#'))
    ]
    return list(csv.DictReader(lines))


def test_rows_of_the_period_with_bounds_that_prove_it_complete(signer: Ed25519Signer, tmp_path: Path) -> None:
    result = _report(signer, _archive(signer).objects, tmp_path)
    assert result.report.verified
    rows = _csv_rows(tmp_path / "r.csv")
    # Event times BASE+1 and BASE+2: segments 1 and 2, sequence numbers 4-11.
    assert [int(r["sequence"]) for r in rows] == list(range(4, 12))
    assert {r["status"] for r in rows} == {"verified"}
    (chain,) = result.report.chains
    assert chain.before is not None and chain.after is not None
    assert (chain.before.sequence, chain.after.sequence) == (3, 12)  # last sealed before, first sealed after
    assert chain.complete and chain.rows == 8
    # Quotes, commas, newlines and non-ASCII survive a CSV reader; a formula cell is neutralised.
    assert rows[0]["body"] == 'record 4, "quoted", line\nbreak, naïve'
    assert rows[3]["user"] == "'=cmd|' /C calc'!A0"
    assert rows[1]["gen_ai_model"] == "gpt-4o" and rows[1]["gen_ai_input_tokens"] == "10"
    summary = result.report.summary
    assert summary.rows == 8
    assert summary.by_event_name["access.denied"] == 2
    assert (summary.access_denied, summary.permission_changes, summary.failed_logins) == (2, 2, 2)
    assert summary.model_usage["gpt-4o"].calls == 8 and summary.model_usage["gpt-4o"].input_tokens == 80
    assert [u.key for u in summary.uses] == ["session-1", "session-2"]
    assert summary.uses[0].persons == ("=cmd|' /C calc'!A0", "alice", "bob", "carol")


def test_filters_and_a_warning_for_an_attribute_no_record_has(signer: Ed25519Signer, tmp_path: Path) -> None:
    result = _report(
        signer,
        _archive(signer).objects,
        tmp_path,
        filters=(Filter.parse("user.id=bob"), Filter.parse("service=ai-workflow")),
    )
    assert [int(r["sequence"]) for r in _csv_rows(tmp_path / "r.csv")] == [5, 9]
    assert result.warnings == ()
    unknown = _report(signer, _archive(signer).objects, tmp_path, filters=(Filter.parse("no.such=1"),))
    assert unknown.warnings == (
        "--where no.such=1: no record of the period has 'no.such' (check the attribute's name)",
    )


def test_an_empty_period_still_has_its_bounds(signer: Ed25519Signer, tmp_path: Path) -> None:
    result = _report(signer, _archive(signer).objects, tmp_path, since=BASE_TIME + 100, until=BASE_TIME + 200)
    assert _csv_rows(tmp_path / "r.csv") == []
    (chain,) = result.report.chains
    assert chain.rows == 0
    assert chain.before is not None and chain.before.sequence == 19
    # Nothing sealed after the period yet, and the chain is open: not proven complete, and it says why.
    assert chain.after is None and not chain.complete
    assert "open" in chain.reason


def test_a_tampered_range_says_so_at_the_top_and_marks_its_rows(signer: Ed25519Signer, tmp_path: Path) -> None:
    archive = _archive(signer)
    records = archive.segment_records(1)
    entry = bytearray(records[2].entry)
    entry[-3] ^= 0x01
    records[2] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[2].signature)
    archive.rewrite_segment(1, records)
    result = _report(signer, archive.objects, tmp_path, report_format="jsonl")
    assert not result.report.verified
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["type"] == "report" and lines[0]["verdict"] == "NOT VERIFIED"
    assert not lines[0]["complete"]
    statuses = {row["sequence"]: row["status"] for row in lines[1:]}
    assert statuses[6] == "tampered"
    assert statuses[5] == "verified"


def test_the_manifest_pins_the_report_and_check_compares(signer: Ed25519Signer, tmp_path: Path) -> None:
    result = _report(signer, _archive(signer).objects, tmp_path)
    manifest = json.loads((tmp_path / "r.csv.manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["report"]["sha256"] == hashlib.sha256((tmp_path / "r.csv").read_bytes()).hexdigest()
    assert manifest["report"]["rows"] == 8
    again = _report(signer, _archive(signer).objects, tmp_path / "..")
    assert compare_manifests(manifest, again.manifest) == []
    fewer = _report(signer, _archive(signer).objects, tmp_path, until=BASE_TIME + 2)
    assert compare_manifests(manifest, fewer.manifest)[0].startswith("the rows differ")


def test_period_and_filter_errors_name_the_option() -> None:
    assert parse_time("2026-01-01", "--since") == 1_767_225_600 * 10**9
    assert parse_time("2026-01-01T01:00:00.5+01:00", "--since") == 1_767_225_600 * 10**9 + 5 * 10**8
    with pytest.raises(ConfigurationError, match="--since"):
        parse_time("yesterday", "--since")
    with pytest.raises(ConfigurationError, match="no time zone"):
        parse_time("2026-01-01T00:00:00", "--until")
    with pytest.raises(ConfigurationError, match="--until"):
        Period(10, 10, 0)
    with pytest.raises(ConfigurationError, match="--where"):
        Filter.parse("no-equals-sign")


def test_bounds_follow_seal_order() -> None:
    tracker = BoundsTracker(Period(100, 200, 50))
    for sequence, sealed in enumerate([10, 90, 99, 100, 150, 249, 250, 260]):
        tracker.see(b"\x0c" * 16, sequence, sealed)
    bounds = tracker.bounds("0c" * 16, final=False, superseded_by=[], verified=True, newest_checkpoint=None)
    assert bounds.before is not None and bounds.after is not None
    assert (bounds.before.sequence, bounds.after.sequence) == (2, 6)
    assert bounds.complete


@pytest.mark.parametrize(
    ("cell", "safe"), [("=1+1", "'=1+1"), ("+x", "'+x"), ("-2", "'-2"), ("@a", "'@a"), ("\tx", "'\tx"), ("ok", "ok")]
)
def test_formula_cells_are_neutralised(cell: str, safe: str) -> None:
    assert neutralise(cell) == safe


def test_row_status_follows_every_finding_however_many_overlap() -> None:
    from collector_ext.report.run import _Status
    from collector_ext.verify.findings import Finding, FindingKind, Severity, VerificationReport

    chain = "0c" * 16
    wide = Finding(FindingKind.DELETED_RECORDS, Severity.LOSS, "lost", chain, 0, 1000)
    narrow = [Finding(FindingKind.MODIFIED_RECORD, Severity.TAMPERING, "changed", chain, s) for s in range(10, 210, 2)]
    whole = Finding(FindingKind.FORGED_CHECKPOINT, Severity.TAMPERING, "forged", "0d" * 16)
    status = _Status(VerificationReport((wide, *narrow, whole), (), 0, 0, 0))
    assert status.of(chain, 10) == "tampered"  # tampering wins over the loss that also covers it
    assert status.of(chain, 11) == "unverified"  # only the wide loss covers it, under 100 narrower ranges
    assert status.of(chain, 999) == "unverified"
    assert status.of(chain, 1001) == "verified"
    assert status.of("0d" * 16, 5) == "unverified"  # a finding without a range names the whole chain
