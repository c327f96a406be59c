"""Loki mapping and push encoding, pure: labels, line, timestamp, metadata, limits, reasons."""

from __future__ import annotations

import json

import cramjam
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.deliver.loki.client import classify_rejection
from collector_ext.deliver.loki.mapping import (
    DEFAULT_LABEL_ATTRIBUTES,
    EntryMapper,
    MappingSettings,
    any_value_to_string,
    sanitise_name,
)
from collector_ext.deliver.loki.push import EntryEncoder, encode_json, encode_protobuf
from collector_ext.pb import archive_pb2, loki_push_pb2
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind

CHAIN = bytes(range(16))


def _entry(
    record: LogRecord, resource: Resource | None = None, scope: InstrumentationScope | None = None
) -> tuple[bytes, bytes]:
    payload = archive_pb2.LogPayload(
        resource=(resource or Resource()).SerializeToString(),
        scope=(scope or InstrumentationScope()).SerializeToString(),
        log_record=record.SerializeToString(),
    ).SerializeToString()
    batch = chain_entries(ChainHead(CHAIN, 41, bytes(32)), EntryKind.LOG_RECORD, [payload], b"k" * 8, 123_000)
    return batch.entries[0], batch.hashes[0]


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def test_sanitise_name_follows_loki() -> None:
    assert sanitise_name("service.name") == "service_name"
    assert sanitise_name("k8s.pod.name") == "k8s_pod_name"
    assert sanitise_name("a..b") == "a_b"
    assert sanitise_name("1abc") == "key_1abc"
    assert sanitise_name("...") == "attribute"


def test_body_rendering() -> None:
    assert any_value_to_string(AnyValue(string_value="x")) == "x"
    assert any_value_to_string(AnyValue(int_value=7)) == "7"
    assert any_value_to_string(AnyValue(bool_value=True)) == "true"
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[KeyValue(key="a", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)])))]
        )
    )
    assert json.loads(any_value_to_string(nested)) == {"a": [1]}
    assert any_value_to_string(AnyValue()) == ""


def test_labels_seal_timestamp_and_metadata() -> None:
    resource = Resource(attributes=[_kv("service.name", "svc"), _kv("k8s.pod.name", "p-1"), _kv("host.name", "h")])
    record = LogRecord(
        observed_time_unix_nano=555,
        body=AnyValue(string_value="hello"),
        attributes=[KeyValue(key="http", value=AnyValue(kvlist_value=KeyValueList(values=[_kv("method", "GET")])))],
        severity_number=9,
        event_name="e",
    )
    entry, entry_hash = _entry(record, resource, InstrumentationScope(name="sc", version="2"))
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    assert mapped.labels == (("k8s_pod_name", "p-1"), ("service_name", "svc"))
    assert mapped.timestamp_ns == 555  # no time_unix_nano: the observed time
    assert mapped.line == "hello"
    metadata = dict(mapped.metadata)
    assert metadata["http_method"] == "GET"  # nested maps flattened
    assert metadata["host_name"] == "h"
    assert (metadata["scope_name"], metadata["scope_version"]) == ("sc", "2")
    assert (metadata["audit_chain_id"], metadata["audit_seq"]) == (CHAIN.hex(), "41")
    assert metadata["audit_hash"] == entry_hash.hex()
    assert metadata["audit_key_id"] == (b"k" * 8).hex()
    assert list(dict(mapped.metadata))[:5] == [
        "audit_chain_id",
        "audit_seq",
        "audit_hash",
        "audit_signature",
        "audit_key_id",
    ]


def test_sealing_time_when_no_record_time_and_unknown_service() -> None:
    entry, entry_hash = _entry(LogRecord(body=AnyValue(string_value="x")))
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    assert mapped.timestamp_ns == 123_000
    assert mapped.labels == (("service_name", "unknown_service"),)


def test_at_most_fifteen_labels() -> None:
    resource = Resource(attributes=[_kv(name, "v") for name in DEFAULT_LABEL_ATTRIBUTES])
    entry, entry_hash = _entry(LogRecord(), resource)
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    assert len(mapped.labels) == 15
    assert "service_name" in dict(mapped.labels)


def test_attribute_never_shadows_the_seal() -> None:
    entry, entry_hash = _entry(LogRecord(attributes=[_kv("audit_seq", "999")]))
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    metadata = dict(mapped.metadata)
    assert metadata["audit_seq"] == "41"
    assert metadata["audit_seq_attr"] == "999"


def test_seal_in_line_mode_has_no_metadata() -> None:
    entry, entry_hash = _entry(LogRecord(body=AnyValue(string_value="b"), attributes=[_kv("user.id", "u")]))
    mapped = EntryMapper(MappingSettings(seal_in_line=True)).map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    assert mapped.metadata == ()
    document = json.loads(mapped.line)
    assert document["line"] == "b"
    assert document["attributes"] == {"user_id": "u"}
    assert document["audit_seq"] == 41


def test_genesis_entries_are_not_pushed() -> None:
    batch = chain_entries(ChainHead.new(CHAIN), EntryKind.GENESIS, [b""], b"k" * 8, 1)
    assert EntryMapper().map_entry(batch.entries[0], batch.hashes[0], b"s" * 64) is None


def test_push_bodies_round_trip() -> None:
    entry, entry_hash = _entry(LogRecord(time_unix_nano=1_700_000_000_000_000_001, body=AnyValue(string_value="l")))
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    request = loki_push_pb2.PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(encode_protobuf([mapped]))))
    (stream,) = request.streams
    assert stream.labels == '{service_name="unknown_service"}'
    (pushed,) = stream.entries
    assert (pushed.timestamp.seconds, pushed.timestamp.nanos, pushed.line) == (1_700_000_000, 1, "l")
    assert {p.name: p.value for p in pushed.structuredMetadata} == dict(mapped.metadata)
    document = json.loads(encode_json([mapped]))
    assert document["streams"][0]["values"][0][:2] == ["1700000000000000001", "l"]
    assert document["streams"][0]["values"][0][2] == dict(mapped.metadata)


def test_rejection_reasons_are_counted() -> None:
    body = (
        "2 errors like: entry for stream '{a=\"b\"}' has timestamp too old: 2024-01-01T00:00:00Z, oldest acceptable "
        "timestamp is: 2024-01-08T00:00:00Z; stream '{a=\"b\"}' has structured metadata too large: '70000' bytes, "
        "limit: '65536' bytes. Please see ..."
    )
    assert classify_rejection(body) == {"too_old": 2, "metadata_too_large": 1}
    out_of_order = (
        "entry with timestamp 2024-01-01 00:00:00 +0000 UTC ignored, reason: 'entry too far behind, ...',\n"
        "entry with timestamp 2024-01-01 00:00:01 +0000 UTC ignored, reason: 'entry too far behind, ...',\n"
        "user 'fake', total ignored: 2 out of 5 for stream: {a=\"b\"}"
    )
    assert classify_rejection(out_of_order) == {"out_of_order": 2}
    assert classify_rejection("something new") == {"other": 1}


def test_a_400_without_a_known_reason_counts_every_entry_as_refused() -> None:
    import asyncio

    from collector_ext.deliver.loki.client import LokiRejectedError
    from collector_ext.deliver.loki.sender import LokiSender, LokiSettings

    class RefusingClient:
        async def open(self) -> None: ...

        async def close(self) -> None: ...

        async def push(self, body: bytes, *, json_body: bool = False) -> None:
            raise LokiRejectedError("Loki refused entries: ", {})

    entry, entry_hash = _entry(LogRecord(body=AnyValue(string_value="x")))
    sender = LokiSender(RefusingClient(), EntryMapper(), LokiSettings())  # type: ignore[arg-type]
    encoded = EntryEncoder(EntryMapper()).encode(entry, entry_hash, b"s" * 64)
    assert encoded is not None
    asyncio.run(sender._deliver([encoded, encoded]))
    assert sender.stats.rejected == {"other": 2}
    assert sender.stats.entries_pushed == 0
