"""Loki push request bodies: block-snappy protobuf PushRequest (the default) or JSON.

Pure encoding, no I/O. Entries are grouped into streams by their label set; entries keep their
order within a stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import cramjam

from collector_ext.deliver.loki.mapping import LokiEntry
from collector_ext.pb import loki_push_pb2

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
JSON_CONTENT_TYPE = "application/json"


def _streams(entries: Sequence[LokiEntry]) -> dict[str, list[LokiEntry]]:
    streams: dict[str, list[LokiEntry]] = {}
    for entry in entries:
        streams.setdefault(entry.label_string(), []).append(entry)
    return streams


def encode_protobuf(entries: Sequence[LokiEntry]) -> bytes:
    """A block-snappy compressed PushRequest, as Loki decodes on /loki/api/v1/push."""
    request = loki_push_pb2.PushRequest()
    for labels, stream_entries in _streams(entries).items():
        stream = request.streams.add(labels=labels)
        for entry in stream_entries:
            pushed = stream.entries.add(line=entry.line)
            pushed.timestamp.seconds, pushed.timestamp.nanos = divmod(entry.timestamp_ns, 1_000_000_000)
            for name, value in entry.metadata:
                pushed.structuredMetadata.add(name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


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
