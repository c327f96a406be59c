"""The Loki fan-out against the test Loki (tests/loki_receiver.py, Loki's push contract): mapping,
delivery through outages and rejections, and the cross-check of Loki against the archive."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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

from collector_ext.deliver.loki.client import LokiClient, LokiConnection
from collector_ext.deliver.loki.mapping import EntryMapper, MappingSettings, any_value_to_string
from collector_ext.deliver.loki.sender import LokiSender, LokiSettings
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.retry import RetryPolicy
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.payload import log_payloads
from collector_ext.verify.findings import FindingKind, VerificationReport
from collector_ext.verify.loki_crosscheck import LokiCrossCheck
from collector_ext.verify.run import check_archive
from tests.fakes import InMemoryArchive
from tests.loki_receiver import LokiReceiver

FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05)
NOW = time.time_ns()


def _record(i: int, **fields: Any) -> LogRecord:
    base: dict[str, Any] = {
        "time_unix_nano": NOW - 60_000_000_000 + i * 1000,
        "severity_number": 9,
        "severity_text": "INFO",
        "event_name": "gen_ai.client.inference.operation.details",
        "body": AnyValue(string_value=f"model call {i}"),
        "attributes": [KeyValue(key="user.id", value=AnyValue(string_value="alice"))],
        "trace_id": bytes([i % 256]) * 16,
        "span_id": bytes([1]) * 8,
    }
    base.update(fields)
    return LogRecord(**base)


def _request(records: list[LogRecord], service: str = "ai-workflow") -> ExportLogsServiceRequest:
    resource = Resource(
        attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=service)),
            KeyValue(key="k8s.namespace.name", value=AnyValue(string_value="prod")),
            KeyValue(key="host.name", value=AnyValue(string_value="node-1")),
        ]
    )
    scope = InstrumentationScope(name="audit", version="1.0")
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=records)])]
    )


class Harness:
    """A sealing pipeline on an in-memory archive with the Loki sender attached."""

    def __init__(self, signer: Ed25519Signer, loki: LokiReceiver, **loki_settings: Any) -> None:
        self.signer = signer
        self.loki = loki
        self.store = InMemoryArchive()
        mapping = loki_settings.pop("mapping", MappingSettings())
        self.mapper = EntryMapper(mapping)
        self.sender = LokiSender(
            LokiClient(LokiConnection(url=loki.url, tenant="team-a")),
            self.mapper,
            LokiSettings(batch_max_wait=0.02, retry=FAST, **loki_settings),
        )
        self.pipeline = SealingPipeline(signer, self.store, PipelineSettings(retry=FAST), on_archived=self.sender.offer)

    async def __aenter__(self) -> Harness:
        await self.sender.start()
        await self.pipeline.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pipeline.close()
        await self.sender.close(drain_timeout=10)

    async def send(self, request: ExportLogsServiceRequest) -> None:
        await self.pipeline.submit(log_payloads(request))

    async def until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coroutine())


def test_records_arrive_with_loki_mapping_and_seal(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    async def scenario() -> None:
        async with Harness(signer, loki) as harness:
            await harness.send(_request([_record(i) for i in range(5)]))
            await harness.until(lambda: harness.sender.stats.entries_pushed == 5)

    run(scenario)
    entries = loki.entries(tenant="team-a")
    assert len(entries) == 5
    first = entries[0]
    assert first.labels == {"service_name": "ai-workflow", "k8s_namespace_name": "prod"}
    assert first.line == "model call 0"
    assert first.ts == NOW - 60_000_000_000
    metadata = first.structured_metadata
    assert metadata["user_id"] == "alice"
    assert metadata["host_name"] == "node-1"  # non-label resource attribute
    assert metadata["scope_name"] == "audit"
    assert metadata["trace_id"] == "00" * 16
    assert metadata["severity_text"] == "INFO"
    assert metadata["event_name"] == "gen_ai.client.inference.operation.details"
    assert metadata["audit_seq"] == "1"
    assert len(metadata["audit_chain_id"]) == 32
    assert len(base64.b64decode(metadata["audit_signature"])) == 64
    assert metadata["audit_key_id"] == signer.key_id.hex()
    # The seal in Loki proves the record: its hash is the archived entry's, signed by the key.
    assert signer.public_key.is_valid_signature(
        base64.b64decode(metadata["audit_signature"]),
        b"collector-ext/v1/record-signature\x00" + bytes.fromhex(metadata["audit_hash"]),
    )


def test_json_push_and_seal_in_line_for_loki_29(signer: Ed25519Signer) -> None:
    loki = LokiReceiver(allow_structured_metadata=False).start()
    try:

        async def scenario() -> None:
            async with Harness(signer, loki, json_body=True, mapping=MappingSettings(seal_in_line=True)) as h:
                await h.send(_request([_record(i) for i in range(3)]))
                await h.until(lambda: h.sender.stats.entries_pushed == 3)

        run(scenario)
        entries = loki.entries(tenant="team-a")
        assert [e.structured_metadata for e in entries] == [{}, {}, {}]
        import json

        document = json.loads(entries[2].line)
        assert document["line"] == "model call 2"
        assert document["audit_seq"] == 3
        assert document["attributes"]["user_id"] == "alice"
        assert all(loki_push.status == 204 for loki_push in loki.pushes)
    finally:
        loki.stop()


def test_loki_down_then_back_loses_nothing_and_pushes_nothing_twice(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    async def scenario() -> None:
        async with Harness(signer, loki) as harness:
            loki.down = True
            await harness.send(_request([_record(i) for i in range(10)]))
            # Acknowledged and archived while Loki is down.
            assert harness.pipeline.stats.records_archived == 11
            await harness.until(lambda: harness.sender.stats.push_retries >= 2)
            loki.down = False
            await harness.until(lambda: harness.sender.stats.entries_pushed == 10)

    run(scenario)
    sequences = [int(e.structured_metadata["audit_seq"]) for e in loki.entries(tenant="team-a")]
    assert sequences == list(range(1, 11))
    assert sum(1 for p in loki.pushes if p.status == 204) == 1


def test_503_and_429_with_retry_after_are_retried(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    loki.fail_next(503, count=2)

    async def scenario() -> None:
        async with Harness(signer, loki) as harness:
            await harness.send(_request([_record(i) for i in range(4)]))
            await harness.until(lambda: harness.sender.stats.entries_pushed == 4)
            loki.fail_next(429, count=1, retry_after=0.2)
            started = time.monotonic()
            await harness.send(_request([_record(i) for i in range(4, 6)]))
            await harness.until(lambda: harness.sender.stats.entries_pushed == 6)
            assert time.monotonic() - started >= 0.2  # Retry-After honoured
            assert harness.sender.stats.push_retries == 3

    run(scenario)
    assert len(loki.entries(tenant="team-a")) == 6


def test_400_is_not_retried_and_counted_by_reason_valid_entries_kept(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    old = NOW - 8 * 24 * 3600 * 10**9  # older than Loki's 7-day limit

    async def scenario() -> None:
        async with Harness(signer, loki) as harness:
            records = [_record(0), _record(1, time_unix_nano=old), _record(2), _record(3, time_unix_nano=old)]
            await harness.send(_request(records))
            await harness.until(lambda: harness.sender.stats.pushes == 1)
            assert harness.sender.stats.rejected == {"too_old": 2}
            assert harness.sender.stats.entries_pushed == 2
            assert harness.sender.stats.push_retries == 0
            assert harness.store.objects  # archived regardless

    run(scenario)
    assert [e.line for e in loki.entries(tenant="team-a")] == ["model call 0", "model call 2"]
    assert [p.status for p in loki.pushes] == [400]


def test_long_lines_and_too_much_metadata_follow_the_policy(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    long_body = AnyValue(string_value="x" * (300 * 1024))
    many = [KeyValue(key=f"attr.{i}", value=AnyValue(string_value="v" * 600)) for i in range(200)]

    async def scenario() -> None:
        async with Harness(signer, loki) as harness:
            await harness.send(_request([_record(0, body=long_body), _record(1, attributes=many), _record(2)]))
            await harness.until(lambda: harness.sender.stats.entries_pushed == 3)
            assert harness.sender.stats.rejected == {}

    run(scenario)
    first, second, third = loki.entries(tenant="team-a")
    assert len(first.line.encode()) == 256 * 1024
    assert first.structured_metadata["audit_line_truncated"] == str(300 * 1024)
    assert second.structured_metadata["audit_metadata_truncated"] == "true"
    assert len(second.structured_metadata) <= 128
    for entry in (first, second, third):
        assert {"audit_chain_id", "audit_seq", "audit_hash", "audit_signature", "audit_key_id"} <= set(
            entry.structured_metadata
        )


def _cross_check(harness: Harness, loki: LokiReceiver) -> tuple[VerificationReport, list[Any]]:
    async def scenario() -> tuple[VerificationReport, list[Any]]:
        check = LokiCrossCheck(harness.mapper, NOW - 3600 * 10**9, time.time_ns() + 10**9)
        report = await check_archive(
            harness.store, {harness.signer.key_id: harness.signer.public_key}, record_observer=check.add_segment
        )
        client = LokiClient(LokiConnection(url=loki.url, tenant="team-a"))
        await client.open()
        try:
            async for entry in client.query_range(
                '{service_name=~".+"}', NOW - 3600 * 10**9, time.time_ns() + 10**9, limit=7
            ):
                check.add_loki(entry)
        finally:
            await client.close()
        return report, check.finish()

    return asyncio.run(scenario())


def _filled(signer: Ed25519Signer, loki: LokiReceiver, count: int = 20) -> Harness:
    harness = Harness(signer, loki)

    async def scenario() -> None:
        async with harness:
            await harness.send(_request([_record(i) for i in range(count)]))
            await harness.until(lambda: harness.sender.stats.entries_pushed == count)

    run(scenario)
    return harness


def test_cross_check_clean_loki_has_no_finding_with_paging(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    harness = _filled(signer, loki)
    report, findings = _cross_check(harness, loki)
    assert report.findings == ()
    assert findings == []


def test_cross_check_reports_each_tampering_with_its_location(signer: Ed25519Signer, loki: LokiReceiver) -> None:
    harness = _filled(signer, loki)
    entries = loki.entries(tenant="team-a")
    by_seq = {int(e.structured_metadata["audit_seq"]): e for e in entries}
    stream = entries[0].stream
    loki.delete_entry(stream, by_seq[3].ts, tenant="team-a")
    loki.replace_line(stream, by_seq[5].ts, "model call 5 (edited)", tenant="team-a")
    edited = dict(by_seq[8].structured_metadata, audit_hash="00" * 32)
    loki.set_metadata(stream, by_seq[8].ts, edited, tenant="team-a")
    forged = dict(by_seq[9].structured_metadata, audit_seq="999")
    loki.add_entry(stream, by_seq[9].ts + 1, "an entry the sidecar never sealed", forged, tenant="team-a")
    _, findings = _cross_check(harness, loki)
    chain = harness.pipeline.chain_id.hex()
    assert sorted((f.kind.value, f.chain_id, f.first_sequence) for f in findings) == [
        ("loki-altered", chain, 5),
        ("loki-altered", chain, 8),
        ("loki-missing", chain, 3),
        ("loki-not-in-archive", chain, 999),
    ]
    altered = {f.first_sequence: f.message for f in findings if f.kind is FindingKind.LOKI_ALTERED}
    assert "line" in altered[5]
    assert "audit_hash" in altered[8]


_scalars = st.one_of(
    st.text(max_size=40).map(lambda s: AnyValue(string_value=s)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: AnyValue(double_value=f)),
    st.binary(max_size=16).map(lambda b: AnyValue(bytes_value=b)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3).map(
            lambda d: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in d.items()]))
        ),
    ),
    max_leaves=6,
)
_records = st.builds(
    lambda body, attributes, severity, offset, trace: LogRecord(
        time_unix_nano=NOW - offset,
        severity_number=severity,
        body=body,
        attributes=[KeyValue(key=k, value=v) for k, v in attributes.items()],
        trace_id=trace,
    ),
    _values,
    st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=5),
    st.integers(min_value=0, max_value=24),
    st.integers(min_value=0, max_value=3_000_000_000_000),
    st.sampled_from([b"", bytes(range(16))]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_records, min_size=1, max_size=8), st.text(min_size=1, max_size=20))
def test_random_records_are_accepted_and_round_trip(
    signer: Ed25519Signer, records: list[LogRecord], service: str
) -> None:
    loki = LokiReceiver().start()
    try:
        harness = Harness(signer, loki)

        async def scenario() -> None:
            async with harness:
                await harness.send(_request(records, service=service))
                await harness.until(lambda: harness.sender.stats.pushes >= 1)

        run(scenario)
        assert all(p.status == 204 for p in loki.pushes), [p.response for p in loki.pushes]
        stored = {int(e.structured_metadata["audit_seq"]): e for e in loki.entries(tenant="team-a")}
        # Loki keeps one entry per (stream, timestamp, line): identical records collapse into one.
        distinct = {(r.time_unix_nano, any_value_to_string(r.body)) for r in records}
        assert len(stored) == len(distinct)
        for sequence, entry in stored.items():
            record = records[sequence - 1]
            assert entry.line == any_value_to_string(record.body)
            assert entry.ts == record.time_unix_nano
            assert entry.labels["service_name"] == service
            assert entry.structured_metadata["audit_key_id"] == signer.key_id.hex()
        _, findings = _cross_check(harness, loki)
        assert [f for f in findings if f.severity.value != "warning"] == []
        assert len(findings) == len(records) - len(distinct)
    finally:
        loki.stop()


def test_sidecar_with_loki_end_to_end_and_verify_cli(
    run_sidecar: Any, key_pair: Any, tmp_path: Any, loki: LokiReceiver
) -> None:
    """serve with loki settings -> OTLP in -> archive + Loki; `verify --loki-url` exit codes; metrics."""
    import json
    import subprocess
    import sys
    import urllib.request

    import grpc

    archive = tmp_path / "archive"
    with run_sidecar(
        str(archive), loki={"url": loki.url, "tenant": "team-a", "batch_max_wait_seconds": 0.05}
    ) as sidecar:
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=None,
                response_deserializer=None,
            )
            export(_request([_record(i) for i in range(30)]).SerializeToString(), timeout=10)
        deadline = time.monotonic() + 10
        while sidecar.loki is not None and sidecar.loki.stats.entries_pushed < 30:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "collector_ext_loki_entries_pushed_total 30.0" in text
        assert 'collector_ext_loki_entries_rejected_total{reason="too_old"} 0.0' in text

    command = [
        sys.executable, "-m", "collector_ext.cli", "verify", "--archive", str(archive),
        "--public-key", str(key_pair.public), "--loki-url", loki.url, "--loki-tenant", "team-a", "--since", "2h",
        "--json",
    ]  # fmt: skip
    clean = subprocess.run(command, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["findings"] == []

    entry = loki.entries(tenant="team-a")[7]
    loki.replace_line(entry.stream, entry.ts, "rewritten history", tenant="team-a")
    tampered = subprocess.run(command, capture_output=True, text=True)
    assert tampered.returncode == 1
    findings = json.loads(tampered.stdout)["findings"]
    assert [(f["kind"], f["first_sequence"]) for f in findings] == [
        ("loki-altered", int(entry.structured_metadata["audit_seq"]))
    ]


def test_push_over_tls_with_a_custom_ca_bearer_token_and_tenant(signer: Ed25519Signer, tmp_path: Any) -> None:
    """loki.ca_file: the sender trusts a private CA; it refuses the same server without it."""
    import ssl

    from tests.integration.test_tls import Pki

    pki = Pki(tmp_path / "tls")
    loki = LokiReceiver().start()
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert_file, pki.server_key_file)
        server = loki._server  # the listening socket now speaks TLS
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        https_url = loki.url.replace("http://", "https://")

        async def push(ca_file: str | None) -> LokiSender:
            sender = LokiSender(
                LokiClient(LokiConnection(url=https_url, tenant="team-a", bearer_token="t0k3n", ca_file=ca_file)),
                EntryMapper(),
                LokiSettings(batch_max_wait=0.0, retry=FAST),
            )
            await sender.start()
            pipeline = SealingPipeline(
                signer, InMemoryArchive(), PipelineSettings(retry=FAST), on_archived=sender.offer
            )
            await pipeline.start()
            await pipeline.submit(log_payloads(_request([_record(0)])))
            deadline = time.monotonic() + 3
            while sender.stats.entries_pushed == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await pipeline.close()
            await sender.close(drain_timeout=0.1)
            return sender

        trusted = asyncio.run(push(str(pki.ca_file)))
        assert trusted.stats.entries_pushed == 1
        (pushed,) = [p for p in loki.pushes if p.status == 204]
        assert pushed.tenant == "team-a"
        assert {k.lower(): v for k, v in pushed.headers.items()}["authorization"] == "Bearer t0k3n"
        untrusted = asyncio.run(push(None))  # the system CAs do not know the test CA
        assert untrusted.stats.entries_pushed == 0
        assert untrusted.stats.push_retries >= 1
    finally:
        loki.stop()
