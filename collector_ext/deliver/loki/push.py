"""Loki push request bodies: block-snappy protobuf PushRequest (the default) or JSON.

Pure encoding, no I/O. Entries are grouped into streams by their label set; entries keep their
order within a stream.

Two ways to a body. ``encode_protobuf``/``encode_json`` take ``LokiEntry`` objects (the mapping as
the verifier sees it). The sender instead keeps each record as it will travel: ``EntryEncoder``
turns a sealed entry straight into its encoded Loki entry (``EncodedEntry``: one bytes object),
and ``protobuf_body``/``json_body`` only join them. That costs a fraction of building the
``LokiEntry`` and its tuples first, and a queued record holds a few hundred bytes instead of a few
dozen Python objects. Whatever the direct path does not handle itself (nested attribute maps, names
that collide, entries past Loki's limits, ``seal_in_line``) goes through ``EntryMapper.map_entry``,
so both ways give the same bytes (tests/unit/deliver/test_loki_encoder.py compares them).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

import cramjam
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from collector_ext.deliver.loki.mapping import (
    SEAL_CHAIN_ID,
    SEAL_FIELDS,
    SEAL_HASH,
    SEAL_KEY_ID,
    SEAL_SEQUENCE,
    SEAL_SIGNATURE,
    SENDER,
    EntryMapper,
    LokiEntry,
    any_value_to_string,
    render_label_set,
    sanitise_name,
)
from collector_ext.deliver.loki.record_view import LogPayloadView, LogRecordView
from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind
from collector_ext.seal.sender import describe_sender_message
from collector_ext.seal.wire import encode_varint

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
JSON_CONTENT_TYPE = "application/json"


def _streams(entries: Sequence[LokiEntry]) -> dict[str, list[LokiEntry]]:
    streams: dict[str, list[LokiEntry]] = {}
    for entry in entries:
        streams.setdefault(entry.label_string(), []).append(entry)
    return streams


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field, left out when empty as proto3 encoders do."""
    if not data:
        return b""
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


_PAIR_TAG = encode_varint(3 << 3 | 2)
_LINE_TAG = encode_varint(2 << 3 | 2)
_ENTRY_TAG = encode_varint(2 << 3 | 2)


def _encode_entry(entry: LokiEntry) -> bytes:
    seconds, nanos = divmod(entry.timestamp_ns, 1_000_000_000)
    timestamp = b""
    if seconds:
        timestamp += b"\x08" + encode_varint(seconds)
    if nanos:
        timestamp += b"\x10" + encode_varint(nanos)
    parts = [b"\x0a", encode_varint(len(timestamp)), timestamp]
    line = entry.line.encode()
    if line:
        parts += (_LINE_TAG, encode_varint(len(line)), line)
    parts += map(_encode_pair, entry.metadata)
    return b"".join(parts)


def _encode_pair(pair: tuple[str, str]) -> bytes:
    encoded = _field(1, pair[0].encode()) + _field(2, pair[1].encode())
    return _PAIR_TAG + encode_varint(len(encoded)) + encoded


def encode_protobuf_uncompressed(entries: Sequence[LokiEntry]) -> bytes:
    """The PushRequest protobuf for ``entries``, before compression.

    Written field by field (Loki's logproto schema, proto/collector_ext/pb/loki_push.proto): this
    runs for every record delivered, and building message objects costs several times more."""
    streams = []
    for labels, stream_entries in _streams(entries).items():
        parts = [_field(1, labels.encode())]
        for entry in stream_entries:
            encoded = _encode_entry(entry)
            parts += (_ENTRY_TAG, encode_varint(len(encoded)), encoded)
        streams.append(_field(1, b"".join(parts)))
    return b"".join(streams)


def snappy_block(data: bytes) -> bytes:
    """Snappy *block* format (not framed), which is what Loki decodes."""
    return bytes(cramjam.snappy.compress_raw(data))


def encode_protobuf(entries: Sequence[LokiEntry]) -> bytes:
    """A block-snappy compressed PushRequest, as Loki decodes on /loki/api/v1/push."""
    return snappy_block(encode_protobuf_uncompressed(entries))


def encode_json(entries: Sequence[LokiEntry]) -> bytes:
    """The JSON push body: streams of ["<ns>", line, {structured metadata}] values."""
    streams = []
    for stream_entries in _streams(entries).values():
        values: list[list[object]] = []
        for entry in stream_entries:
            value: list[object] = [str(entry.timestamp_ns), entry.line]
            if entry.metadata:
                value.append(dict(entry.metadata))
            values.append(value)
        streams.append({"stream": dict(stream_entries[0].labels), "values": values})
    return json.dumps({"streams": streams}, ensure_ascii=False, separators=(",", ":")).encode()


# -- the sender's direct path: sealed entry -> encoded Loki entry -> body ----------------------------


@dataclass(frozen=True, slots=True)
class EncodedEntry:
    """One record as it travels to Loki: its stream (label string and labels) and its encoded entry,
    a protobuf ``EntryAdapter`` or a JSON ``["<ns>", line, {metadata}]`` value."""

    stream: str
    labels: tuple[tuple[str, str], ...]
    data: bytes

    def size(self) -> int:
        """The bytes the entry adds to a push body, before compression (framing included)."""
        return len(self.data) + 4


@dataclass(frozen=True, slots=True)
class _SharedEncoding:
    """A resource/scope pair's part of every entry under it, encoded once."""

    stream: str
    labels: tuple[tuple[str, str], ...]
    metadata: bytes  # scope then resource pairs, encoded
    names: frozenset[str]
    count: int


_RESERVED_NAMES = frozenset((*SEAL_FIELDS, SENDER))
_CACHE_LIMIT = 8192


def _name_field(name: str) -> bytes:
    return _field(1, name.encode())


def _pair_bytes(name_field: bytes, value: bytes) -> bytes:
    inner = b"".join((name_field, b"\x12", encode_varint(len(value)), value)) if value else name_field
    return b"".join((_PAIR_TAG, encode_varint(len(inner)), inner))


_SEQUENCE_NAME = _name_field(SEAL_SEQUENCE)
_OBSERVED_NAME = _name_field("observed_timestamp")
# Log-record fields the mapping adds after the attributes; an attribute of the same name is renamed
# by the mapper, so such records take its way.
_RECORD_FIELD_NAMES = frozenset(
    {
        "observed_timestamp",
        "severity_number",
        "severity_text",
        "event_name",
        "dropped_attributes_count",
        "flags",
        "trace_id",
        "span_id",
    }
)
_TAKEN_NAMES = _RESERVED_NAMES | _RECORD_FIELD_NAMES


def _fixed_size_prefix(name: str, value_size: int) -> bytes:
    """Everything of a metadata pair before its value, for a value of ``value_size`` bytes."""
    pair = _encode_pair((name, "x" * value_size))
    return pair[:-value_size]


_HASH_PREFIX = _fixed_size_prefix(SEAL_HASH, 64)  # SHA-256 in hex
_SIGNATURE_PREFIX = _fixed_size_prefix(SEAL_SIGNATURE, 88)  # Ed25519 in base64
_TRACE_ID_PREFIX = _fixed_size_prefix("trace_id", 32)
_SPAN_ID_PREFIX = _fixed_size_prefix("span_id", 16)


def _json_value(entry: LokiEntry) -> bytes:
    value: list[object] = [str(entry.timestamp_ns), entry.line]
    if entry.metadata:
        value.append(dict(entry.metadata))
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class EntryEncoder:
    """Sealed entries to ``EncodedEntry`` objects, for one mapper's settings and one body format.

    The common record (attributes of scalar values, distinct names, within Loki's limits) is
    encoded here directly from the parsed OTLP record; every other one is mapped by
    ``EntryMapper.map_entry`` and encoded from its ``LokiEntry``, which gives the same bytes. Caches
    (resource/scope parts, attribute pairs that repeat, the chain's seal fields) are bounded."""

    def __init__(self, mapper: EntryMapper, *, json_body: bool = False) -> None:
        self._mapper = mapper
        self._json = json_body
        self._direct = not json_body and not mapper.settings.seal_in_line
        self._shared: dict[tuple[bytes, bytes], _SharedEncoding | None] = {}
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._attribute_pairs: dict[bytes, tuple[str, bytes]] = {}
        self._chain_pairs: dict[bytes, tuple[bytes, bytes]] = {}
        self._senders: dict[bytes, bytes] = {}
        self._record_fields: dict[tuple[int, str, str, int, int], tuple[bytes, int]] = {}
        self._seconds = 0
        self._seconds_field = b""

    def encode(self, entry: bytes, entry_hash: bytes, signature: bytes) -> EncodedEntry | None:
        """The encoded Loki entry of a sealed log record; None for entries that are not log records."""
        if entry[2] != EntryKind.LOG_RECORD:
            return None
        if self._direct:
            encoded = self._encode_direct(entry, entry_hash, signature)
            if encoded is not None:
                return encoded
        mapped = self._mapper.map_entry(entry, entry_hash, signature)
        if mapped is None:
            return None
        data = _json_value(mapped) if self._json else _encode_entry(mapped)
        return EncodedEntry(mapped.label_string(), mapped.labels, data)

    def _shared_part(self, resource: bytes, scope: bytes) -> _SharedEncoding | None:
        key = (resource, scope)
        try:
            return self._shared[key]
        except KeyError:
            pass
        mapping = self._mapper.resource_scope(resource, scope)
        pairs = (*mapping.scope_metadata, *mapping.resource_metadata)
        names = frozenset(name for name, _ in pairs)
        shared = None
        if len(names) == len(pairs) and names.isdisjoint(_TAKEN_NAMES):
            shared = _SharedEncoding(
                render_label_set(mapping.labels),
                mapping.labels,
                b"".join(map(_encode_pair, pairs)),
                names,
                len(pairs),
            )
        if len(self._shared) >= 1024:
            self._shared.clear()
        self._shared[key] = shared
        return shared

    def _pair(self, name: str, value: str) -> bytes:
        key = (name, value)
        try:
            return self._pairs[key]
        except KeyError:
            pass
        encoded = _encode_pair(key)
        if len(self._pairs) >= _CACHE_LIMIT:
            self._pairs.clear()
        self._pairs[key] = encoded
        return encoded

    def _attribute_pair(self, raw: bytes) -> tuple[str, bytes]:
        """An attribute's metadata name and encoded pair, from its KeyValue encoding, remembered:
        most attributes repeat from record to record. ``_NESTED`` for a map value."""
        attribute = KeyValue.FromString(raw)
        value = attribute.value
        if value.WhichOneof("value") == "kvlist_value":
            found = _NESTED
        else:
            name = sanitise_name(attribute.key)
            found = (name, _encode_pair((name, any_value_to_string(value))))
        if len(self._attribute_pairs) >= _CACHE_LIMIT:
            self._attribute_pairs.clear()
        self._attribute_pairs[raw] = found
        return found

    def _describe_sender(self, raw: bytes) -> bytes:
        """The ``audit_sender`` pair of a Sender encoding (empty when it describes no one),
        remembered: every record of a request has the same."""
        described = describe_sender_message(archive_pb2.Sender.FromString(raw))
        pair = _encode_pair((SENDER, described)) if described else b""
        if len(self._senders) >= 1024:
            self._senders.clear()
        self._senders[raw] = pair
        return pair

    def _encode_record_fields(self, fields: tuple[int, str, str, int, int]) -> tuple[bytes, int]:
        """Severity number and text, event name, dropped attributes count and flags as pairs (those
        set), and how many: one lookup per record, as these repeat."""
        named = zip(
            ("severity_number", "severity_text", "event_name", "dropped_attributes_count", "flags"), fields, strict=True
        )
        pairs = [_encode_pair((name, str(value))) for name, value in named if value]
        found = (b"".join(pairs), len(pairs))
        if len(self._record_fields) >= _CACHE_LIMIT:
            self._record_fields.clear()
        self._record_fields[fields] = found
        return found

    def _chain_pairs_of(self, entry: bytes) -> tuple[bytes, bytes]:
        """The chain id and key id pairs, the same for every record of a chain and key."""
        key = entry[4:20] + entry[60:68]
        try:
            return self._chain_pairs[key]
        except KeyError:
            pass
        pairs = _encode_pair((SEAL_CHAIN_ID, key[:16].hex())), _encode_pair((SEAL_KEY_ID, key[16:].hex()))
        if len(self._chain_pairs) >= 64:
            self._chain_pairs.clear()
        self._chain_pairs[key] = pairs
        return pairs

    def _encode_direct(self, entry: bytes, entry_hash: bytes, signature: bytes) -> EncodedEntry | None:
        """The common case, encoded without a ``LokiEntry``; None sends the entry to the mapper."""
        payload = LogPayloadView.FromString(entry[ENTRY_HEADER_SIZE:])
        if len(payload.sender) > 1:
            return None  # a sender sent twice is merged by a parser: the mapper's way
        shared = self._shared_part(payload.resource, payload.scope)
        if shared is None:
            return None
        record = LogRecordView.FromString(payload.log_record)
        settings = self._mapper.settings
        bodies = record.body
        if len(bodies) > 1:
            return None  # a body sent twice is merged by a parser: the mapper's way
        line = _line_of(bodies[0]) if bodies else b""
        if len(line) > settings.max_line_bytes:
            return None
        names: list[str] = []
        pairs: list[bytes] = []
        known = self._attribute_pairs
        for raw in record.attributes:
            found = known.get(raw)
            if found is None:
                found = self._attribute_pair(raw)
            if found is _NESTED:
                return None  # flattened into several fields: the mapper's way
            names.append(found[0])
            pairs.append(found[1])
        if names and (
            len(set(names)) != len(names) or not _TAKEN_NAMES.isdisjoint(names) or not shared.names.isdisjoint(names)
        ):
            return None
        count = len(pairs)
        if record.time_unix_nano and record.observed_time_unix_nano:
            pairs.append(_pair_bytes(_OBSERVED_NAME, str(record.observed_time_unix_nano).encode()))
            count += 1
        fields = (
            record.severity_number,
            record.severity_text,
            record.event_name,
            record.dropped_attributes_count,
            record.flags,
        )
        encoded_fields = self._record_fields.get(fields)
        if encoded_fields is None:
            encoded_fields = self._encode_record_fields(fields)
        pairs.append(encoded_fields[0])
        count += encoded_fields[1]
        trace_id = record.trace_id
        if trace_id:
            pairs.append(
                _TRACE_ID_PREFIX + binascii.hexlify(trace_id)
                if len(trace_id) == 16
                else _encode_pair(("trace_id", trace_id.hex()))
            )
        span_id = record.span_id
        if span_id:
            pairs.append(
                _SPAN_ID_PREFIX + binascii.hexlify(span_id)
                if len(span_id) == 8
                else _encode_pair(("span_id", span_id.hex()))
            )
        count += bool(trace_id) + bool(span_id)
        if payload.sender:
            described = self._senders.get(payload.sender[0])
            if described is None:
                described = self._describe_sender(payload.sender[0])
            if described:
                pairs.insert(0, described)
                count += 1
        if count + 5 + shared.count >= settings.max_metadata_entries:
            return None
        chain_pair, key_pair = self._chain_pairs_of(entry)
        record_metadata = b"".join(pairs)
        if len(record_metadata) + len(shared.metadata) > settings.max_metadata_bytes - 64 - _SEAL_PAIRS_SIZE:
            return None
        timestamp = record.time_unix_nano or record.observed_time_unix_nano or int.from_bytes(entry[68:76], "big")
        data = b"".join(
            (
                self._timestamp(timestamp),
                (_LINE_TAG + encode_varint(len(line)) + line) if line else b"",
                chain_pair,
                _pair_bytes(_SEQUENCE_NAME, str(int.from_bytes(entry[20:28], "big")).encode()),
                _HASH_PREFIX,
                binascii.hexlify(entry_hash),
                _SIGNATURE_PREFIX,
                binascii.b2a_base64(signature, newline=False),
                key_pair,
                record_metadata,
                shared.metadata,
            )
        )
        return EncodedEntry(shared.stream, shared.labels, data)

    def _timestamp(self, timestamp_ns: int) -> bytes:
        """The entry's timestamp field (a google.protobuf.Timestamp); the seconds part is reused."""
        seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
        if seconds != self._seconds:
            self._seconds = seconds
            self._seconds_field = b"\x08" + encode_varint(seconds) if seconds else b""
        stamp = self._seconds_field + (b"\x10" + _nanos_varint(nanos) if nanos else b"")
        return b"\x0a" + encode_varint(len(stamp)) + stamp


def _nanos_varint(nanos: int) -> bytes:
    """``encode_varint`` for the nanoseconds of a timestamp (below 2**30), without its loop."""
    if nanos < 65536:
        return encode_varint(nanos)
    if nanos < 1 << 21:
        return bytes((nanos & 127 | 128, nanos >> 7 & 127 | 128, nanos >> 14))
    if nanos < 1 << 28:
        return bytes((nanos & 127 | 128, nanos >> 7 & 127 | 128, nanos >> 14 & 127 | 128, nanos >> 21))
    return bytes(
        (nanos & 127 | 128, nanos >> 7 & 127 | 128, nanos >> 14 & 127 | 128, nanos >> 21 & 127 | 128, nanos >> 28)
    )


def _line_of(body: bytes) -> bytes:
    """The Loki line of a body's AnyValue encoding: a lone string field's bytes as they are, the
    rest as ``any_value_to_string`` renders it."""
    if not body:
        return b""
    if body[0] == 0x0A and len(body) > 1 and body[1] < 0x80 and len(body) == body[1] + 2:
        return body[2:]
    return any_value_to_string(AnyValue.FromString(body)).encode()


_NESTED = ("", b"")  # the attribute pair cache's mark for a map value

# Upper bound of the seal pairs' size: chain id, sequence (at most 20 digits), hash, signature, key id.
_SEAL_PAIRS_SIZE = 5 * 16 + 32 + 20 + 64 + 88 + 16 + sum(len(name) for name in SEAL_FIELDS)


def _group(entries: Sequence[EncodedEntry]) -> dict[str, list[EncodedEntry]]:
    streams: dict[str, list[EncodedEntry]] = {}
    for entry in entries:
        streams.setdefault(entry.stream, []).append(entry)
    return streams


def protobuf_body(entries: Sequence[EncodedEntry]) -> bytes:
    """The PushRequest protobuf of entries encoded by ``EntryEncoder``, before compression."""
    streams = []
    for stream, stream_entries in _group(entries).items():
        parts = [_field(1, stream.encode())]
        for entry in stream_entries:
            parts += (_ENTRY_TAG, encode_varint(len(entry.data)), entry.data)
        streams.append(_field(1, b"".join(parts)))
    return b"".join(streams)


def json_body(entries: Sequence[EncodedEntry]) -> bytes:
    """The JSON push body of entries encoded by ``EntryEncoder(json_body=True)``."""
    streams = []
    for stream_entries in _group(entries).values():
        labels = json.dumps(dict(stream_entries[0].labels), ensure_ascii=False, separators=(",", ":")).encode()
        values = b",".join(entry.data for entry in stream_entries)
        streams.append(b'{"stream":' + labels + b',"values":[' + values + b"]}")
    return b'{"streams":[' + b",".join(streams) + b"]}"
