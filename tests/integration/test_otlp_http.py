"""OTLP/HTTP POST /v1/logs: real SDK exporter, OTLP/JSON, and bad input with exact status codes."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN, LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.metrics import Metrics
from collector_ext.pb import archive_pb2
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.receive.otlp_http import OtlpHttpReceiver
from collector_ext.retry import RetryPolicy
from collector_ext.seal.entry import EntryKind, decode_entry_header, entry_payload
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.segment import decode_segment
from collector_ext.service import Sidecar
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive
from tests.integration.conftest import (
    KeyPairFiles,
    length_delimited,
    logs_request,
    metric_values,
    verify_archive_at,
    wrap_record,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
LIMIT = 256 * 1024  # directory_sidecar's max_message_bytes


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0]

    def rpc_status(self) -> status_pb2.Status:
        if self.content_type == JSON:
            return json_format.Parse(self.body, status_pb2.Status())
        assert self.content_type == PROTOBUF
        return status_pb2.Status.FromString(self.body)


def _post(
    port: int,
    body: bytes | Iterator[bytes],
    content_type: str | None = PROTOBUF,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/v1/logs",
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    try:
        connection.request(method, path, body=body, headers=all_headers, encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def _archived_payloads(archive: Path) -> list[archive_pb2.LogPayload]:
    entries = []
    for path in archive.rglob("*.cxseg"):
        for record in decode_segment(path.read_bytes()).records:
            header = decode_entry_header(record.entry)
            if header.kind == EntryKind.LOG_RECORD:
                entries.append((header.sequence, archive_pb2.LogPayload.FromString(entry_payload(record.entry))))
    return [payload for _, payload in sorted(entries, key=lambda item: item[0])]


def _assert_bad_request(reply: Reply, sidecar: Sidecar, status: int, content_type: str, text: str) -> None:
    assert reply.status == status, reply.body
    assert reply.content_type == content_type
    rpc_status = reply.rpc_status()
    assert text in rpc_status.message
    assert sidecar.pipeline.stats.records_sealed == 1  # only the genesis entry


# --- the OpenTelemetry SDK's own OTLP/HTTP exporter


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_sdk_http_exporter_records_are_archived_verified_and_counted(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles, compression: str
) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource as SdkResource

    sent = 500
    archive = tmp_path / "archive"
    with run_sidecar(str(archive)) as sidecar:
        provider = LoggerProvider(resource=SdkResource.create({"service.name": "ai-workflow"}))
        provider.add_log_record_processor(
            BatchLogRecordProcessor(
                OTLPLogExporter(
                    endpoint=f"http://127.0.0.1:{sidecar.http_port}/v1/logs",
                    compression=Compression(compression),
                    timeout=10,
                ),
                max_export_batch_size=128,
                max_queue_size=2048,
            )
        )
        logger = provider.get_logger("audit")
        for i in range(sent):
            logger.emit(body=f"inference {i}", attributes={"user.id": "alice"}, event_name="gen_ai.chat")
        assert provider.force_flush(timeout_millis=30_000)
        provider.shutdown()
        assert sidecar.pipeline.stats.records_archived == sent + 1
        values = metric_values(sidecar.metrics_port)
        assert values['collector_ext_records_received_total{transport="http"}'] == sent
        assert values['collector_ext_records_received_total{transport="grpc"}'] == 0
        assert values['collector_ext_export_requests_total{outcome="ok",transport="http"}'] >= sent / 128
    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == sent + 1
    payloads = _archived_payloads(archive)
    assert sorted(LogRecord.FromString(p.log_record).body.string_value for p in payloads) == sorted(
        f"inference {i}" for i in range(sent)
    )


# --- OTLP/JSON

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"

JSON_REQUEST: dict[str, Any] = {
    "resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ai-workflow"}}]},
            "schemaUrl": "https://opentelemetry.io/schemas/1.30.0",
            "scopeLogs": [
                {
                    "scope": {"name": "audit", "version": "1.2"},
                    "logRecords": [
                        {
                            "timeUnixNano": "1700000000000000001",  # int64 as a decimal string
                            "observedTimeUnixNano": 1700000000000000002,
                            "severityNumber": 13,  # enum as an integer
                            "severityText": "WARN",
                            "body": {"stringValue": "chat completed ✓"},
                            "attributes": [
                                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "42"}},
                                {"key": "digest", "value": {"bytesValue": "3q2+7w=="}},  # bytes stay base64
                            ],
                            "flags": 1,
                            "traceId": TRACE_ID,  # hex, not base64
                            "spanId": SPAN_ID,
                            "eventName": "gen_ai.client.inference.operation.details",
                            "someFutureField": {"nested": [1, 2, 3]},  # unknown: ignored
                        }
                    ],
                    "futureScopeField": True,
                }
            ],
        }
    ]
}

EXPECTED_RESOURCE = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="ai-workflow"))])
EXPECTED_SCOPE = InstrumentationScope(name="audit", version="1.2")
EXPECTED_RECORD = LogRecord(
    time_unix_nano=1700000000000000001,
    observed_time_unix_nano=1700000000000000002,
    severity_number=SEVERITY_NUMBER_WARN,
    severity_text="WARN",
    body=AnyValue(string_value="chat completed ✓"),
    attributes=[
        KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=42)),
        KeyValue(key="digest", value=AnyValue(bytes_value=b"\xde\xad\xbe\xef")),
    ],
    flags=1,
    trace_id=bytes.fromhex(TRACE_ID),
    span_id=bytes.fromhex(SPAN_ID),
    event_name="gen_ai.client.inference.operation.details",
)


def test_otlp_json_request_is_archived_as_the_intended_record(directory_sidecar: Sidecar, tmp_path: Path) -> None:
    reply = _post(directory_sidecar.http_port, json.dumps(JSON_REQUEST).encode(), "application/json; charset=utf-8")
    assert reply.status == 200, reply.body
    assert reply.content_type == JSON
    assert json.loads(reply.body) == {}
    # The same request in protobuf must seal byte-identical content.
    same = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=EXPECTED_RESOURCE,
                schema_url="https://opentelemetry.io/schemas/1.30.0",
                scope_logs=[ScopeLogs(scope=EXPECTED_SCOPE, log_records=[EXPECTED_RECORD])],
            )
        ]
    )
    reply = _post(directory_sidecar.http_port, same.SerializeToString())
    assert reply.status == 200
    assert reply.content_type == PROTOBUF
    assert ExportLogsServiceResponse.FromString(reply.body) == ExportLogsServiceResponse()
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 2

    from_json, from_protobuf = _archived_payloads(tmp_path / "archive")
    assert LogRecord.FromString(from_json.log_record) == EXPECTED_RECORD
    assert Resource.FromString(from_json.resource) == EXPECTED_RESOURCE
    assert InstrumentationScope.FromString(from_json.scope) == EXPECTED_SCOPE
    assert from_json.resource_schema_url == "https://opentelemetry.io/schemas/1.30.0"
    # Two requests, two connections: the sealed senders differ in the peer's port only.
    assert from_json.sender.peer.startswith("127.0.0.1:") and from_protobuf.sender.peer.startswith("127.0.0.1:")
    from_json.ClearField("sender")
    from_protobuf.ClearField("sender")
    assert from_json.SerializeToString() == from_protobuf.SerializeToString()


def test_otlp_json_snake_case_keys_and_gzip(directory_sidecar: Sidecar, tmp_path: Path) -> None:
    document = {
        "resource_logs": [
            {"scope_logs": [{"log_records": [{"trace_id": TRACE_ID, "span_id": SPAN_ID, "severity_number": 9}]}]}
        ]
    }
    reply = _post(
        directory_sidecar.http_port,
        gzip.compress(json.dumps(document).encode()),
        JSON,
        headers={"Content-Encoding": "gzip"},
    )
    assert reply.status == 200, reply.body
    (payload,) = _archived_payloads(tmp_path / "archive")
    record = LogRecord.FromString(payload.log_record)
    assert record.trace_id == bytes.fromhex(TRACE_ID)
    assert record.span_id == bytes.fromhex(SPAN_ID)
    assert record.severity_number == 9


# --- compression and empty requests


def test_gzip_protobuf_body_is_accepted(directory_sidecar: Sidecar) -> None:
    reply = _post(
        directory_sidecar.http_port,
        gzip.compress(logs_request("compressed", "twice")),
        headers={"Content-Encoding": "GZIP"},
    )
    assert reply.status == 200, reply.body
    reply = _post(directory_sidecar.http_port, logs_request("identity"), headers={"Content-Encoding": "identity"})
    assert reply.status == 200, reply.body
    # Two gzip members back to back are one gzip stream (RFC 1952).
    reply = _post(
        directory_sidecar.http_port,
        gzip.compress(logs_request("member one")) + gzip.compress(logs_request("member two")),
        headers={"Content-Encoding": "gzip"},
    )
    assert reply.status == 200, reply.body
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 2 + 1 + 2


def test_chunked_body_is_accepted(directory_sidecar: Sidecar) -> None:
    body = logs_request("sent", "in", "chunks")
    reply = _post(directory_sidecar.http_port, iter([body[:5], body[5:]]))
    assert reply.status == 200, reply.body
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 3


def test_empty_requests_are_success_and_seal_nothing(directory_sidecar: Sidecar) -> None:
    for body, content_type in ((b"", PROTOBUF), (b"", JSON), (b"{}", JSON), (logs_request(), PROTOBUF)):
        reply = _post(directory_sidecar.http_port, body, content_type)
        assert reply.status == 200, reply.body
        assert reply.content_type == content_type
    reply = _post(directory_sidecar.http_port, b"", headers={"Content-Encoding": "gzip"})
    assert reply.status == 200
    assert directory_sidecar.pipeline.stats.records_sealed == 1


# --- bad input: exact status, a google.rpc.Status body, nothing sealed


def test_garbage_protobuf_is_400_with_status(directory_sidecar: Sidecar) -> None:
    reply = _post(directory_sidecar.http_port, b"\xff\xff\xff\xff garbage")
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "not a valid ExportLogsServiceRequest")
    assert reply.rpc_status().code == code_pb2.INVALID_ARGUMENT
    assert "nothing was sealed" in reply.rpc_status().message


def test_invalid_utf8_in_protobuf_is_400(directory_sidecar: Sidecar) -> None:
    reply = _post(
        directory_sidecar.http_port, wrap_record(length_delimited(5, length_delimited(1, b"\xff\xfe not utf-8")))
    )
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "not a valid ExportLogsServiceRequest")


def test_absurd_nesting_is_400(directory_sidecar: Sidecar) -> None:
    value = length_delimited(1, b"leaf")
    for _ in range(5000):
        value = length_delimited(6, length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value)))
    reply = _post(directory_sidecar.http_port, wrap_record(length_delimited(5, value)))
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "not a valid ExportLogsServiceRequest")

    nested: Any = {"stringValue": "leaf"}
    for _ in range(200):
        nested = {"kvlistValue": {"values": [{"key": "k", "value": nested}]}}
    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": nested}]}]}]}
    reply = _post(directory_sidecar.http_port, json.dumps(document).encode(), JSON)
    _assert_bad_request(reply, directory_sidecar, 400, JSON, "not a valid ExportLogsServiceRequest")

    reply = _post(directory_sidecar.http_port, b"[" * 100_000, JSON)
    _assert_bad_request(reply, directory_sidecar, 400, JSON, "RecursionError")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceLogs": [', "JSONDecodeError"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "\xff"}}]}]}]}', "utf-8"),
        (b'{"resourceLogs": 3}', "resourceLogs"),
        (b"[]", "not an object"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}', "timeUnixNano"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "not hex"}]}]}]}', "traceId must be 32 hex"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "abcd"}]}]}]}', "spanId must be 16 hex"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "\\ud800"}}]}]}]}', "surrogate"),
    ],
)
def test_invalid_json_is_400_with_a_useful_message(directory_sidecar: Sidecar, body: bytes, message: str) -> None:
    reply = _post(directory_sidecar.http_port, body, JSON)
    _assert_bad_request(reply, directory_sidecar, 400, JSON, message)
    assert reply.rpc_status().code == code_pb2.INVALID_ARGUMENT


def test_broken_gzip_is_400(directory_sidecar: Sidecar) -> None:
    reply = _post(directory_sidecar.http_port, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "not valid gzip")
    truncated = gzip.compress(logs_request("cut off"))[:-6]
    reply = _post(directory_sidecar.http_port, truncated, headers={"Content-Encoding": "gzip"})
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "truncated gzip")


def test_unsupported_content_type_or_encoding_is_415(directory_sidecar: Sidecar) -> None:
    for content_type in ("text/plain", "application/protobuf", None):
        reply = _post(directory_sidecar.http_port, logs_request("x"), content_type)
        _assert_bad_request(reply, directory_sidecar, 415, JSON, "unsupported Content-Type")
    for encoding in ("br", "zstd", "gzip, gzip"):
        reply = _post(directory_sidecar.http_port, logs_request("x"), headers={"Content-Encoding": encoding})
        _assert_bad_request(reply, directory_sidecar, 415, PROTOBUF, "unsupported Content-Encoding")


def test_body_over_the_limit_is_413(directory_sidecar: Sidecar) -> None:
    oversized = logs_request("x" * (LIMIT + 1024))
    reply = _post(directory_sidecar.http_port, oversized)  # refused on Content-Length
    _assert_bad_request(reply, directory_sidecar, 413, PROTOBUF, "max_message_bytes")
    assert reply.rpc_status().code == code_pb2.RESOURCE_EXHAUSTED
    assert "retry-after" not in reply.headers
    reply = _post(directory_sidecar.http_port, iter([oversized[: LIMIT // 2], oversized[LIMIT // 2 :]]))  # chunked
    _assert_bad_request(reply, directory_sidecar, 413, PROTOBUF, "max_message_bytes")
    # Just under the limit still passes.
    reply = _post(directory_sidecar.http_port, logs_request("y" * (LIMIT - 1024)))
    assert reply.status == 200, reply.body


def test_gzip_bomb_is_413(directory_sidecar: Sidecar) -> None:
    inflated = logs_request("y" * 400 * 1024)
    small = gzip.compress(inflated)
    assert len(small) < 16 * 1024 < LIMIT < len(inflated)
    reply = _post(directory_sidecar.http_port, small, headers={"Content-Encoding": "gzip"})
    _assert_bad_request(reply, directory_sidecar, 413, PROTOBUF, "inflates to more than max_message_bytes")

    bomb = gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9)  # 200 MiB of zeros, ~200 KiB on the wire
    assert len(bomb) < LIMIT
    reply = _post(directory_sidecar.http_port, bomb, JSON, headers={"Content-Encoding": "gzip"})
    _assert_bad_request(reply, directory_sidecar, 413, JSON, "inflates to more than max_message_bytes")


def test_wrong_method_is_405_and_other_paths_404(directory_sidecar: Sidecar) -> None:
    reply = _post(directory_sidecar.http_port, b"", method="GET")
    assert reply.status == 405
    assert reply.headers.get("allow") == "POST"
    reply = _post(directory_sidecar.http_port, b"", method="PUT")
    assert reply.status == 405
    assert _post(directory_sidecar.http_port, logs_request("x"), path="/v1/traces").status == 404
    assert _post(directory_sidecar.http_port, logs_request("x"), path="/").status == 404
    assert directory_sidecar.pipeline.stats.records_sealed == 1


def test_bad_input_leaves_a_verifiable_chain_and_metrics_by_outcome(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    with run_sidecar(str(tmp_path / "archive"), max_message_bytes=LIMIT) as sidecar:
        port = sidecar.http_port
        assert _post(port, logs_request("one", "two")).status == 200
        assert _post(port, b"\x0a\xff").status == 400
        assert _post(port, b"{", JSON).status == 400
        assert _post(port, logs_request("z" * (LIMIT + 1))).status == 413
        assert _post(port, logs_request("x"), "text/plain").status == 415
        assert _post(port, b"").status == 200
        assert _post(port, json.dumps(JSON_REQUEST).encode(), JSON).status == 200
        values = metric_values(sidecar.metrics_port)
    report = verify_archive_at(str(tmp_path / "archive"), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == 1 + 3
    assert values['collector_ext_records_received_total{transport="http"}'] == 3
    assert values['collector_ext_export_requests_total{outcome="ok",transport="http"}'] == 2
    assert values['collector_ext_export_requests_total{outcome="invalid",transport="http"}'] == 3
    assert values['collector_ext_export_requests_total{outcome="too_large",transport="http"}'] == 1
    assert values['collector_ext_export_requests_total{outcome="empty",transport="http"}'] == 1
    assert values['collector_ext_export_duration_seconds_count{transport="http"}'] == 7


def test_http_can_be_disabled(run_sidecar: Callable[..., Any], tmp_path: Path) -> None:
    with run_sidecar(str(tmp_path / "archive"), http_listen=None) as sidecar:
        assert sidecar.http_receiver is None
        assert sidecar.http_port == 0


# --- transient trouble: 503 + Retry-After, then recovery


def test_archive_outage_answers_503_with_retry_after_then_recovers(signer: Ed25519Signer) -> None:
    import aiohttp

    store = InMemoryArchive()
    request = logs_request("a", "b", "c")

    async def run() -> None:
        pipeline = SealingPipeline(
            signer, store, PipelineSettings(ack_timeout=0.2, retry=RetryPolicy(initial_delay=0.01, max_delay=0.05))
        )
        await pipeline.start()
        receiver = OtlpHttpReceiver(pipeline, listen="127.0.0.1:0", max_message_bytes=1 << 20, metrics=Metrics())
        port = await receiver.start()
        url = f"http://127.0.0.1:{port}/v1/logs"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=request, headers={"Content-Type": PROTOBUF}) as response:
                assert response.status == 200

            store.fail_puts = 10**9  # the archive goes down
            async with session.post(url, data=request, headers={"Content-Type": PROTOBUF}) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) >= 1
                assert response.headers["Content-Type"] == PROTOBUF
                status = status_pb2.Status.FromString(await response.read())
            assert status.code == code_pb2.UNAVAILABLE
            assert "retry later" in status.message
            retry_info = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(retry_info)
            assert retry_info.retry_delay.ToNanoseconds() > 0

            body = json.dumps(JSON_REQUEST).encode()
            async with session.post(url, data=body, headers={"Content-Type": JSON}) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) >= 1
                status = json_format.Parse(await response.read(), status_pb2.Status())
            assert status.code == code_pb2.UNAVAILABLE

            store.fail_puts = 0  # back
            for _ in range(300):
                if pipeline.ready:
                    break
                await asyncio.sleep(0.01)
            async with session.post(url, data=request, headers={"Content-Type": PROTOBUF}) as response:
                assert response.status == 200
        await receiver.stop(1)
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    # genesis + 3 + the 3 sealed as the outage began (archived after it: a resend would appear twice)
    # + 3; the JSON request came once the archive was known to be failing and was refused unsealed.
    assert report.records_checked == 10


def test_capacity_exceeded_answers_503(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(signer, store, PipelineSettings(max_pending_records=2))
        await pipeline.start()
        receiver = OtlpHttpReceiver(pipeline, listen="127.0.0.1:0", max_message_bytes=1 << 20, metrics=Metrics())
        port = await receiver.start()
        try:
            reply = await asyncio.to_thread(_post, port, logs_request("a", "b", "c"))
        finally:
            await receiver.stop(1)
            await pipeline.close()
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert "max_pending_records" in reply.rpc_status().message
        assert pipeline.stats.records_sealed == 1

    asyncio.run(run())


def test_deflate_body_is_accepted_and_bounded(directory_sidecar: Sidecar) -> None:
    import zlib

    reply = _post(
        directory_sidecar.http_port, zlib.compress(logs_request("deflated")), headers={"Content-Encoding": "deflate"}
    )
    assert reply.status == 200, reply.body
    assert directory_sidecar.pipeline.stats.records_archived == 1 + 1


def test_deflate_bomb_and_garbage_are_refused(directory_sidecar: Sidecar) -> None:
    import zlib

    bomb = zlib.compress(logs_request("z" * 400 * 1024))
    reply = _post(directory_sidecar.http_port, bomb, headers={"Content-Encoding": "deflate"})
    _assert_bad_request(reply, directory_sidecar, 413, PROTOBUF, "inflates to more than max_message_bytes")
    reply = _post(directory_sidecar.http_port, b"not deflate", headers={"Content-Encoding": "deflate"})
    _assert_bad_request(reply, directory_sidecar, 400, PROTOBUF, "not valid deflate")
