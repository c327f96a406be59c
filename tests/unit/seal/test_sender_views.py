"""The sealed sender where people see it: Loki's structured metadata and the report's fields."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.deliver.loki.mapping import SEAL_FIELDS, SENDER, EntryMapper, MappingSettings
from collector_ext.report.rows import read_fields
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.sender import Sender

CHAIN = bytes(range(16))
SENDER_OF_TEST = Sender(
    peer="10.0.0.7:53422",
    token_name="collector-prod",
    certificate_subject="CN=collector,O=Example",
    certificate_sha256=bytes(32),
)


def _entry(sender: Sender | None, attributes: int = 0) -> tuple[bytes, bytes]:
    record = LogRecord(
        time_unix_nano=5,
        body=AnyValue(string_value="model output"),
        attributes=[KeyValue(key=f"a{i}", value=AnyValue(string_value="x" * 600)) for i in range(attributes)],
    )
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="svc"))]),
                scope_logs=[ScopeLogs(log_records=[record])],
            )
        ]
    )
    [payload] = log_payloads(request, sender)
    batch = chain_entries(ChainHead(CHAIN, 7, bytes(32)), EntryKind.LOG_RECORD, [payload], b"k" * 8, 123_000)
    return batch.entries[0], batch.hashes[0]


def test_loki_metadata_carries_the_sender_beside_the_seal() -> None:
    entry, entry_hash = _entry(SENDER_OF_TEST)
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    metadata = dict(mapped.metadata)
    assert metadata[SENDER] == "token:collector-prod cert:CN=collector,O=Example from 10.0.0.7:53422"
    assert set(SEAL_FIELDS) <= set(metadata)


def test_no_sender_no_metadata_field() -> None:
    entry, entry_hash = _entry(None)
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None and SENDER not in dict(mapped.metadata)


def test_the_sender_survives_metadata_truncation() -> None:
    entry, entry_hash = _entry(SENDER_OF_TEST, attributes=200)
    mapped = EntryMapper().map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    metadata = dict(mapped.metadata)
    assert metadata["audit_metadata_truncated"] == "true"
    assert metadata[SENDER].startswith("token:collector-prod")


def test_seal_in_line_carries_the_sender() -> None:
    entry, entry_hash = _entry(Sender(peer="127.0.0.1:9"))
    mapped = EntryMapper(MappingSettings(seal_in_line=True)).map_entry(entry, entry_hash, b"s" * 64)
    assert mapped is not None
    assert json.loads(mapped.line)[SENDER] == "from 127.0.0.1:9"


def test_report_fields_name_the_sender() -> None:
    entry, _ = _entry(SENDER_OF_TEST)
    fields = read_fields(entry, 5)
    assert fields is not None and fields.sender == SENDER_OF_TEST.describe()
    entry, _ = _entry(None)
    fields = read_fields(entry, 5)
    assert fields is not None and fields.sender == ""
