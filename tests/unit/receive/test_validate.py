"""check_request: attribute counts, value depth and id lengths refuse the whole request, naming the
limit and the position, never the content. Every case runs both ways where it can: the full walk, and
the request decoded by parse_scalar_request and checked with scalar_only, which must give the same
verdict and message."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.config import load_config
from collector_ext.errors import ConfigurationError, InvalidRequestError
from collector_ext.receive.otlp_protobuf import parse_protobuf_request, parse_scalar_request
from collector_ext.receive.validate import MAX_VALUE_DEPTH_CEILING, RequestLimits, check_request

SECRET = "s3cr3t-content"


def check(message: ExportLogsServiceRequest, limits: RequestLimits) -> None:
    """check_request both ways (when the request has no nested value); the outcomes (pass, or the
    refusal's text) must be the same."""
    requests = [(message, False)]
    scalar = parse_scalar_request(message.SerializeToString())
    if scalar is not None:
        requests.append((scalar, True))
    outcomes = []
    for candidate, scalar_only in requests:
        try:
            check_request(candidate, limits, scalar_only=scalar_only)
            outcomes.append("")
        except InvalidRequestError as exc:
            outcomes.append(str(exc))
    assert len(set(outcomes)) == 1
    if outcomes[0]:
        raise InvalidRequestError(outcomes[0])


def attributes(count: int) -> list[KeyValue]:
    return [KeyValue(key=f"{SECRET}{i}", value=AnyValue(string_value=SECRET)) for i in range(count)]


def request(
    *records: LogRecord, resource: Resource | None = None, scope: InstrumentationScope | None = None
) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=list(records))])]
    )


def nested(levels: int, kind: str = "kvlist") -> AnyValue:
    """A value ``levels`` deep: level 1 is the value itself."""
    value = AnyValue(string_value=SECRET)
    for _ in range(levels - 1):
        if kind == "kvlist":
            value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=SECRET, value=value)]))
        else:
            value = AnyValue(array_value=ArrayValue(values=[value]))
    return value


def refusal(message: ExportLogsServiceRequest, limits: RequestLimits) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        check(message, limits)
    text = str(caught.value)
    assert SECRET not in text
    assert "nothing was sealed" in text
    return text


def test_a_request_within_every_limit_passes() -> None:
    limits = RequestLimits(max_attributes=3, max_attributes_per_request=100, max_value_depth=4)
    check(
        request(
            LogRecord(attributes=attributes(3), body=nested(4), trace_id=bytes(16), span_id=bytes(8)),
            LogRecord(attributes=[KeyValue(key="x", value=nested(4, "array"))]),
            resource=Resource(attributes=attributes(3)),
            scope=InstrumentationScope(attributes=attributes(3)),
        ),
        limits,
    )


@pytest.mark.parametrize(
    ("message", "position"),
    [
        (
            request(LogRecord(), LogRecord(attributes=attributes(4))),
            "resource_logs[0].scope_logs[0].log_records[1] has 4",
        ),
        (request(LogRecord(), resource=Resource(attributes=attributes(4))), "resource_logs[0].resource has 4"),
        (
            request(LogRecord(), scope=InstrumentationScope(attributes=attributes(4))),
            "resource_logs[0].scope_logs[0].scope has 4",
        ),
    ],
)
def test_too_many_attributes_on_a_record_resource_or_scope(message: ExportLogsServiceRequest, position: str) -> None:
    text = refusal(message, RequestLimits(max_attributes=3))
    assert position in text
    assert "limits.max_attributes=3" in text


def test_the_request_wide_count_includes_nested_entries_and_array_elements() -> None:
    limits = RequestLimits(max_attributes=10, max_attributes_per_request=6, max_value_depth=8)
    # 2 top-level attributes + 2 levels of kvlist (1 entry each) + 3 array elements = 7 > 6.
    array = AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=i) for i in range(3)]))
    record = LogRecord(attributes=[KeyValue(key="a", value=nested(3)), KeyValue(key="b", value=array)])
    text = refusal(request(record), limits)
    assert "limits.max_attributes_per_request=6" in text
    check(request(record), RequestLimits(max_attributes=10, max_attributes_per_request=7, max_value_depth=8))


def test_the_request_wide_count_adds_up_across_records() -> None:
    records = [LogRecord(attributes=attributes(2)) for _ in range(5)]
    text = refusal(request(*records), RequestLimits(max_attributes_per_request=9))
    assert "log_records[4]" in text


@pytest.mark.parametrize("kind", ["kvlist", "array"])
@pytest.mark.parametrize("where", ["body", "attribute"])
def test_values_nested_deeper_than_the_limit_are_refused(kind: str, where: str) -> None:
    limits = RequestLimits(max_value_depth=5)

    def record(levels: int) -> LogRecord:
        if where == "body":
            return LogRecord(body=nested(levels, kind))
        return LogRecord(attributes=[KeyValue(key="ok"), KeyValue(key="deep", value=nested(levels, kind))])

    check(request(record(5)), limits)
    text = refusal(request(LogRecord(), record(6)), limits)
    expected = "log_records[1].body" if where == "body" else "log_records[1].attributes[1]"
    assert expected in text
    assert "limits.max_value_depth=5" in text


def test_an_empty_container_at_the_deepest_level_adds_no_level() -> None:
    empty = AnyValue(kvlist_value=KeyValueList())
    deepest = AnyValue(array_value=ArrayValue(values=[empty]))  # level 1 holds an empty kvlist at level 2
    check(request(LogRecord(body=deepest)), RequestLimits(max_value_depth=2))


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (LogRecord(trace_id=bytes(15)), "trace_id is 15 bytes"),
        (LogRecord(trace_id=bytes(17)), "trace_id is 17 bytes"),
        (LogRecord(trace_id=bytes(16), span_id=bytes(4)), "span_id is 4 bytes"),
        (LogRecord(span_id=bytes(16)), "span_id is 16 bytes"),
    ],
)
def test_ids_of_a_length_otlp_does_not_define_are_refused(record: LogRecord, field: str) -> None:
    text = refusal(request(LogRecord(), record), RequestLimits())
    assert f"resource_logs[0].scope_logs[0].log_records[1].{field}" in text


def test_limits_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="max_value_depth"):
        RequestLimits(max_value_depth=MAX_VALUE_DEPTH_CEILING + 1)
    with pytest.raises(ValueError, match="positive"):
        RequestLimits(max_attributes=0)


def test_the_limits_settings_default_to_the_request_limits_defaults_and_are_bounded() -> None:
    base = {"signing_key": "k", "archive": {"url": "./a"}}
    settings = load_config(None, environ={}, overrides=base).limits
    assert (
        RequestLimits(
            max_attributes=settings.max_attributes,
            max_attributes_per_request=settings.max_attributes_per_request,
            max_value_depth=settings.max_value_depth,
        )
        == RequestLimits()
    )
    with pytest.raises(ConfigurationError, match=r"limits\.max_value_depth"):
        load_config(None, environ={"COLLECTOR_EXT_LIMITS__MAX_VALUE_DEPTH": "31"}, overrides=base)
    with pytest.raises(ConfigurationError, match=r"limits\.max_attributes"):
        load_config(None, environ={"COLLECTOR_EXT_LIMITS__MAX_ATTRIBUTES": "0"}, overrides=base)


def _flat_record(index: int) -> LogRecord:
    return LogRecord(
        body=AnyValue(string_value=SECRET),
        attributes=[*attributes(2), KeyValue(key="n", value=AnyValue(int_value=index))],
        trace_id=bytes(16),
        span_id=bytes(8),
    )


def test_a_request_of_scalar_values_decodes_to_the_same_fields() -> None:
    message = request(*(_flat_record(i) for i in range(3)), resource=Resource(attributes=attributes(1)))
    body = message.SerializeToString()
    scalar = parse_scalar_request(body)
    assert scalar is not None
    assert scalar.SerializeToString() == body
    assert parse_protobuf_request(scalar.SerializeToString()) == message
    assert [record.span_id for record in scalar.resource_logs[0].scope_logs[0].log_records] == [bytes(8)] * 3


@pytest.mark.parametrize(
    "message",
    [
        request(_flat_record(0), LogRecord(body=nested(2))),
        request(_flat_record(0), LogRecord(body=nested(2, "array"))),
        request(LogRecord(body=AnyValue(kvlist_value=KeyValueList()))),  # empty containers count too
        request(LogRecord(attributes=[KeyValue(key="a", value=AnyValue(array_value=ArrayValue()))])),
        request(_flat_record(0), resource=Resource(attributes=[KeyValue(key="r", value=nested(2))])),
        request(_flat_record(0), scope=InstrumentationScope(attributes=[KeyValue(key="s", value=nested(2, "array"))])),
    ],
)
def test_any_kvlist_or_array_value_leaves_the_request_to_the_full_decoder(message: ExportLogsServiceRequest) -> None:
    assert parse_scalar_request(message.SerializeToString()) is None


def test_an_unknown_field_leaves_the_request_to_the_full_decoder() -> None:
    message = request(_flat_record(0))
    message.resource_logs[0].scope_logs[0].log_records[0].body.MergeFromString(b"\xf8\x01\x01")  # field 31, varint
    assert parse_scalar_request(message.SerializeToString()) is None


def _padded_body(value: AnyValue) -> bytes:
    """A request of one record (time and body) whose body's length is a non-minimal 2-byte varint."""
    encoded_value = value.SerializeToString()
    record = LogRecord(time_unix_nano=1).SerializeToString() + b"\x2a" + bytes([len(encoded_value) | 0x80, 0])
    record += encoded_value
    scope = b"\x12" + bytes([len(record)]) + record
    resource = b"\x12" + bytes([len(scope)]) + scope
    return b"\x0a" + bytes([len(resource)]) + resource


@pytest.mark.parametrize("value", [AnyValue(string_value=SECRET), AnyValue(kvlist_value=KeyValueList())])
def test_a_body_in_a_non_minimal_form_is_left_to_the_full_decoder(value: AnyValue) -> None:
    """Only a body that is exactly its own re-encoding takes the short road, whatever it holds."""
    body = _padded_body(value)
    assert ExportLogsServiceRequest.FromString(body) == request(LogRecord(time_unix_nano=1, body=value))
    assert parse_scalar_request(body) is None


def test_a_body_the_decoder_refuses_is_left_to_the_full_decoder() -> None:
    assert parse_scalar_request(b"\x0a\x05\x12") is None
