"""Views of a sealed payload for the Loki encoder: the same wire fields, the nested ones as bytes.

``LogRecordView`` declares LogRecord's field numbers (opentelemetry/proto/logs/v1/logs.proto) with
``body`` and ``attributes`` as repeated ``bytes`` instead of messages. Parsing with it costs what
parsing the record costs, but reading an attribute is then a bytes object (which the encoder looks up
in a cache of encoded pairs) instead of two message wrappers built field by field, which was the
largest cost of mapping a record. ``body`` is repeated so that a record carrying it more than once
(a parser merges such messages) can be told apart and left to the full mapping.

``LogPayloadView`` does the same for the payload (proto/collector_ext/pb/archive.proto): its
``sender``, the same for every record of a request, comes as bytes the encoder describes once.

Built at import from a descriptor (no generated module): nothing else uses it, and it must never be
used to write a record.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, repeated): LogRecord's fields, nested messages as bytes.
_FIELDS = (
    ("time_unix_nano", 1, _F.TYPE_FIXED64, False),
    ("severity_number", 2, _F.TYPE_INT32, False),  # an open enum: its int32 value
    ("severity_text", 3, _F.TYPE_STRING, False),
    ("body", 5, _F.TYPE_BYTES, True),
    ("attributes", 6, _F.TYPE_BYTES, True),
    ("dropped_attributes_count", 7, _F.TYPE_UINT32, False),
    ("flags", 8, _F.TYPE_FIXED32, False),
    ("trace_id", 9, _F.TYPE_BYTES, False),
    ("span_id", 10, _F.TYPE_BYTES, False),
    ("observed_time_unix_nano", 11, _F.TYPE_FIXED64, False),
    ("event_name", 12, _F.TYPE_STRING, False),
)


# LogPayload's fields; the sender message as bytes, repeated so that one sent twice can be told apart.
_PAYLOAD_FIELDS = (
    ("resource", 1, _F.TYPE_BYTES, False),
    ("scope", 3, _F.TYPE_BYTES, False),
    ("log_record", 5, _F.TYPE_BYTES, False),
    ("sender", 6, _F.TYPE_BYTES, True),
)


def _build() -> tuple[Any, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="collector_ext/deliver/loki/record_view.proto", package="collector_ext.loki_view", syntax="proto3"
    )
    for message_name, fields in (("LogRecordView", _FIELDS), ("LogPayloadView", _PAYLOAD_FIELDS)):
        message = file.message_type.add(name=message_name)
        for name, number, kind, repeated in fields:
            message.field.add(
                name=name,
                number=number,
                type=kind,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("collector_ext.loki_view.LogRecordView")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("collector_ext.loki_view.LogPayloadView")),
    )


LogRecordView, LogPayloadView = _build()
