"""collector_ext.instrument: structlog events -> OpenTelemetry log records, checked on the SDK's
in-memory exporter and on the OTLP encoding the exporter sends."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from collector_ext.instrument import OpenTelemetryProcessor, attribute_value, record_fields


class Opaque:
    def __str__(self) -> str:
        return "opaque-object"


@pytest.fixture
def exporter() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture
def provider(exporter: InMemoryLogRecordExporter) -> Iterator[LoggerProvider]:
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    yield provider
    provider.shutdown()


def configure(provider: LoggerProvider, *, pass_on: bool = True, timestamper: Any = None) -> list[Any]:
    """structlog set up the usual way, rendering into a list so pass-on/drop is observable."""
    rendered: list[Any] = []
    processors: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if timestamper is not None:
        processors.append(timestamper)
    processors += [
        OpenTelemetryProcessor(provider, pass_on=pass_on),
        lambda _l, _m, event: rendered.append(event) or "",
    ]
    structlog.configure(
        processors=processors, logger_factory=structlog.ReturnLoggerFactory(), cache_logger_on_first_use=False
    )
    return rendered


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def one_record(exporter: InMemoryLogRecordExporter) -> Any:
    (data,) = exporter.get_finished_logs()
    return data


def test_tutorial_event_maps_to_event_name_and_typed_attributes(provider, exporter) -> None:
    rendered = configure(provider)
    log = structlog.get_logger()
    log.info(
        "ai_task_started",
        input={"prompt": "Summarise Q3", "options": {"temperature": 0.2, "tools": ["search", "calc"]}},
        user_id="alice",
        session_id="s-17",
        tokens=812,
        ratio=0.5,
        dry_run=False,
        tags=("a", "b"),
        raw=b"\x00\x01",
        missing=None,
        when=datetime.datetime(2026, 12, 2, 10, 15, tzinfo=datetime.UTC),
        thing=Opaque(),
    )
    record = one_record(exporter).log_record
    assert record.event_name == "ai_task_started"
    assert record.body == "ai_task_started"
    assert record.severity_number == SeverityNumber.INFO
    assert record.severity_text == "INFO"
    attrs = dict(record.attributes)
    assert attrs["user.id"] == "alice"
    assert attrs["session.id"] == "s-17"
    assert "user_id" not in attrs and "level" not in attrs and "event" not in attrs
    assert attrs["input"] == {"prompt": "Summarise Q3", "options": {"temperature": 0.2, "tools": ("search", "calc")}}
    assert attrs["tokens"] == 812 and attrs["ratio"] == 0.5 and attrs["dry_run"] is False
    assert attrs["tags"] == ("a", "b")
    assert attrs["raw"] == b"\x00\x01"
    assert attrs["when"] == "2026-12-02T10:15:00+00:00"
    assert attrs["thing"] == "opaque-object"
    # passed on to the renderer unchanged
    assert rendered[0]["event"] == "ai_task_started" and rendered[0]["user_id"] == "alice"


def test_otlp_encoding_keeps_maps_arrays_and_types(provider, exporter) -> None:
    """What the OTLP exporter puts on the wire: kvlist for dicts, array for lists, typed scalars."""
    configure(provider)
    structlog.get_logger().warning(
        "access.denied", detail={"path": "/registry", "codes": [403, 401]}, user_id="bob", missing=None, big=2**70
    )
    request = encode_logs([one_record(exporter)])
    otlp = request.resource_logs[0].scope_logs[0].log_records[0]
    assert otlp.event_name == "access.denied"
    assert otlp.severity_number == SeverityNumber.WARN.value and otlp.severity_text == "WARN"
    attrs = {kv.key: kv.value for kv in otlp.attributes}
    assert attrs["user.id"].string_value == "bob"
    detail = {kv.key: kv.value for kv in attrs["detail"].kvlist_value.values}
    assert detail["path"].string_value == "/registry"
    assert [v.int_value for v in detail["codes"].array_value.values] == [403, 401]
    assert attrs["missing"].WhichOneof("value") is None
    assert attrs["big"].string_value == str(2**70)


@pytest.mark.parametrize(
    ("method", "number", "text"),
    [
        ("debug", SeverityNumber.DEBUG, "DEBUG"),
        ("info", SeverityNumber.INFO, "INFO"),
        ("warning", SeverityNumber.WARN, "WARN"),
        ("error", SeverityNumber.ERROR, "ERROR"),
        ("critical", SeverityNumber.FATAL, "FATAL"),
    ],
)
def test_level_gives_severity(provider, exporter, method, number, text) -> None:
    configure(provider)
    getattr(structlog.get_logger(), method)("step")
    record = one_record(exporter).log_record
    assert (record.severity_number, record.severity_text) == (number, text)


def test_method_name_used_without_add_log_level() -> None:
    fields = record_fields({"event": "x"}, "error")
    assert fields["severity_number"] == SeverityNumber.ERROR and fields["severity_text"] == "ERROR"
    unknown = record_fields({"event": "x", "level": "notice"}, "info")
    assert unknown["severity_number"] == SeverityNumber.UNSPECIFIED and unknown["severity_text"] == "NOTICE"


def test_exc_info_gives_exception_attributes(provider, exporter) -> None:
    configure(provider)
    log = structlog.get_logger()
    try:
        raise TimeoutError("model endpoint did not answer")
    except TimeoutError:
        log.exception("inference_failed", model="gpt-4o")
    attrs = dict(one_record(exporter).log_record.attributes)
    assert attrs["exception.type"] == "TimeoutError"
    assert attrs["exception.message"] == "model endpoint did not answer"
    assert "Traceback" in attrs["exception.stacktrace"] and "TimeoutError" in attrs["exception.stacktrace"]
    assert attrs["model"] == "gpt-4o"
    assert "exc_info" not in attrs


def test_exception_instance_and_prerendered_stack() -> None:
    error = ValueError("bad input")
    assert record_fields({"event": "x", "exc_info": error}, "error")["exception"] is error
    assert record_fields({"event": "x", "exc_info": (ValueError, error, None)}, "error")["exception"] is error
    rendered = record_fields({"event": "x", "exception": "Traceback ...\nValueError: bad input"}, "error")
    assert rendered["attributes"]["exception.stacktrace"].startswith("Traceback")
    assert "exception" not in rendered


def test_timestamp_from_structlog(provider, exporter) -> None:
    configure(provider, timestamper=structlog.processors.TimeStamper(fmt="iso", utc=True))
    structlog.get_logger().info("stamped")
    record = one_record(exporter).log_record
    assert record.timestamp is not None
    assert abs(record.timestamp - record.observed_timestamp) < 5_000_000_000
    assert "timestamp" not in dict(record.attributes)


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        (1_700_000_000.5, 1_700_000_000_500_000_000),
        ("2026-12-02T10:15:01.123456Z", 1_796_206_501_123_456_000),
        ("2026-12-02T11:15:01.123456+01:00", 1_796_206_501_123_456_000),
    ],
)
def test_timestamp_forms(value, nanos) -> None:
    assert record_fields({"event": "x", "timestamp": value}, "info")["timestamp"] == nanos


def test_naive_iso_timestamp_is_local_time() -> None:
    local = datetime.datetime(2026, 12, 2, 10, 15, 1, 123456)
    expected = int(local.astimezone().timestamp()) * 1_000_000_000 + 123_456_000
    assert record_fields({"event": "x", "timestamp": local.isoformat()}, "info")["timestamp"] == expected


def test_unparsed_timestamp_is_kept_as_attribute() -> None:
    fields = record_fields({"event": "x", "timestamp": "Tue, 2 Dec"}, "info")
    assert "timestamp" not in fields
    assert fields["attributes"]["timestamp"] == "Tue, 2 Dec"


def test_dotted_key_wins_over_mapped_one() -> None:
    attrs = record_fields({"event": "x", "user_id": "a", "user.id": "b"}, "info")["attributes"]
    assert attrs == {"user_id": "a", "user.id": "b"}


def test_key_map_can_be_replaced() -> None:
    attrs = record_fields({"event": "x", "user_id": "a", "actor": "b"}, "info", {"actor": "user.name"})["attributes"]
    assert attrs == {"user_id": "a", "user.name": "b"}


def test_contextvars_become_attributes(provider, exporter) -> None:
    configure(provider)
    structlog.contextvars.bind_contextvars(user_id="carol", request_id="r-1")
    structlog.get_logger().info("permission.change", target={"user.id": "dave"})
    attrs = dict(one_record(exporter).log_record.attributes)
    assert attrs["user.id"] == "carol" and attrs["request_id"] == "r-1"
    assert attrs["target"] == {"user.id": "dave"}


def test_drop_after_emitting(provider, exporter) -> None:
    rendered = configure(provider, pass_on=False)
    assert structlog.get_logger().info("quiet") is None
    assert one_record(exporter).log_record.event_name == "quiet"
    assert rendered == []


def test_attribute_value_edges() -> None:
    assert attribute_value(2**63) == str(2**63)
    assert attribute_value(-(2**63)) == -(2**63)
    assert attribute_value({1: {2}}) == {"1": [2]}
    assert attribute_value(datetime.date(2026, 12, 2)) == "2026-12-02"
    assert attribute_value(True) is True


def test_instrument_does_not_import_structlog() -> None:
    import subprocess
    import sys

    code = "import sys, collector_ext.instrument, collector_ext; assert 'structlog' not in sys.modules, 'structlog imported'; assert 'opentelemetry.sdk' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
