"""parse_json_request: OTLP/JSON read exactly, or refused naming the field and position (never the
value); what protobuf's lenient JSON reader would bend into another value is refused."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector_ext.errors import InvalidRequestError
from collector_ext.receive.otlp_json import parse_json_request

RECORD = "resourceLogs[0].scopeLogs[0].logRecords[0]"
SECRET = "s3cr3t"


def body_of(record: dict[str, Any] | str) -> bytes:
    text = record if isinstance(record, str) else json.dumps(record)
    return ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [' + text + "]}]}]}").encode()


def parsed_record(record: dict[str, Any] | str) -> LogRecord:
    return parse_json_request(body_of(record)).resource_logs[0].scope_logs[0].log_records[0]


def refusal(body: bytes) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        parse_json_request(body)
    text = str(caught.value)
    assert SECRET not in text
    assert "nothing was sealed" in text
    return text


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"severityNumber": 2**40}, "severityNumber is outside the range"),
        ('{"severityNumber": 1.5}', "severityNumber is not an integer"),
        ({"severityNumber": "INFO"}, "severityNumber is not an integer nor the name of a SeverityNumber value"),
        ({"severityNumber": True}, "severityNumber must be an integer, not a boolean"),
        ('{"severityNumber": NaN}', "bare token NaN is not JSON"),
        ({"timeUnixNano": "18446744073709551616"}, "timeUnixNano is outside the range"),
        ({"timeUnixNano": "-1"}, "timeUnixNano is outside the range"),
        ({"droppedAttributesCount": 2**32}, "droppedAttributesCount is outside the range"),
        ({"flags": -1}, "flags is outside the range"),
        ({"body": {"intValue": "9223372036854775808"}}, "body.intValue is outside the range"),
        ({"body": {"intValue": "1_000"}}, "body.intValue is a string that is not a decimal integer"),
        ({"body": {"intValue": "+1"}}, "body.intValue is a string that is not a decimal integer"),
        ({"body": {"intValue": "0x10"}}, "body.intValue is a string that is not a decimal integer"),
        ({"body": {"intValue": "\u0661\u0662"}}, "body.intValue is a string that is not a decimal integer"),
        ('{"body": {"intValue": 1e999999999}}', "body.intValue is not an integer"),
        ('{"body": {"doubleValue": 1e400}}', "body.doubleValue is too large"),
        ({"body": {"doubleValue": "1e400"}}, "body.doubleValue is too large"),
        ({"body": {"doubleValue": "inf"}}, "body.doubleValue is a string that is not a number"),
        ({"body": {"doubleValue": True}}, "body.doubleValue must be a number, not a boolean"),
        ({"body": {"boolValue": 1}}, "body.boolValue must be true or false"),
        ({"body": {"bytesValue": "Y!Q=="}}, "body.bytesValue is not base64"),
        ({"body": {"bytesValue": "YQ==YQ=="}}, "body.bytesValue is not base64"),
        ({"body": {"stringValue": SECRET, "intValue": 1}}, "body sets both string_value and int_value"),
        ({"traceId": "abcd"}, "traceId must be 32 hex digits"),
        ({"spanId": "zz" * 8}, "spanId must be 16 hex digits"),
        ({"severityText": SECRET, "severity_text": SECRET}, "severity_text is given twice"),
        ('{"severityText": "s3cr3t", "severityText": "s3cr3t2"}', "an object has the same key twice"),
        ('{"body": {"stringValue": "\\ud800"}}', "body.stringValue holds an unpaired UTF-16 surrogate"),
        ({"attributes": {"key": SECRET}}, "attributes is not an array"),
        ({"body": [SECRET]}, "body is not an object"),
    ],
)
def test_values_a_lenient_reader_would_change_are_refused(record: dict[str, Any] | str, expected: str) -> None:
    text = refusal(body_of(record))
    whole_document = expected.startswith(("bare token", "an object"))
    assert (expected if whole_document else f"{RECORD}.{expected}") in text


@pytest.mark.parametrize(
    ("record", "check"),
    [
        ({"severityNumber": 9}, lambda r: r.severity_number == 9),
        ({"severityNumber": "SEVERITY_NUMBER_WARN"}, lambda r: r.severity_number == 13),
        ({"severityNumber": -3}, lambda r: r.severity_number == -3),
        ({"severityNumber": 77}, lambda r: r.severity_number == 77),  # open enum: kept as sent
        ({"timeUnixNano": "18446744073709551615"}, lambda r: r.time_unix_nano == 2**64 - 1),
        ({"timeUnixNano": 1700000000000000001}, lambda r: r.time_unix_nano == 1700000000000000001),
        ({"timeUnixNano": "1e3"}, lambda r: r.time_unix_nano == 1000),
        ('{"timeUnixNano": 12345678901234567891}', lambda r: r.time_unix_nano == 12345678901234567891),
        ({"body": {"intValue": "-9223372036854775808"}}, lambda r: r.body.int_value == -(2**63)),
        ({"body": {"doubleValue": "NaN"}}, lambda r: math.isnan(r.body.double_value)),
        ({"body": {"doubleValue": "-Infinity"}}, lambda r: r.body.double_value == -math.inf),
        ({"body": {"doubleValue": 0.1}}, lambda r: r.body.double_value == 0.1),
        ({"body": {"doubleValue": "2.5"}}, lambda r: r.body.double_value == 2.5),
        ({"body": {"bytesValue": "YQ"}}, lambda r: r.body.bytes_value == b"a"),
        ({"body": {"bytesValue": "_-8="}}, lambda r: r.body.bytes_value == b"\xff\xef"),
        ({"traceId": "0A" * 16, "spanId": ""}, lambda r: r.trace_id == b"\x0a" * 16 and r.span_id == b""),
        ({"trace_id": "01" * 16}, lambda r: r.trace_id == b"\x01" * 16),
        ({"severityText": None, "body": None}, lambda r: r == LogRecord()),
        ({"futureField": {"x": [1, 2]}, "severityText": "x"}, lambda r: r.severity_text == "x"),
        (
            {"body": {"stringValue": "caf\u00e9 \U0001f600 \u0000"}},
            lambda r: r.body.string_value == "caf\u00e9 \U0001f600 \u0000",
        ),
    ],
)
def test_exact_values_are_accepted(record: dict[str, Any] | str, check: Any) -> None:
    assert check(parsed_record(record))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff{}", "not valid utf-8 (at byte 0)"),
        (b'{"resourceLogs": [', "not JSON (JSONDecodeError"),
        (b"[]", "the request is not an object"),
        (b'{"resourceLogs": 3}', "resourceLogs is not an array"),
        (b'{"resourceLogs": [null]}', "resourceLogs[0] is not an object"),
    ],
)
def test_documents_that_are_not_requests(body: bytes, expected: str) -> None:
    assert expected in refusal(body)


def test_nesting_beyond_the_protobuf_limit_is_refused_as_protobuf_would() -> None:
    levels = 40  # 4 + 3 * 40 messages: past protobuf's 100
    value = '{"intValue": 1}'
    for _ in range(levels):
        value = '{"kvlistValue": {"values": [{"key": "k", "value": ' + value + "}]}}"
    text = refusal(body_of('{"body": ' + value + "}"))
    assert f"{RECORD} nests messages more than 100 deep" in text


def test_the_empty_object_is_the_empty_request() -> None:
    assert parse_json_request(b"{}") == ExportLogsServiceRequest()
