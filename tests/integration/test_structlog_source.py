"""structlog as an audit source, end to end: structlog -> collector_ext.instrument -> the SDK's OTLP/gRPC
exporter -> a real sidecar -> directory archive -> verify -> the archived record decoded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as OtlpResource
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from collector_ext import demo
from collector_ext.instrument import OpenTelemetryProcessor
from collector_ext.pb import archive_pb2
from collector_ext.report.rows import read_fields
from tests.integration.conftest import KeyPairFiles, any_value_to_python, archived_log_records, verify_archive_at


def archived_records(archive: Path) -> list[tuple[bytes, archive_pb2.LogPayload]]:
    """(entry bytes, payload) of every archived log record, in sequence order."""
    return [(r.entry, r.payload) for r in archived_log_records(archive)]


as_python = any_value_to_python


def test_structlog_events_are_sealed_archived_and_verified(
    run_sidecar: Callable[..., Any], key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    with run_sidecar(str(archive)) as sidecar:
        provider = LoggerProvider(resource=Resource.create({"service.name": "ai-workflow"}))
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"127.0.0.1:{sidecar.port}", insecure=True))
        )
        log = structlog.wrap_logger(
            structlog.ReturnLogger(),
            wrapper_class=structlog.make_filtering_bound_logger(0),
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                OpenTelemetryProcessor(provider, scope_name="ai_workflow", pass_on=False),
            ],
        )
        task_input = {
            "prompt": "Summarise the Q3 incident report\nin three lines, «bitte»",
            "documents": ["q3.pdf", "q3-appendix.pdf"],
            "options": {"temperature": 0.2, "max_tokens": 256, "stream": False},
        }
        log.info("ai_task_started", input=task_input, user_id="alice", session_id="sess-7f3a", task_id=42, parent=None)
        try:
            raise TimeoutError("model endpoint did not answer within 30 s")
        except TimeoutError:
            log.exception("ai_task_failed", user_id="alice", model="gpt-4o")
        assert provider.force_flush(timeout_millis=30_000)
        provider.shutdown()

    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    records = archived_records(archive)
    assert len(records) == 2

    (started_entry, started), (_, failed) = records
    record = LogRecord.FromString(started.log_record)
    assert record.event_name == "ai_task_started"
    assert record.body.string_value == "ai_task_started"
    assert record.severity_number == SeverityNumber.SEVERITY_NUMBER_INFO and record.severity_text == "INFO"
    assert record.time_unix_nano > 0
    attributes = {kv.key: kv.value for kv in record.attributes}
    assert attributes["input"].WhichOneof("value") == "kvlist_value"
    assert as_python(attributes["input"]) == task_input
    assert attributes["user.id"].string_value == "alice"
    assert attributes["session.id"].string_value == "sess-7f3a"
    assert attributes["task_id"].int_value == 42
    assert attributes["parent"].WhichOneof("value") is None
    assert "user_id" not in attributes and "level" not in attributes and "timestamp" not in attributes
    assert {kv.key: kv.value.string_value for kv in OtlpResource.FromString(started.resource).attributes}[
        "service.name"
    ] == "ai-workflow"

    # the period report reads the same record
    fields = read_fields(started_entry, record.time_unix_nano)
    assert fields is not None
    assert fields.event_name == "ai_task_started" and fields.attributes["user.id"] == "alice"

    failure = LogRecord.FromString(failed.log_record)
    assert failure.event_name == "ai_task_failed"
    assert failure.severity_number == SeverityNumber.SEVERITY_NUMBER_ERROR
    failure_attributes = {kv.key: as_python(kv.value) for kv in failure.attributes}
    assert failure_attributes["exception.type"] == "TimeoutError"
    assert failure_attributes["exception.message"] == "model endpoint did not answer within 30 s"
    assert "Traceback" in failure_attributes["exception.stacktrace"]
    assert failure_attributes["user.id"] == "alice" and failure_attributes["model"] == "gpt-4o"


def test_demo_workflow_sends_structlog_beside_sdk_events(
    run_sidecar: Callable[..., Any], key_pair: KeyPairFiles, tmp_path: Path, capsys: Any
) -> None:
    """The demo's workflow (collector-ext demo step 3) against a directory archive: the structlog events
    arrive next to the SDK's, through the same provider, and the archive verifies."""
    archive = tmp_path / "archive"
    with run_sidecar(str(archive)) as sidecar:
        sent = demo.run_ai_workflow(f"127.0.0.1:{sidecar.port}")
    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    records = [LogRecord.FromString(payload.log_record) for _, payload in archived_records(archive)]
    assert len(records) == sent
    names = [r.event_name for r in records]
    assert "gen_ai.client.inference.operation.details" in names and "access.denied" in names
    started = records[names.index("ai_task_started")]
    attributes = {kv.key: as_python(kv.value) for kv in started.attributes}
    assert attributes["user.id"] == "alice"
    assert attributes["input"]["documents"] == ["ticket-4711.eml"]
    assert "structlog: event='ai_task_started'" in capsys.readouterr().out


def test_demo_pgaudit_note_says_how_to_add_the_source(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda _name: None)
    note = demo.pgaudit_note(tmp_path / "no-postgres")
    assert "postgresql-15 and postgresql-15-pgaudit" in note
    assert 'README "Sources: PostgreSQL pgaudit"' in note


def test_demo_pgaudit_note_names_the_readme_section_when_postgres_15_is_there(monkeypatch: Any, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("postgres", "postgres (PostgreSQL) 15.14"), ("initdb", "initdb (PostgreSQL) 15.14")):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho '{text}'\n")
        script.chmod(0o755)
    monkeypatch.setattr(demo.shutil, "which", lambda _name: None)
    note = demo.pgaudit_note(bin_dir)
    assert note.startswith("PostgreSQL 15 is installed")
    assert 'README "Sources: PostgreSQL pgaudit"' in note


def test_demo_pgaudit_sample_seals_a_real_audit_line(
    run_sidecar: Callable[..., Any], key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    """With PostgreSQL 15 and pgaudit installed (the test command installs them), the demo starts a
    throwaway cluster, audits one INSERT and seals its jsonlog line; the archive verifies."""
    from collector_ext.embedded_postgres import BIN_DIR

    assert (BIN_DIR / "postgres").is_file(), "install postgresql-15 and postgresql-15-pgaudit (apt-get)"
    archive = tmp_path / "archive"
    with run_sidecar(str(archive)) as sidecar:
        line = demo.run_pgaudit_sample(f"127.0.0.1:{sidecar.port}")
    assert line.startswith("pgaudit (PostgreSQL 15, sealed as its jsonlog line): AUDIT: SESSION,"), line
    assert ",WRITE,INSERT,TABLE,public.model_registry," in line
    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    (record,) = [LogRecord.FromString(payload.log_record) for _, payload in archived_records(archive)]
    assert "AUDIT: SESSION" in record.body.string_value
    assert {kv.key: as_python(kv.value) for kv in record.attributes}["db.system.name"] == "postgresql"
