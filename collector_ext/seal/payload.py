"""Canonical payloads for OTLP log records: each record together with its resource and scope.

Every sealed log record carries the complete OTLP encoding of its Resource, InstrumentationScope
(with both schema URLs) and LogRecord, so the seal covers every field the collector sent, unknown
fields included. The LogPayload message of proto/collector_ext/pb/archive.proto is written by hand
here, field by field in ascending order, because one resource/scope prefix is shared by all records
under it and only the record part changes. Fields 1-4 are left out when empty (as proto3 does);
field 5, the log record, is always written, even when the record encodes to zero bytes, so every
payload carries its record. With a ``Sender`` (who submitted the request, proto/FORMAT.md 7.3a),
field 6 follows the record in every payload of the request.

This module does not seal or sign; see ``chain``.
"""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector_ext.seal.sender import Sender
from collector_ext.seal.wire import encode_varint, length_delimited

_LOG_RECORD_TAG = encode_varint(5 << 3 | 2)


def log_payloads(request: ExportLogsServiceRequest, sender: Sender | None = None) -> list[bytes]:
    """One LogPayload encoding per log record of the request, in request order.

    Args:
        sender: who submitted the request; its encoding becomes field 6 of every payload.
    """
    suffix = length_delimited(6, sender.encode()) if sender is not None else b""
    payloads: list[bytes] = []
    append = payloads.append
    for resource_logs in request.resource_logs:
        resource_part = length_delimited(1, resource_logs.resource.SerializeToString()) + length_delimited(
            2, resource_logs.schema_url.encode()
        )
        for scope_logs in resource_logs.scope_logs:
            prefix = (
                resource_part
                + length_delimited(3, scope_logs.scope.SerializeToString())
                + length_delimited(4, scope_logs.schema_url.encode())
                + _LOG_RECORD_TAG
            )
            records = scope_logs.log_records
            if not records:
                continue
            # The unbound method (of the records' own class: the receivers may decode into another
            # pool's) mapped over the records: no bound method object per record (about a third of
            # this loop's cost on typical records).
            serialize = type(records[0]).SerializeToString
            if suffix:
                for encoded in map(serialize, records):
                    append(prefix + encode_varint(len(encoded)) + encoded + suffix)
            else:
                for encoded in map(serialize, records):
                    append(prefix + encode_varint(len(encoded)) + encoded)
    return payloads


def count_log_records(request: ExportLogsServiceRequest) -> int:
    """Number of log records in a request."""
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
