"""Loki push request bodies: block-snappy protobuf PushRequest (the default) or JSON.

Pure encoding, no I/O. Entries are grouped into streams by their label set; entries keep their
order within a stream.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import cramjam

from collector_ext.deliver.loki.mapping import LokiEntry
from collector_ext.seal.payload import encode_varint

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


@functools.lru_cache(maxsize=65536)
def _encode_pair(pair: tuple[str, str]) -> bytes:
    # Resource, scope and many attribute pairs repeat from record to record: encode them once.
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


def encoded_size(entry: LokiEntry) -> int:
    """Roughly the bytes an entry adds to a push (for batching by size)."""
    return 32 + len(entry.line) + sum(len(n) + len(v) + 4 for n, v in entry.metadata)
