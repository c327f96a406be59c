"""The sender's direct encoding (``EntryEncoder``) gives the bytes of the mapping's (``map_entry`` then
``encode_protobuf``/``encode_json``) for every kind of record, and takes its short way for the common one."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.deliver.loki.mapping import EntryMapper, LokiEntry, MappingSettings
from collector_ext.deliver.loki.push import (
    EntryEncoder,
    _nanos_varint,
    encode_json,
    encode_protobuf_uncompressed,
    json_body,
    protobuf_body,
)
from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind, entry_hash
from collector_ext.seal.sender import Sender
from collector_ext.seal.wire import encode_varint


class CountingMapper(EntryMapper):
    """Counts the records that took the mapper's way."""

    mapped = 0

    def map_entry(self, entry: bytes, entry_hash: bytes, signature: bytes) -> LokiEntry | None:
        self.mapped += 1
        return super().map_entry(entry, entry_hash, signature)


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _s(text: str) -> AnyValue:
    return AnyValue(string_value=text)


RESOURCE = Resource(
    attributes=[_kv("service.name", _s("shop")), _kv("host.name", _s("h1")), _kv("k8s.pod.name", _s("p"))]
)
SCOPE = InstrumentationScope(name="audit", version="1.2", attributes=[_kv("lib", _s("x"))])
COMMON = LogRecord(
    time_unix_nano=1_700_000_000_123_456_789,
    observed_time_unix_nano=1_700_000_000_223_456_789,
    severity_number=9,
    severity_text="INFO",
    event_name="gen_ai.client.inference.operation.details",
    body=_s("model call finished: ünïcode ✓"),
    attributes=[
        _kv("user.id", _s("user-7")),
        _kv("gen_ai.usage.output_tokens", AnyValue(int_value=64)),
        _kv("ratio", AnyValue(double_value=0.25)),
        _kv("ok", AnyValue(bool_value=True)),
        _kv("blob", AnyValue(bytes_value=b"\x00\xff")),
        _kv("list", AnyValue(array_value=ArrayValue(values=[_s("a"), AnyValue(int_value=2)]))),
        _kv("empty", AnyValue()),
        _kv("blank", _s("")),
    ],
    dropped_attributes_count=2,
    flags=1,
    trace_id=bytes(range(16)),
    span_id=bytes(range(8)),
)

# Each case: (name, resource, scope, record, sender); all go through both ways and must agree.
CASES: list[tuple[str, Resource, InstrumentationScope, LogRecord, Sender | None]] = [
    ("common", RESOURCE, SCOPE, COMMON, None),
    ("with sender", RESOURCE, SCOPE, COMMON, Sender(peer="10.0.0.7:53422", token_name="collector-prod")),
    ("empty record", Resource(), InstrumentationScope(), LogRecord(), None),
    ("only observed time", RESOURCE, SCOPE, LogRecord(observed_time_unix_nano=5, body=_s("x")), None),
    ("whole-second time", RESOURCE, SCOPE, LogRecord(time_unix_nano=7_000_000_000, body=_s("x")), None),
    (
        "map body",
        RESOURCE,
        SCOPE,
        LogRecord(body=AnyValue(kvlist_value=KeyValueList(values=[_kv("a", _s("b"))]))),
        None,
    ),
    ("int body", RESOURCE, SCOPE, LogRecord(body=AnyValue(int_value=-3)), None),
    (
        "nested attribute",
        RESOURCE,
        SCOPE,
        LogRecord(attributes=[_kv("http", AnyValue(kvlist_value=KeyValueList(values=[_kv("method", _s("GET"))])))]),
        None,
    ),
    ("duplicate names", RESOURCE, SCOPE, LogRecord(attributes=[_kv("a.b", _s("1")), _kv("a_b", _s("2"))]), None),
    ("attribute named like a seal field", RESOURCE, SCOPE, LogRecord(attributes=[_kv("audit.seq", _s("1"))]), None),
    (
        "attribute named like a record field",
        RESOURCE,
        SCOPE,
        LogRecord(attributes=[_kv("severity_text", _s("x"))]),
        None,
    ),
    ("attribute named like a resource one", RESOURCE, SCOPE, LogRecord(attributes=[_kv("host.name", _s("x"))]), None),
    (
        "resource attribute named like a record field",
        Resource(attributes=[_kv("flags", _s("r"))]),
        SCOPE,
        LogRecord(flags=3, body=_s("x")),
        None,
    ),
    ("short ids", RESOURCE, SCOPE, LogRecord(trace_id=b"\x01", span_id=b"\x02\x03", body=_s("x")), None),
    ("long line", RESOURCE, SCOPE, LogRecord(body=_s("é" * 300_000)), None),
    (
        "many attributes",
        RESOURCE,
        SCOPE,
        LogRecord(attributes=[_kv(f"k{i}", _s(str(i))) for i in range(200)]),
        None,
    ),
    ("big metadata", RESOURCE, SCOPE, LogRecord(attributes=[_kv(f"k{i}", _s("v" * 2000)) for i in range(40)]), None),
]


def _entries(cases: list[tuple[str, Resource, InstrumentationScope, LogRecord, Sender | None]]) -> list[bytes]:
    payloads = []
    for _name, resource, scope, record, sender in cases:
        message = archive_pb2.LogPayload(
            resource=resource.SerializeToString(),
            scope=scope.SerializeToString(),
            log_record=record.SerializeToString(),
        )
        if sender is not None:
            message.sender.ParseFromString(sender.encode())
        payloads.append(message.SerializeToString())
    head = ChainHead(bytes(range(16)), 41, bytes(32))
    return list(chain_entries(head, EntryKind.LOG_RECORD, payloads, b"k" * 8, 123_000).entries)


SETTINGS = [
    MappingSettings(),
    MappingSettings(max_line_bytes=1000, max_metadata_entries=20, max_metadata_bytes=4096),
    MappingSettings(seal_in_line=True),
    MappingSettings(label_attributes=("host.name",)),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["default", "small limits", "seal in line", "other labels"])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_direct_encoding_equals_the_mapping(settings: MappingSettings, case: tuple[object, ...]) -> None:
    (entry,) = _entries([case])  # type: ignore[list-item]
    signature = bytes(range(64))
    mapped = EntryMapper(settings).map_entry(entry, entry_hash(entry), signature)
    assert mapped is not None
    encoded = EntryEncoder(EntryMapper(settings)).encode(entry, entry_hash(entry), signature)
    assert encoded is not None
    assert encoded.stream == mapped.label_string()
    assert protobuf_body([encoded]) == encode_protobuf_uncompressed([mapped])
    as_json = EntryEncoder(EntryMapper(settings), json_body=True).encode(entry, entry_hash(entry), signature)
    assert as_json is not None
    assert json_body([as_json]) == encode_json([mapped])


def test_a_batch_of_mixed_records_and_streams_is_the_same_body() -> None:
    entries = _entries(CASES * 3)
    signatures = [bytes([i % 256]) * 64 for i in range(len(entries))]
    mapper = EntryMapper()
    mapped = [mapper.map_entry(e, entry_hash(e), s) for e, s in zip(entries, signatures, strict=True)]
    encoder = EntryEncoder(EntryMapper())
    encoded = [encoder.encode(e, entry_hash(e), s) for e, s in zip(entries, signatures, strict=True)]
    assert protobuf_body([e for e in encoded if e]) == encode_protobuf_uncompressed([m for m in mapped if m])
    json_encoder = EntryEncoder(EntryMapper(), json_body=True)
    as_json = [json_encoder.encode(e, entry_hash(e), s) for e, s in zip(entries, signatures, strict=True)]
    assert json_body([e for e in as_json if e]) == encode_json([m for m in mapped if m])


def test_common_records_take_the_direct_way_and_the_others_the_mapper() -> None:
    mapper = CountingMapper()
    encoder = EntryEncoder(mapper)
    entries = _entries(CASES)
    for entry in entries:
        assert encoder.encode(entry, entry_hash(entry), bytes(64)) is not None
    # Direct: common, sender, empty, observed time only, whole second, map and int bodies, short ids.
    assert mapper.mapped == len(CASES) - 8


def test_entries_that_are_not_log_records_are_left_out() -> None:
    head = ChainHead(bytes(16), 0, bytes(32))
    (genesis,) = chain_entries(head, EntryKind.GENESIS, [b""], b"k" * 8, 1).entries
    assert EntryEncoder(EntryMapper()).encode(genesis, entry_hash(genesis), bytes(64)) is None
    assert EntryEncoder(EntryMapper(), json_body=True).encode(genesis, entry_hash(genesis), bytes(64)) is None


@pytest.mark.parametrize(
    "nanos", [0, 1, 127, 128, 16383, 16384, 65535, 65536, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28, 999_999_999]
)
def test_timestamp_nanoseconds_are_protobuf_varints(nanos: int) -> None:
    assert _nanos_varint(nanos) == encode_varint(nanos)


def _payload_entry(payload: bytes) -> bytes:
    (entry,) = chain_entries(ChainHead(bytes(16), 0, bytes(32)), EntryKind.LOG_RECORD, [payload], b"k" * 8, 1).entries
    return entry


def _same_both_ways(entry: bytes) -> None:
    mapped = EntryMapper().map_entry(entry, entry_hash(entry), bytes(64))
    encoded = EntryEncoder(EntryMapper()).encode(entry, entry_hash(entry), bytes(64))
    assert mapped is not None and encoded is not None
    assert protobuf_body([encoded]) == encode_protobuf_uncompressed([mapped])


def test_an_empty_sender_and_a_sender_sent_twice() -> None:
    record = LogRecord(body=_s("x")).SerializeToString()
    empty = archive_pb2.LogPayload(log_record=record)
    empty.sender.SetInParent()
    _same_both_ways(_payload_entry(empty.SerializeToString()))
    # Field 6 twice: a parser merges the two messages (peer from one, token name from the other).
    first = archive_pb2.LogPayload(log_record=record, sender=archive_pb2.Sender(peer="10.0.0.1:1"))
    second = archive_pb2.LogPayload(sender=archive_pb2.Sender(token_name="prod"))
    _same_both_ways(_payload_entry(first.SerializeToString() + second.SerializeToString()))


def test_a_body_sent_twice_is_merged_as_a_parser_does() -> None:
    first = LogRecord(body=AnyValue(kvlist_value=KeyValueList(values=[_kv("a", _s("1"))])))
    second = LogRecord(body=AnyValue(kvlist_value=KeyValueList(values=[_kv("b", _s("2"))])))
    payload = archive_pb2.LogPayload(log_record=first.SerializeToString() + second.SerializeToString())
    entry = _payload_entry(payload.SerializeToString())
    _same_both_ways(entry)
    mapped = EntryMapper().map_entry(entry, entry_hash(entry), bytes(64))
    assert mapped is not None and mapped.line == '{"a":"1","b":"2"}'


def _record_entry(record: bytes, prefix: bytes | None = None) -> bytes:
    """An entry whose payload holds ``record`` as written (the usual resource and scope before it)."""
    if prefix is None:
        prefix = archive_pb2.LogPayload(resource=RESOURCE.SerializeToString(), scope=SCOPE.SerializeToString())
        prefix = prefix.SerializeToString()
    return _payload_entry(prefix + b"\x2a" + encode_varint(len(record)) + record)


def _field_bytes(record: LogRecord, number: int) -> bytes:
    """The encoding of one field of ``record`` alone."""
    alone = LogRecord()
    alone.CopyFrom(record)
    for descriptor, _value in record.ListFields():
        if descriptor.number != number:
            alone.ClearField(descriptor.name)
    return alone.SerializeToString()


@pytest.mark.parametrize(
    "record",
    [
        # fields in reverse order, which a parser takes as they are
        b"".join(_field_bytes(COMMON, number) for number in (12, 11, 10, 9, 8, 7, 6, 5, 3, 2, 1)),
        # a scalar field twice: the last one counts
        COMMON.SerializeToString() + LogRecord(severity_text="WARN", time_unix_nano=5).SerializeToString(),
        # attributes before and after other fields
        _field_bytes(COMMON, 6)
        + LogRecord(body=_s("x")).SerializeToString()
        + LogRecord(attributes=[_kv("late", _s("y"))]).SerializeToString(),
        # an unknown field (number 4 is reserved in logs.proto) and one past the known ones
        COMMON.SerializeToString() + b"\x20\x01" + b"\xa2\x06\x03abc",
        # lengths of several varint bytes: a long body and a long attribute value
        LogRecord(body=_s("b" * 20_000), attributes=[_kv("k", _s("v" * 300))]).SerializeToString(),
        # a negative severity number (ten varint bytes) and a large dropped count
        LogRecord(severity_number=-1, dropped_attributes_count=1 << 31, body=_s("x")).SerializeToString(),  # type: ignore[arg-type]
        # empty fields written anyway
        b"\x1a\x00\x2a\x00\x4a\x00\x62\x00",
        # a dropped count past 32 bits, of which a parser keeps the low ones
        b"\x38" + encode_varint((1 << 32) + 3),
    ],
    ids=[
        "reversed",
        "scalar twice",
        "attributes split",
        "unknown fields",
        "long lengths",
        "odd numbers",
        "empty",
        "wide count",
    ],
)
def test_records_written_unusually_give_the_mapping(record: bytes) -> None:
    _same_both_ways(_record_entry(record))


@pytest.mark.parametrize(
    "prefix",
    [
        b"",  # no resource or scope
        archive_pb2.LogPayload(scope=SCOPE.SerializeToString()).SerializeToString()
        + archive_pb2.LogPayload(resource=RESOURCE.SerializeToString()).SerializeToString(),  # out of order
        archive_pb2.LogPayload(resource=RESOURCE.SerializeToString()).SerializeToString() * 2,  # twice
    ],
    ids=["none", "scope before resource", "resource twice"],
)
def test_payloads_written_unusually_give_the_mapping(prefix: bytes) -> None:
    _same_both_ways(_record_entry(COMMON.SerializeToString(), prefix))


@pytest.mark.parametrize(
    "record",
    [
        COMMON.SerializeToString()[:-3],  # cut short
        b"\x1a\x02\xff\xfe",  # severity text that is not UTF-8
        b"\x09\x01\x02",  # a fixed64 cut short
        b"\x38" + b"\xff" * 11,  # a varint past 64 bits
    ],
    ids=["cut short", "not UTF-8", "fixed64 cut short", "long varint"],
)
def test_malformed_records_are_refused_as_the_mapper_refuses_them(record: bytes) -> None:
    entry = _record_entry(record)
    with pytest.raises(DecodeError):
        EntryMapper().map_entry(entry, entry_hash(entry), bytes(64))
    with pytest.raises(DecodeError):
        EntryEncoder(EntryMapper()).encode(entry, entry_hash(entry), bytes(64))


def test_a_segment_of_two_chains_and_keys_names_each_record_own() -> None:
    first = _entries(CASES[:1])[0]
    other_chain = bytearray(first)
    other_chain[4:20] = b"\x07" * 16
    other_key = bytearray(first)
    other_key[60:68] = b"\x09" * 8
    encoder = EntryEncoder(EntryMapper())
    for entry in (first, bytes(other_chain), bytes(other_key), first, first[:4] + bytes(16) + first[20:]):
        mapped = EntryMapper().map_entry(entry, entry_hash(entry), bytes(64))
        encoded = encoder.encode(entry, entry_hash(entry), bytes(64))
        assert mapped is not None and encoded is not None
        assert protobuf_body([encoded]) == encode_protobuf_uncompressed([mapped])
