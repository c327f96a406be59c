"""Bad OTLP input gets the right gRPC status and never harms the chain."""

from __future__ import annotations

import gzip
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs

from collector_ext.service import Sidecar
from tests.integration.conftest import (
    KeyPairFiles,
    length_delimited,
    logs_request,
    metric_values,
    verify_archive_at,
    wrap_record,
)

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _call(sidecar: Sidecar, payload: bytes, compression: grpc.Compression | None = None) -> grpc.RpcError | None:
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}", options=[("grpc.max_send_message_length", -1)]) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        try:
            export(payload, timeout=10, compression=compression)
        except grpc.RpcError as exc:
            return exc
    return None


def _assert_chain_intact(tmp_path: Path, key_pair: KeyPairFiles, records: int) -> None:
    report = verify_archive_at(str(tmp_path / "archive"), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == records + 1  # + genesis


def test_garbage_bytes_are_invalid_argument(directory_sidecar: Sidecar) -> None:
    error = _call(directory_sidecar, b"\xff\xff\xff\xff garbage")
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportLogsServiceRequest" in error.details()
    assert directory_sidecar.pipeline.stats.records_sealed == 1  # only the genesis entry
    assert _call(directory_sidecar, logs_request("after the garbage")) is None
    assert directory_sidecar.pipeline.stats.records_sealed == 1 + 1


def test_invalid_utf8_is_invalid_argument(directory_sidecar: Sidecar) -> None:
    bad_body = length_delimited(
        5, length_delimited(1, b"\xff\xfe not utf-8")
    )  # LogRecord.body = AnyValue{string_value}
    error = _call(directory_sidecar, wrap_record(bad_body))
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert directory_sidecar.pipeline.stats.records_sealed == 1  # only the genesis entry


def test_absurd_nesting_is_invalid_argument(directory_sidecar: Sidecar) -> None:
    value = length_delimited(1, b"leaf")  # AnyValue{string_value}
    for _ in range(5000):
        # AnyValue{kvlist_value: KeyValueList{values: KeyValue{key: "k", value: value}}}
        value = length_delimited(6, length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value)))
    error = _call(directory_sidecar, wrap_record(length_delimited(5, value)))
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_oversized_request_is_resource_exhausted(directory_sidecar: Sidecar) -> None:
    error = _call(directory_sidecar, logs_request("x" * 300 * 1024))  # the fixture allows 256 KiB
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_oversized_after_decompression_is_resource_exhausted(directory_sidecar: Sidecar) -> None:
    payload = logs_request("y" * 400 * 1024)
    assert len(gzip.compress(payload)) < 64 * 1024  # small on the wire, large once inflated
    error = _call(directory_sidecar, payload, compression=grpc.Compression.Gzip)
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_gzip_request_is_accepted(directory_sidecar: Sidecar) -> None:
    assert _call(directory_sidecar, logs_request("compressed", "twice"), compression=grpc.Compression.Gzip) is None
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 2


def test_empty_request_is_success_and_seals_nothing(directory_sidecar: Sidecar) -> None:
    assert _call(directory_sidecar, b"") is None
    assert (
        _call(directory_sidecar, ExportLogsServiceRequest(resource_logs=[ResourceLogs()]).SerializeToString()) is None
    )
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_bad_input_leaves_a_verifiable_chain(run_sidecar, tmp_path: Path, key_pair: KeyPairFiles) -> None:  # type: ignore[no-untyped-def]
    with run_sidecar(str(tmp_path / "archive"), max_message_bytes=256 * 1024) as sidecar:
        assert _call(sidecar, logs_request("one", "two")) is None
        for bad in (
            b"\x0a\xff",
            logs_request("z" * 300 * 1024),
            wrap_record(length_delimited(5, length_delimited(1, b"\xc3\x28"))),
        ):
            assert _call(sidecar, bad) is not None
        assert _call(sidecar, logs_request("three")) is None
    _assert_chain_intact(tmp_path, key_pair, records=3)


def test_metrics_count_requests_by_outcome_and_records(directory_sidecar: Sidecar) -> None:
    assert _call(directory_sidecar, logs_request("a", "b", "c")) is None
    assert _call(directory_sidecar, b"\xff garbage") is not None
    assert _call(directory_sidecar, b"") is None
    values = metric_values(directory_sidecar.metrics_port)
    assert values['collector_ext_records_received_total{transport="grpc"}'] == 3
    assert values['collector_ext_export_requests_total{outcome="ok",transport="grpc"}'] == 1
    assert values['collector_ext_export_requests_total{outcome="invalid",transport="grpc"}'] == 1
    assert values['collector_ext_export_requests_total{outcome="empty",transport="grpc"}'] == 1
    assert values["collector_ext_records_sealed_total"] == 4  # with the genesis entry
    assert values["collector_ext_records_archived_total"] == 4
    assert values["collector_ext_pending_records"] == 0
    assert values["collector_ext_ready"] == 1
    assert values['collector_ext_export_duration_seconds_count{transport="grpc"}'] == 3
