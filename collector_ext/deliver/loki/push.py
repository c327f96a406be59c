"""Loki push request bodies: block-snappy protobuf PushRequest (the default) or JSON.

Pure encoding, no I/O. Entries are grouped into streams by their label set; entries keep their
order within a stream.

Two ways to a body. ``encode_protobuf``/``encode_json`` take ``LokiEntry`` objects (the mapping as
the verifier sees it). The sender instead keeps each record as it will travel: ``EntryEncoder``
turns a sealed entry straight into its encoded Loki entry (``EncodedEntry``: one bytes object),
and ``protobuf_body``/``json_body`` only join them. That costs a fraction of building the
``LokiEntry`` and its tuples first, and a queued record holds a few hundred bytes instead of a few
dozen Python objects. The direct path reads the sealed payload and its log record on the wire, once,
without building protobuf messages. Whatever it does not handle itself (nested attribute maps, names
that collide, entries past Loki's limits, ``seal_in_line``, fields written out of order or twice,
unknown or malformed fields) goes through ``EntryMapper.map_entry``, so both ways give the same bytes
(tests/unit/deliver/test_loki_encoder.py compares them).
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import cramjam
from google.protobuf.message import DecodeError
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


@dataclass(slots=True)
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
    # Attribute names seen with it: whether they are distinct and clash with no other field.
    names_clear: dict[tuple[str, ...], bool] = field(default_factory=dict)

    def clear_names(self, names: tuple[str, ...]) -> bool:
        clear = len(set(names)) == len(names) and _TAKEN_NAMES.isdisjoint(names) and self.names.isdisjoint(names)
        if len(self.names_clear) >= _CACHE_LIMIT:
            self.names_clear.clear()
        self.names_clear[names] = clear
        return clear


_RESERVED_NAMES = frozenset((*SEAL_FIELDS, SENDER))
_CACHE_LIMIT = 8192


def _name_field(name: str) -> bytes:
    return _field(1, name.encode())


def _pair_bytes(name_field: bytes, value: bytes) -> bytes:
    inner = b"".join((name_field, b"\x12", encode_varint(len(value)), value)) if value else name_field
    return b"".join((_PAIR_TAG, encode_varint(len(inner)), inner))


_SEQUENCE_NAME = _name_field(SEAL_SEQUENCE)
# Lengths below 128 are their own one-byte varint.
_ONE_BYTE = [bytes((length,)) for length in range(128)]
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
    encoded here directly from its wire encoding; every other one is mapped by
    ``EntryMapper.map_entry`` and encoded from its ``LokiEntry``, which gives the same bytes. Caches
    (resource/scope parts, attribute pairs that repeat, the chain's seal fields) are bounded."""

    def __init__(self, mapper: EntryMapper, *, json_body: bool = False) -> None:
        self._mapper = mapper
        self._json = json_body
        self._direct = not json_body and not mapper.settings.seal_in_line
        self._shared: dict[tuple[bytes, bytes], _SharedEncoding | None] = {}
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._attribute_pairs: dict[bytes, tuple[str, bytes]] = {}
        self._senders: dict[bytes, bytes] = {}
        self._record_fields: dict[tuple[int, bytes, bytes, int, int], tuple[bytes, int]] = {}
        self._prefixes: dict[bytes, _SharedEncoding | None] = {}
        self._seconds = 0
        self._seconds_field = b""
        # The last record's chain and key ids and their pairs: a segment has one chain and key.
        self._chain_id, self._key_id = bytes(16), bytes(8)
        self._chain_pair, self._key_pair = _seal_id_pairs(self._chain_id, self._key_id)

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

    def _encode_record_fields(self, fields: tuple[int, bytes, bytes, int, int]) -> tuple[bytes, int] | None:
        """Severity number and text, event name, dropped attributes count and flags as pairs (those
        set), and how many: one lookup per record, as these repeat. None when a text is not UTF-8
        (the mapper's parse refuses it)."""
        severity, severity_text, event_name, dropped, flags = fields
        try:
            values = (severity, severity_text.decode(), event_name.decode(), dropped, flags)
        except UnicodeDecodeError:
            return None
        named = zip(
            ("severity_number", "severity_text", "event_name", "dropped_attributes_count", "flags"), values, strict=True
        )
        pairs = [_encode_pair((name, str(value))) for name, value in named if value]
        found = (b"".join(pairs), len(pairs))
        if len(self._record_fields) >= _CACHE_LIMIT:
            self._record_fields.clear()
        self._record_fields[fields] = found
        return found

    def _shared_of_prefix(self, prefix: bytes) -> _SharedEncoding | None:
        """The shared part of a payload's fields before its record (resource, scope and their
        schema URLs, as written): one lookup per record, as every record of a request has the same."""
        try:
            fields = archive_pb2.LogPayload.FromString(prefix)
        except DecodeError:
            return None  # the mapper parses the whole payload and reports what is wrong
        shared = self._shared_part(fields.resource, fields.scope)
        if len(self._prefixes) >= 1024:
            self._prefixes.clear()
        self._prefixes[prefix] = shared
        return shared

    def _encode_direct(self, entry: bytes, entry_hash: bytes, signature: bytes) -> EncodedEntry | None:
        """The common case, encoded without a ``LokiEntry``; None sends the entry to the mapper.

        The payload and its log record are walked on the wire here rather than parsed into protobuf
        messages: reading a parsed message's fields one by one cost more than all the rest. Only a
        plain encoding is taken: payload fields in ascending order, each once; record fields of
        LogRecord's numbers and wire types, each once but for attributes. Anything else (unknown
        fields, a field sent twice, which a parser merges) is the mapper's."""
        try:
            return self._walk(entry, entry_hash, signature)
        except (IndexError, struct.error, DecodeError):
            return None  # cut short or malformed: the mapper's parse says how

    def _walk(self, entry: bytes, entry_hash: bytes, signature: bytes) -> EncodedEntry | None:
        end = len(entry)
        # -- the payload (proto/collector_ext/pb/archive.proto LogPayload): fields 1-4, 5, then 6
        position = ENTRY_HEADER_SIZE
        last_tag = 0
        record_at = record_start = record_end = -1
        sender: bytes | None = None
        while position < end:
            tag = entry[position]
            if tag <= last_tag or tag > 0x32 or tag & 7 != 2:
                return None
            last_tag = tag
            length = entry[position + 1]
            start = position + 2
            if length >= 0x80:
                if entry[start] < 0x80:  # two bytes: a record of up to 16 KiB
                    length = length & 0x7F | entry[start] << 7
                    start += 1
                else:
                    length, start = _read_varint(entry, position + 1)
            stop = start + length
            if stop > end:
                return None
            if tag >= 0x2A and record_at < 0:
                record_at = record_start = record_end = position  # no record field: an empty record
            if tag == 0x2A:
                record_start, record_end = start, stop
            elif tag == 0x32:
                sender = entry[start:stop]
            position = stop
        if record_at < 0:
            record_at = record_start = record_end = end
        prefix = entry[ENTRY_HEADER_SIZE:record_at]
        try:
            shared = self._prefixes[prefix]
        except KeyError:
            shared = self._shared_of_prefix(prefix)
        if shared is None:
            return None
        # -- the log record (opentelemetry/proto/logs/v1/logs.proto LogRecord)
        position = record_start
        time_ns = observed_ns = severity = dropped = flags = 0
        severity_text = event_name = trace_id = span_id = b""
        body = None
        # Fields other than attributes in ascending order, so each at most once (a parser merges a
        # field sent twice: the mapper's way); serialisers write them so.
        last_tag = 0
        known = self._attribute_pairs
        names: list[str] = []
        pairs: list[bytes] = []
        while position < record_end:
            tag = entry[position]
            if tag == 0x32:  # attributes, most of a record's fields
                length = entry[position + 1]
                start = position + 2
                if length >= 0x80:
                    length, start = _read_varint(entry, position + 1)
                position = start + length
                raw = entry[start:position]
                found = known.get(raw)
                if found is None:
                    found = self._attribute_pair(raw)
                if found is _NESTED:
                    return None  # flattened into several fields: the mapper's way
                names.append(found[0])
                pairs.append(found[1])
                continue
            if tag <= last_tag:
                return None
            last_tag = tag
            if tag & 7 == 2:
                length = entry[position + 1]
                start = position + 2
                if length >= 0x80:
                    length, start = _read_varint(entry, position + 1)
                position = start + length
                value = entry[start:position]
                if tag == 0x2A:
                    body = value
                elif tag == 0x4A:
                    trace_id = value
                elif tag == 0x52:
                    span_id = value
                elif tag == 0x1A:
                    severity_text = value
                elif tag == 0x62:
                    event_name = value
                else:
                    return None
            elif tag == 0x09:
                time_ns = _FIXED64(entry, position + 1)[0]
                position += 9
            elif tag == 0x59:
                observed_ns = _FIXED64(entry, position + 1)[0]
                position += 9
            elif tag == 0x10:
                severity = entry[position + 1]
                if severity >= 0x80:
                    return None  # negative or past the enum's values: the mapper's way
                position += 2
            elif tag == 0x45:
                flags = _FIXED32(entry, position + 1)[0]
                position += 5
            elif tag == 0x38:
                dropped, position = _read_varint(entry, position + 1)
                if dropped >> 32:
                    return None  # a uint32 field: a parser keeps the low bits, the mapper's way
            else:
                return None
        if position != record_end:
            return None
        settings = self._mapper.settings
        if not body:
            line = b""
        elif body[0] == 0x0A and len(body) == body[1] + 2 and body[1] < 0x80:
            line = body[2:]  # a short string value, as it is
        else:
            line = _line_of(body)
        if len(line) > settings.max_line_bytes:
            return None
        if names:
            attribute_names = tuple(names)
            clear = shared.names_clear.get(attribute_names)
            if not (clear or (clear is None and shared.clear_names(attribute_names))):
                return None
        count = len(pairs)
        if time_ns and observed_ns:
            pairs.append(_pair_bytes(_OBSERVED_NAME, str(observed_ns).encode()))
            count += 1
        fields = (severity, severity_text, event_name, dropped, flags)
        encoded_fields = self._record_fields.get(fields)
        if encoded_fields is None:
            encoded_fields = self._encode_record_fields(fields)
            if encoded_fields is None:
                return None
        pairs.append(encoded_fields[0])
        count += encoded_fields[1]
        if trace_id:
            pairs.append(
                _TRACE_ID_PREFIX + binascii.hexlify(trace_id)
                if len(trace_id) == 16
                else _encode_pair(("trace_id", trace_id.hex()))
            )
            count += 1
        if span_id:
            pairs.append(
                _SPAN_ID_PREFIX + binascii.hexlify(span_id)
                if len(span_id) == 8
                else _encode_pair(("span_id", span_id.hex()))
            )
            count += 1
        if sender is not None:
            described = self._senders.get(sender)
            if described is None:
                described = self._describe_sender(sender)
            if described:
                pairs.insert(0, described)
                count += 1
        if count + 5 + shared.count >= settings.max_metadata_entries:
            return None
        if not (entry.startswith(self._chain_id, 4) and entry.startswith(self._key_id, 60)):
            self._chain_id, self._key_id = entry[4:20], entry[60:68]
            self._chain_pair, self._key_pair = _seal_id_pairs(self._chain_id, self._key_id)
        record_metadata = b"".join(pairs)
        if len(record_metadata) + len(shared.metadata) > settings.max_metadata_bytes - 64 - _SEAL_PAIRS_SIZE:
            return None
        seconds, nanos = divmod(time_ns or observed_ns or int.from_bytes(entry[68:76], "big"), 1_000_000_000)
        if seconds != self._seconds:
            self._seconds = seconds
            self._seconds_field = b"\x08" + encode_varint(seconds) if seconds else b""
        stamp = self._seconds_field + b"\x10" + _nanos_varint(nanos) if nanos else self._seconds_field
        sequence = b"%d" % int.from_bytes(entry[20:28], "big")
        data = b"".join(
            (
                b"\x0a",
                _ONE_BYTE[len(stamp)],
                stamp,
                (_LINE_TAG + encode_varint(len(line)) + line) if line else b"",
                self._chain_pair,
                _PAIR_TAG,
                _ONE_BYTE[len(_SEQUENCE_NAME) + 2 + len(sequence)],
                _SEQUENCE_NAME,
                b"\x12",
                _ONE_BYTE[len(sequence)],
                sequence,
                _HASH_PREFIX,
                binascii.hexlify(entry_hash),
                _SIGNATURE_PREFIX,
                binascii.b2a_base64(signature, newline=False),
                self._key_pair,
                record_metadata,
                shared.metadata,
            )
        )
        return EncodedEntry(shared.stream, shared.labels, data)


def _seal_id_pairs(chain_id: bytes, key_id: bytes) -> tuple[bytes, bytes]:
    """The chain id and key id pairs of a record's seal."""
    return _encode_pair((SEAL_CHAIN_ID, chain_id.hex())), _encode_pair((SEAL_KEY_ID, key_id.hex()))


def _nanos_varint(nanos: int) -> bytes:
    """``encode_varint`` for the nanoseconds of a timestamp, its low two 7-bit groups looked up."""
    if nanos < 1 << 14:
        return encode_varint(nanos)
    return _CONTINUED[nanos & 127] + _CONTINUED[nanos >> 7 & 127] + encode_varint(nanos >> 14)


# A 7-bit group followed by more: its byte with the continuation bit set.
_CONTINUED = [bytes((group | 0x80,)) for group in range(128)]


_FIXED64 = struct.Struct("<Q").unpack_from
_FIXED32 = struct.Struct("<I").unpack_from


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it; IndexError past the end, struct.error
    past 64 bits (both send the entry to the mapper)."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift >= 64:
            raise struct.error("varint past 64 bits")


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
