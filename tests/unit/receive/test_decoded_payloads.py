"""What the gRPC receiver hands to the pipeline: one LogPayload per log record, in request order,
carrying the record's resource, scope (with both schema URLs), the record itself and the sender,
read back with the generated LogPayload class."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.pb import archive_pb2
from collector_ext.receive.admission import DEFAULT_ADMISSION, AdmissionControl
from collector_ext.receive.otlp_grpc import decode_message
from collector_ext.seal.sender import Sender

SENDER = Sender(peer="127.0.0.1:53422", token_name="collector", certificate_sha256=bytes(range(32)))


def _request(nested: bool) -> ExportLogsServiceRequest:
    big = LogRecord(body=AnyValue(string_value="x" * 70_000))  # its length needs a three-byte varint
    value = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="inner")])) if nested else AnyValue(int_value=7)
    attributed = LogRecord(severity_number=9, attributes=[KeyValue(key="k", value=value)])
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="a"))]),
                schema_url="https://example.com/resource",
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name="lib", version="1"),
                        schema_url="https://example.com/scope",
                        log_records=[attributed, LogRecord(), big],
                    ),
                    ScopeLogs(log_records=[LogRecord(event_name="second scope")]),
                ],
            ),
            ResourceLogs(scope_logs=[ScopeLogs(log_records=[attributed])]),
        ]
    )


@pytest.mark.parametrize("nested", [False, True], ids=["scalar values", "a nested value"])
@pytest.mark.parametrize("sender", [None, SENDER])
def test_one_payload_per_record_carries_its_resource_scope_record_and_sender(
    sender: Sender | None, nested: bool
) -> None:
    """Both decoders (parse_scalar_request, and parse_protobuf_request for a request with a nested
    value) give the same payloads."""
    request = _request(nested)
    with AdmissionControl(DEFAULT_ADMISSION).admit() as reservation:
        payloads = decode_message(request.SerializeToString(), 1 << 24, reservation, sender)
    expected = [
        (resource_logs, scope_logs, record)
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]
    assert len(payloads) == len(expected) == 5
    for payload, (resource_logs, scope_logs, record) in zip(payloads, expected, strict=True):
        decoded = archive_pb2.LogPayload.FromString(payload)
        assert decoded.resource == resource_logs.resource.SerializeToString()
        assert decoded.resource_schema_url == resource_logs.schema_url
        assert decoded.scope == scope_logs.scope.SerializeToString()
        assert decoded.scope_schema_url == scope_logs.schema_url
        assert decoded.log_record == record.SerializeToString()
        assert decoded.HasField("sender") is (sender is not None)
        if sender is not None:
            assert decoded.sender.SerializeToString() == sender.encode()
    # Field 5, the record, is written even when the record encodes to nothing (the sender follows it).
    sender_field = b"\x32" + bytes([len(sender.encode())]) + sender.encode() if sender is not None else b""
    assert payloads[1].endswith(b"\x2a\x00" + sender_field)
