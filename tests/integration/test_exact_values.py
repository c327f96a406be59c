"""Both receivers answer the same logical request the same way: refused with INVALID_ARGUMENT / 400
naming the field (never its value) and nothing sealed, or sealed exactly as sent. Each case is sent
over gRPC, OTLP/HTTP protobuf and OTLP/HTTP JSON to one running sidecar."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector_ext.seal.wire import encode_varint
from collector_ext.service import Sidecar
from tests.integration.conftest import archived_log_records, length_delimited, wrap_record

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
SECRET = "s3cr3t-value-7f3a"
TRANSPORTS = ("grpc", "http-protobuf", "http-json")


def _varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value & (2**64 - 1))


def _json(record: str) -> bytes:
    return ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [' + record + "]}]}]}").encode()


@dataclass(frozen=True)
class Case:
    """One logical request: its protobuf and its OTLP/JSON form, and what must come of it."""

    protobuf: bytes
    json: bytes
    refused_naming: tuple[str, ...] = ()  # any of these names the field or limit
    check: Callable[[LogRecord], bool] | None = None


def _nested(levels: int) -> str:
    value = f'{{"stringValue": "{SECRET}"}}'
    for _ in range(levels - 1):
        value = '{"kvlistValue": {"values": [{"key": "k", "value": ' + value + "}]}}"
    return value


def _nested_protobuf(levels: int) -> AnyValue:
    value = AnyValue(string_value=SECRET)
    for _ in range(levels - 1):
        value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=value)]))
    return value


CASES = {
    "severity beyond int32": Case(
        wrap_record(_varint_field(2, 2**40) + length_delimited(3, SECRET.encode())),
        _json(f'{{"severityNumber": {2**40}, "severityText": "{SECRET}"}}'),
        ("severity_number", "severityNumber"),
    ),
    "severity -1": Case(
        wrap_record(_varint_field(2, -1)),
        _json('{"severityNumber": -1}'),
        check=lambda r: r.severity_number == -1,
    ),
    "dropped count beyond uint32": Case(
        wrap_record(_varint_field(7, 2**32)),
        _json(f'{{"droppedAttributesCount": {2**32}}}'),
        ("dropped_attributes_count", "droppedAttributesCount"),
    ),
    "int64 extremes": Case(
        wrap_record(LogRecord(body=AnyValue(int_value=-(2**63)), time_unix_nano=2**64 - 1).SerializeToString()),
        _json(f'{{"body": {{"intValue": "{-(2**63)}"}}, "timeUnixNano": "{2**64 - 1}"}}'),
        check=lambda r: r.body.int_value == -(2**63) and r.time_unix_nano == 2**64 - 1,
    ),
    "NaN and infinity": Case(
        wrap_record(
            LogRecord(
                body=AnyValue(double_value=math.nan),
                attributes=[KeyValue(key="i", value=AnyValue(double_value=-math.inf))],
            ).SerializeToString()
        ),
        _json('{"body": {"doubleValue": "NaN"}, "attributes": [{"key": "i", "value": {"doubleValue": "-Infinity"}}]}'),
        check=lambda r: math.isnan(r.body.double_value) and r.attributes[0].value.double_value == -math.inf,
    ),
    "trace id of 5 bytes": Case(
        wrap_record(LogRecord(trace_id=b"\x01" * 5).SerializeToString()),
        _json('{"traceId": "0101010101"}'),
        ("trace_id", "traceId"),
    ),
    "a field given twice": Case(
        wrap_record(length_delimited(3, SECRET.encode()) + length_delimited(3, b"other")),
        _json(f'{{"severityText": "{SECRET}", "severityText": "other"}}'),
        ("severity_text", "same key twice"),
    ),
    "too many attributes": Case(
        wrap_record(
            LogRecord(
                attributes=[KeyValue(key=f"{SECRET}{i}", value=AnyValue(int_value=i)) for i in range(1025)]
            ).SerializeToString()
        ),
        _json(json.dumps({"attributes": [{"key": f"{SECRET}{i}", "value": {"intValue": i}} for i in range(1025)]})),
        ("limits.max_attributes=1024",),
    ),
    "values nested 17 deep": Case(
        wrap_record(LogRecord(body=_nested_protobuf(17)).SerializeToString()),
        _json('{"body": ' + _nested(17) + "}"),
        ("limits.max_value_depth=16",),
    ),
    "values nested 16 deep": Case(
        wrap_record(LogRecord(body=_nested_protobuf(16)).SerializeToString()),
        _json('{"body": ' + _nested(16) + "}"),
        check=lambda r: r.body == _nested_protobuf(16),
    ),
}


def _send(sidecar: Sidecar, transport: str, case: Case) -> tuple[int, str]:
    """(google.rpc code, message) of the answer."""
    if transport == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            try:
                export(case.protobuf, timeout=10)
            except grpc.RpcError as exc:
                return exc.code().value[0], exc.details() or ""
        return code_pb2.OK, ""
    content_type = "application/json" if transport == "http-json" else "application/x-protobuf"
    body = case.json if transport == "http-json" else case.protobuf
    connection = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=30)
    try:
        connection.request("POST", "/v1/logs", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        reply = response.read()
    finally:
        connection.close()
    if response.status == 200:
        return code_pb2.OK, ""
    assert response.status == 400, (response.status, reply)
    status = (
        json_format.Parse(reply, status_pb2.Status())
        if transport == "http-json"
        else status_pb2.Status.FromString(reply)
    )
    return status.code, status.message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(CASES))
def test_each_receiver_refuses_or_seals_exactly(
    directory_sidecar: Sidecar, tmp_path: Path, transport: str, name: str
) -> None:
    case = CASES[name]
    sealed_before = directory_sidecar.pipeline.stats.records_sealed
    code, message = _send(directory_sidecar, transport, case)
    if case.refused_naming:
        assert code == code_pb2.INVALID_ARGUMENT, message
        assert any(name in message for name in case.refused_naming), message
        assert SECRET not in message
        assert directory_sidecar.pipeline.stats.records_sealed == sealed_before
        return
    assert code == code_pb2.OK, message
    assert directory_sidecar.pipeline.stats.records_sealed == sealed_before + 1
    [archived] = archived_log_records(tmp_path / "archive")
    sealed = LogRecord.FromString(archived.payload.log_record)
    assert case.check is not None and case.check(sealed)
