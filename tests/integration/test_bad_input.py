"""Bad OTLP input gets the right gRPC status and never harms the chain."""

from __future__ import annotations

import gzip
from pathlib import Path

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.seal.payload import encode_varint
from collector_ext.service import Sidecar
from tests.integration.conftest import KeyPairFiles, verify_archive_at

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _request(*bodies: str) -> bytes:
    records = [LogRecord(time_unix_nano=1 + i, body=AnyValue(string_value=b)) for i, b in enumerate(bodies)]
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def _field(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def _wrap_record(record: bytes) -> bytes:
    """ExportLogsServiceRequest{resource_logs{scope_logs{log_records: record}}} from raw record bytes."""
    return _field(1, _field(2, _field(2, record)))


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
    assert _call(directory_sidecar, _request("after the garbage")) is None
    assert directory_sidecar.pipeline.stats.records_sealed == 1 + 1


def test_invalid_utf8_is_invalid_argument(directory_sidecar: Sidecar) -> None:
    bad_body = _field(5, _field(1, b"\xff\xfe not utf-8"))  # LogRecord.body = AnyValue{string_value}
    error = _call(directory_sidecar, _wrap_record(bad_body))
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert directory_sidecar.pipeline.stats.records_sealed == 1  # only the genesis entry


def test_absurd_nesting_is_invalid_argument(directory_sidecar: Sidecar) -> None:
    value = _field(1, b"leaf")  # AnyValue{string_value}
    for _ in range(5000):
        # AnyValue{kvlist_value: KeyValueList{values: KeyValue{key: "k", value: value}}}
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    error = _call(directory_sidecar, _wrap_record(_field(5, value)))
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_oversized_request_is_resource_exhausted(directory_sidecar: Sidecar) -> None:
    error = _call(directory_sidecar, _request("x" * 300 * 1024))  # the fixture allows 256 KiB
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_oversized_after_decompression_is_resource_exhausted(directory_sidecar: Sidecar) -> None:
    payload = _request("y" * 400 * 1024)
    assert len(gzip.compress(payload)) < 64 * 1024  # small on the wire, large once inflated
    error = _call(directory_sidecar, payload, compression=grpc.Compression.Gzip)
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_gzip_request_is_accepted(directory_sidecar: Sidecar) -> None:
    assert _call(directory_sidecar, _request("compressed", "twice"), compression=grpc.Compression.Gzip) is None
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 2


def test_empty_request_is_success_and_seals_nothing(directory_sidecar: Sidecar) -> None:
    assert _call(directory_sidecar, b"") is None
    assert (
        _call(directory_sidecar, ExportLogsServiceRequest(resource_logs=[ResourceLogs()]).SerializeToString()) is None
    )
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_bad_input_leaves_a_verifiable_chain(run_sidecar, tmp_path: Path, key_pair: KeyPairFiles) -> None:  # type: ignore[no-untyped-def]
    with run_sidecar(str(tmp_path / "archive"), max_message_bytes=256 * 1024) as sidecar:
        assert _call(sidecar, _request("one", "two")) is None
        for bad in (b"\x0a\xff", _request("z" * 300 * 1024), _wrap_record(_field(5, _field(1, b"\xc3\x28")))):
            assert _call(sidecar, bad) is not None
        assert _call(sidecar, _request("three")) is None
    _assert_chain_intact(tmp_path, key_pair, records=3)


def test_metrics_count_requests_by_outcome_and_records(directory_sidecar: Sidecar) -> None:
    import urllib.request

    assert _call(directory_sidecar, _request("a", "b", "c")) is None
    assert _call(directory_sidecar, b"\xff garbage") is not None
    assert _call(directory_sidecar, b"") is None
    with urllib.request.urlopen(f"http://127.0.0.1:{directory_sidecar.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['collector_ext_records_received_total{transport="grpc"}'] == 3
    assert values['collector_ext_export_requests_total{outcome="ok",transport="grpc"}'] == 1
    assert values['collector_ext_export_requests_total{outcome="invalid",transport="grpc"}'] == 1
    assert values['collector_ext_export_requests_total{outcome="empty",transport="grpc"}'] == 1
    assert values["collector_ext_records_sealed_total"] == 4  # with the genesis entry
    assert values["collector_ext_records_archived_total"] == 4
    assert values["collector_ext_pending_records"] == 0
    assert values["collector_ext_ready"] == 1
    assert values['collector_ext_export_duration_seconds_count{transport="grpc"}'] == 3
