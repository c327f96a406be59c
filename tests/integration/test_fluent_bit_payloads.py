"""Fluent Bit container logs through the seal, without Fluent Bit: its opentelemetry output's payloads,
built by hand, sent to a real sidecar over OTLP/HTTP, archived, verified and mapped for Loki.

Fluent Bit cannot run here. Every request below is built the way plugins/out_opentelemetry builds it
according to the reference (audit-sources.md section 5, "Fluent Bit `opentelemetry` output"); each
field's origin is cited where it is set. What the reference says Fluent Bit never sends is not tested
as a Fluent Bit shape: OTLP/JSON (it only sends protobuf), severity for container lines, resource
attributes for tail records. The status codes that decide whether Fluent Bit retries (429/502/503/504)
or drops (anything else) are checked against a real sidecar too.
"""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.deliver.loki.mapping import SEAL_FIELDS, EntryMapper, LokiEntry
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import entry_hash
from collector_ext.service import Sidecar
from tests.integration.conftest import KeyPairFiles, archived_log_records, verify_archive_at

# The headers Fluent Bit's opentelemetry output sends on the OTLP/HTTP path (reference: protobuf body,
# `Content-Type: application/x-protobuf`; `compress gzip` adds Content-Encoding).
FLUENT_BIT_HEADERS = {"Content-Type": "application/x-protobuf", "User-Agent": "Fluent-Bit"}
# Fluent Bit's retry set (reference: opentelemetry.c response handling); any other status drops the chunk.
FLUENT_BIT_RETRIES = frozenset({429, 502, 503, 504})

# 2026-12-02T05:23:20.123456789Z: the CRI line's timestamp, which tail's cri parser makes the event time.
EVENT_NS = 1_795_238_600_123_456_789


def _s(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _kvlist(**values: AnyValue) -> AnyValue:
    return AnyValue(kvlist_value=KeyValueList(values=[_kv(k, v) for k, v in values.items()]))


def _container_attributes(namespace: str, pod: str, container: str, stream: str = "stdout") -> list[KeyValue]:
    """The record fields left after the body key `$log` is taken, in record order, as log attributes.

    Reference: with `logs_body_key $log` matching and `logs_body_key_attributes true`, the record's other
    fields become attributes (without it they are dropped). The record is what tail (cri parser:
    time, stream, _p, log) then the kubernetes filter, nest lift (prefix `kubernetes.`) and modify
    renames in deploy/fluent-bit/values.yaml leave. Tail records carry no Fluent Bit metadata keys, so
    no metadata attributes come first.
    """
    return [
        _kv("time", _s("2026-12-02T05:23:20.123456789Z")),
        _kv("stream", _s(stream)),
        _kv("_p", _s("F")),
        _kv("k8s.pod.name", _s(pod)),
        _kv("k8s.namespace.name", _s(namespace)),
        _kv("k8s.pod.uid", _s("8f1c2d3e-0000-4000-8000-00000000a1b2")),
        _kv("kubernetes.labels", _kvlist(app=_s(container), **{"app.kubernetes.io/part-of": _s("ai-workflow")})),
        _kv("kubernetes.annotations", _kvlist(**{"kubectl.kubernetes.io/default-container": _s(container)})),
        _kv("k8s.node.name", _s("ip-10-0-1-23.eu-west-1.compute.internal")),
        _kv("k8s.container.name", _s(container)),
        _kv("kubernetes.docker_id", _s("3f9a" * 16)),
        _kv("kubernetes.container_hash", _s("registry.example/ai-worker@sha256:" + "ab" * 32)),
        _kv("kubernetes.container_image", _s("registry.example/ai-worker:1.4.2")),
    ]


def _line_record(line: str, offset_ns: int, namespace: str, pod: str, container: str) -> LogRecord:
    """A container line as the shipped values.yaml sends it.

    Reference: body = the first logs_body_key that exists (`$log`), here a string; time_unix_nano = the
    event time in nanoseconds (no `$Timestamp` metadata on tail records); observed_time_unix_nano only
    from metadata, so 0; severity only from metadata or severity message keys, so unset; no trace ids.
    """
    return LogRecord(
        time_unix_nano=EVENT_NS + offset_ns,
        body=_s(line),
        attributes=_container_attributes(namespace, pod, container),
    )


def _whole_record() -> LogRecord:
    """A record with no `log` (or `message`) key: the chart's default Merge_Log On merges a JSON line
    into the record and, with Keep_Log Off, removes `log`.

    Reference: when no body key pattern matches, the WHOLE record map becomes the body as a kvlist, and
    no record field becomes an attribute. msgpack integers, floats, booleans and arrays become the
    matching AnyValue kinds; the nested `kubernetes` map stays nested.
    """
    record = _kvlist(
        time=_s("2026-12-02T05:23:21.000000001Z"),
        stream=_s("stdout"),
        _p=_s("F"),
        event=_s("ai_task_started"),
        user_id=_s("alice"),
        tokens=AnyValue(int_value=1234),
        score=AnyValue(double_value=0.875),
        cached=AnyValue(bool_value=False),
        tools=AnyValue(array_value=ArrayValue(values=[_s("search"), _s("calculator")])),
        kubernetes=_kvlist(
            pod_name=_s("ai-worker-7d9f8-x2k4q"),
            namespace_name=_s("ai-prod"),
            pod_id=_s("8f1c2d3e-0000-4000-8000-00000000a1b2"),
            labels=_kvlist(app=_s("ai-worker")),
            host=_s("ip-10-0-1-23.eu-west-1.compute.internal"),
            container_name=_s("worker"),
            docker_id=_s("3f9a" * 16),
            container_image=_s("registry.example/ai-worker:1.4.2"),
        ),
    )
    return LogRecord(time_unix_nano=EVENT_NS + 1_000_000_000, body=record)


def _observed_record() -> LogRecord:
    """A record whose Fluent Bit metadata carries `$ObservedTimestamp` and `$Attributes` (for example one
    that came in through Fluent Bit's opentelemetry input).

    Reference: observed_time_unix_nano comes from metadata only; the map under `$Attributes` in
    metadata is appended to the attributes after the record's own fields.
    """
    return LogRecord(
        time_unix_nano=EVENT_NS + 2_000_000_000,
        observed_time_unix_nano=EVENT_NS + 2_000_000_500,
        body=_s("db migration 0042 applied"),
        attributes=[
            *_container_attributes("ai-prod", "migrate-29381-abcde", "migrate", stream="stderr"),
            _kv("migration.id", _s("0042")),
        ],
    )


FLUENT_BIT_RECORDS: list[LogRecord] = [
    _line_record("GET /healthz 200", 0, "ai-prod", "ai-worker-7d9f8-x2k4q", "worker"),
    # The cri multiline parser joins partial (`_p` P) lines: the body keeps the newlines.
    _line_record(
        'Traceback (most recent call last):\n  File "w.py", line 3\nValueError: bad', 1, "ai-prod", "api-0", "api"
    ),
    _line_record('{"event":"login","user":"zoë","ok":false}', 2, "ai-staging", "auth-5c6b-q9z", "auth"),
    _line_record("x" * 16_000, 3, "ai-prod", "ai-worker-7d9f8-x2k4q", "worker"),
    _whole_record(),
    _observed_record(),
]


def fluent_bit_request(records: list[LogRecord]) -> bytes:
    """ExportLogsServiceRequest as Fluent Bit packs plain (non-OTLP) records.

    Reference: plain records get one resource and one scope with no attributes (no service.name, no
    k8s.*); the output allocates both, so both fields are present and empty on the wire, which a
    Python message reproduces by setting them explicitly.
    """
    resource_logs = ResourceLogs(resource=Resource(), scope_logs=[ScopeLogs(scope=InstrumentationScope())])
    resource_logs.scope_logs[0].log_records.extend(records)
    encoded = ExportLogsServiceRequest(resource_logs=[resource_logs]).SerializeToString()
    assert encoded.startswith(b"\x0a") and b"\x0a\x00" in encoded  # empty resource present, as Fluent Bit sends
    return encoded


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def post_as_fluent_bit(port: int, body: bytes, *, headers: dict[str, str] | None = None) -> Reply:
    """POST /v1/logs over HTTP/1.1 with Fluent Bit's headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/logs", body=body, headers={**FLUENT_BIT_HEADERS, **(headers or {})})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def _archived(archive: Path) -> list[tuple[bytes, bytes, archive_pb2.LogPayload]]:
    """(entry, signature, payload) of every archived log record, in chain order."""
    return [(r.entry, r.signature, r.payload) for r in archived_log_records(archive)]


def _send_and_stop(run_sidecar: Callable[..., Any], archive: Path, body: bytes, headers: dict[str, str]) -> None:
    """Start a sidecar on a directory archive, send one request as Fluent Bit, stop (final checkpoint)."""
    with run_sidecar(str(archive), max_message_bytes=1024 * 1024) as sidecar:
        reply = post_as_fluent_bit(sidecar.http_port, body, headers=headers)
        assert reply.status == 200, reply.body  # 200-205 is success for Fluent Bit


@pytest.fixture
def directory_sidecar(run_sidecar: Callable[..., Any], tmp_path: Path) -> Iterator[Sidecar]:
    with run_sidecar(str(tmp_path / "archive"), max_message_bytes=1024 * 1024) as sidecar:
        yield sidecar


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_fluent_bit_payloads_are_archived_byte_exact_and_verify(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles, compression: str
) -> None:
    archive = tmp_path / "archive"
    body = fluent_bit_request(FLUENT_BIT_RECORDS)
    headers = {}
    if compression == "gzip":  # `compress gzip` in values.yaml
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    _send_and_stop(run_sidecar, archive, body, headers)

    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == 1 + len(FLUENT_BIT_RECORDS)

    archived = _archived(archive)
    assert len(archived) == len(FLUENT_BIT_RECORDS)
    for (_entry, _signature, payload), sent in zip(archived, FLUENT_BIT_RECORDS, strict=True):
        assert payload.log_record == sent.SerializeToString()  # byte-exact LogRecord
        assert payload.resource == b""  # the empty resource Fluent Bit sends for tail records
        assert payload.scope == b""
        assert payload.resource_schema_url == "" and payload.scope_schema_url == ""
        record = LogRecord.FromString(payload.log_record)
        assert record.severity_number == 0 and record.severity_text == ""
        assert not record.trace_id and not record.span_id


def _loki_entries(archive: Path) -> list[LokiEntry]:
    mapper = EntryMapper()
    entries = []
    for entry, signature, _payload in _archived(archive):
        mapped = mapper.map_entry(entry, entry_hash(entry), signature)
        assert mapped is not None
        entries.append(mapped)
    return entries


def test_archived_container_logs_map_to_loki_with_kubernetes_metadata_and_the_seal(
    run_sidecar: Callable[..., Any], tmp_path: Path
) -> None:
    """What Loki receives for the shipped values.yaml: the seal in structured metadata, namespace, pod
    and container as structured metadata named as Loki's OTLP ingestion names them. They are not index
    labels: Fluent Bit sends them as log attributes (no resource attributes for tail records), and only
    resource attributes become labels. test_fluent_bit_mapping.py covers them as resource attributes."""
    archive = tmp_path / "archive"
    _send_and_stop(run_sidecar, archive, fluent_bit_request(FLUENT_BIT_RECORDS), {})
    line, multiline, json_line, long_line, whole, observed = _loki_entries(archive)

    for entry in (line, multiline, json_line, long_line, whole, observed):
        assert entry.labels == (("service_name", "unknown_service"),)
        metadata = dict(entry.metadata)
        assert set(SEAL_FIELDS) <= set(metadata)
        assert int(metadata["audit_seq"]) == entry.sequence
        assert "severity_number" not in metadata and "severity_text" not in metadata

    metadata = dict(line.metadata)
    assert line.line == "GET /healthz 200"
    assert line.timestamp_ns == EVENT_NS
    assert metadata["k8s_namespace_name"] == "ai-prod"
    assert metadata["k8s_pod_name"] == "ai-worker-7d9f8-x2k4q"
    assert metadata["k8s_container_name"] == "worker"
    assert metadata["k8s_node_name"] == "ip-10-0-1-23.eu-west-1.compute.internal"
    assert metadata["kubernetes_labels_app_kubernetes_io_part_of"] == "ai-workflow"
    assert metadata["stream"] == "stdout"
    assert "observed_timestamp" not in metadata

    assert multiline.line.count("\n") == 2
    assert json_line.line == '{"event":"login","user":"zoë","ok":false}'
    assert dict(json_line.metadata)["k8s_namespace_name"] == "ai-staging"
    assert long_line.line == "x" * 16_000

    # The whole record as the body: the line is its JSON, Kubernetes metadata inside it, no attributes.
    assert '"namespace_name":"ai-prod"' in whole.line
    assert '"tokens":1234' in whole.line
    assert "k8s_namespace_name" not in dict(whole.metadata)

    observed_metadata = dict(observed.metadata)
    assert observed_metadata["observed_timestamp"] == str(EVENT_NS + 2_000_000_500)
    assert observed_metadata["migration_id"] == "0042"
    assert observed_metadata["stream"] == "stderr"


# --- the statuses that decide whether Fluent Bit retries or drops


def test_malformed_body_is_400_which_fluent_bit_drops(directory_sidecar: Sidecar) -> None:
    sidecar = directory_sidecar
    reply = post_as_fluent_bit(sidecar.http_port, b"\x0a\xff\xff not protobuf")
    assert reply.status == 400
    assert reply.status not in FLUENT_BIT_RETRIES  # dropped by Fluent Bit: documented in deploy/README.md
    assert status_pb2.Status.FromString(reply.body).code == code_pb2.INVALID_ARGUMENT
    assert sidecar.pipeline.stats.records_sealed == 1  # the genesis entry only


def test_zstd_is_415_which_fluent_bit_would_drop(directory_sidecar: Sidecar) -> None:
    """Fluent Bit's `compress zstd` is refused by the sidecar: keep `compress gzip` in values.yaml."""
    sidecar = directory_sidecar
    reply = post_as_fluent_bit(
        sidecar.http_port, fluent_bit_request(FLUENT_BIT_RECORDS[:1]), headers={"Content-Encoding": "zstd"}
    )
    assert reply.status == 415
    assert reply.status not in FLUENT_BIT_RETRIES


def test_capacity_exceeded_is_503_with_retry_after_which_fluent_bit_retries(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    archive = tmp_path / "archive"
    with run_sidecar(str(archive), max_message_bytes=4 * 1024 * 1024, max_pending_records=1000) as sidecar:
        too_many = [_line_record(f"line {i}", i, "ai-prod", "p", "c") for i in range(1001)]
        reply = post_as_fluent_bit(sidecar.http_port, fluent_bit_request(too_many))
        assert reply.status == 503
        assert reply.status in FLUENT_BIT_RETRIES
        assert int(reply.headers["retry-after"]) >= 1
        status = status_pb2.Status.FromString(reply.body)
        assert status.code == code_pb2.UNAVAILABLE
        assert "max_pending_records" in status.message
        retry_info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry_info)
        assert sidecar.pipeline.stats.records_sealed == 1  # refused before sealing: the retry is not a duplicate

        # A batch within Fluent Bit's default batch_size (1000) is taken.
        reply = post_as_fluent_bit(sidecar.http_port, fluent_bit_request(too_many[:1000]))
        assert reply.status == 200, reply.body
    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    assert report.records_checked == 1 + 1000


def test_a_line_with_invalid_utf8_makes_the_whole_batch_400(directory_sidecar: Sidecar) -> None:
    """Protobuf strings must be UTF-8. A container line with other bytes, passed through by tail and packed
    as a string, makes the whole request invalid: 400, so Fluent Bit drops every record of that chunk."""
    records = [_line_record("ok", 0, "ai-prod", "p", "c"), _line_record("bad \u00ff byte", 1, "ai-prod", "p", "c")]
    body = fluent_bit_request(records)
    assert body.count("\u00ff".encode()) == 1
    body = body.replace("\u00ff".encode(), b"\xff\xfe")  # same length: the framing stays valid
    reply = post_as_fluent_bit(directory_sidecar.http_port, body)
    assert reply.status == 400
    assert "not a valid ExportLogsServiceRequest" in status_pb2.Status.FromString(reply.body).message
    assert directory_sidecar.pipeline.stats.records_sealed == 1  # neither record was sealed
