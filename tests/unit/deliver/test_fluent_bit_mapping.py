"""Loki labels for Fluent Bit container logs, pure: which Kubernetes names become index labels, and where.

Fluent Bit's opentelemetry output sends tail records with an empty resource (reference:
audit-sources.md section 5), so the Kubernetes metadata the shipped deploy/fluent-bit/values.yaml adds
arrives as log attributes. Loki's OTLP mapping, which mapping.py follows, makes index labels only from
resource attributes. Both placements are pinned here: as sent (structured metadata, no k8s labels) and
moved to the resource before sealing (labels k8s_namespace_name, k8s_pod_name, k8s_container_name).
"""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.deliver.loki.mapping import DEFAULT_LABEL_ATTRIBUTES, SEAL_FIELDS, EntryMapper, LokiEntry
from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind

CHAIN = bytes(range(16))
KUBERNETES = {
    "k8s.namespace.name": "ai-prod",
    "k8s.pod.name": "ai-worker-7d9f8-x2k4q",
    "k8s.container.name": "worker",
    "k8s.node.name": "ip-10-0-1-23.eu-west-1.compute.internal",
}


def _kvs(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]


def _map(record: LogRecord, resource: Resource) -> LokiEntry:
    payload = archive_pb2.LogPayload(
        resource=resource.SerializeToString(),
        scope=InstrumentationScope().SerializeToString(),
        log_record=record.SerializeToString(),
    ).SerializeToString()
    batch = chain_entries(ChainHead(CHAIN, 6, bytes(32)), EntryKind.LOG_RECORD, [payload], b"k" * 8, 123_000)
    mapped = EntryMapper().map_entry(batch.entries[0], batch.hashes[0], b"s" * 64)
    assert mapped is not None
    return mapped


def test_default_label_list_covers_namespace_pod_and_container_but_not_node() -> None:
    for name in ("k8s.namespace.name", "k8s.pod.name", "k8s.container.name"):
        assert name in DEFAULT_LABEL_ATTRIBUTES
    assert "k8s.node.name" not in DEFAULT_LABEL_ATTRIBUTES  # as in Loki's own default list


def test_as_fluent_bit_sends_them_kubernetes_names_are_structured_metadata_not_labels() -> None:
    record = LogRecord(
        time_unix_nano=1_795_238_600_123_456_789,
        body=AnyValue(string_value="GET /healthz 200"),
        attributes=_kvs({"stream": "stdout", **KUBERNETES}),
    )
    mapped = _map(record, Resource())
    assert mapped.labels == (("service_name", "unknown_service"),)
    metadata = dict(mapped.metadata)
    assert metadata["k8s_namespace_name"] == "ai-prod"
    assert metadata["k8s_pod_name"] == "ai-worker-7d9f8-x2k4q"
    assert metadata["k8s_container_name"] == "worker"
    assert metadata["k8s_node_name"] == "ip-10-0-1-23.eu-west-1.compute.internal"
    assert [name for name, _ in mapped.metadata[: len(SEAL_FIELDS)]] == list(SEAL_FIELDS)
    assert mapped.line == "GET /healthz 200"
    assert mapped.timestamp_ns == 1_795_238_600_123_456_789


def test_moved_to_the_resource_namespace_pod_and_container_become_labels_and_the_seal_stays_metadata() -> None:
    record = LogRecord(
        time_unix_nano=5, body=AnyValue(string_value="GET /healthz 200"), attributes=_kvs({"stream": "stdout"})
    )
    mapped = _map(record, Resource(attributes=_kvs(KUBERNETES)))
    assert mapped.labels == (
        ("k8s_container_name", "worker"),
        ("k8s_namespace_name", "ai-prod"),
        ("k8s_pod_name", "ai-worker-7d9f8-x2k4q"),
        ("service_name", "unknown_service"),
    )
    metadata = dict(mapped.metadata)
    assert metadata["k8s_node_name"] == "ip-10-0-1-23.eu-west-1.compute.internal"  # not a label
    assert set(SEAL_FIELDS) <= set(metadata)
    assert not set(SEAL_FIELDS) & {name for name, _ in mapped.labels}
    assert metadata["audit_seq"] == "6"  # ChainHead names the next sequence
    assert metadata["audit_chain_id"] == CHAIN.hex()
    assert metadata["audit_key_id"] == (b"k" * 8).hex()
