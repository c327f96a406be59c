"""OTLP/JSON decoding: an ExportLogsServiceRequest from the bytes of an ``application/json`` body.

OTLP/JSON differs from protobuf's canonical JSON mapping in the trace and span ids (hex, not base64);
this module rewrites those and hands the document to protobuf's JSON parser. It does no I/O and knows
nothing about HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector_ext.errors import InvalidRequestError

_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")
# OTLP/JSON writes these bytes fields as hex; protobuf's JSON mapping expects base64.
_HEX_ID_FIELDS = (("traceId", 16), ("trace_id", 16), ("spanId", 8), ("span_id", 8))


def _hex_id_as_base64(value: str, size: int, field: str) -> str:
    if not value:
        return value
    if len(value) != 2 * size or not _HEX_DIGITS.fullmatch(value):
        raise InvalidRequestError(
            f"{field} must be {2 * size} hex digits (OTLP/JSON encodes ids as hex), got {len(value)} characters"
        )
    return base64.b64encode(binascii.unhexlify(value)).decode("ascii")


def _dicts_under(parent: object, *keys: str) -> list[dict[str, Any]]:
    if not isinstance(parent, dict):
        return []
    found: list[dict[str, Any]] = []
    for key in keys:
        value = parent.get(key)
        if isinstance(value, list):
            found.extend(item for item in value if isinstance(item, dict))
    return found


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """Rewrite the log records' hex trace/span ids in place into protobuf JSON's base64.

    Anything that is not shaped like OTLP is left alone for json_format to report.
    """
    for resource_logs in _dicts_under(document, "resourceLogs", "resource_logs"):
        for scope_logs in _dicts_under(resource_logs, "scopeLogs", "scope_logs"):
            for record in _dicts_under(scope_logs, "logRecords", "log_records"):
                for field, size in _HEX_ID_FIELDS:
                    value = record.get(field)
                    if isinstance(value, str):
                        record[field] = _hex_id_as_base64(value, size, field)


def parse_json_request(body: bytes) -> ExportLogsServiceRequest:
    """Decode a non-empty OTLP/JSON body.

    Raises:
        InvalidRequestError: the JSON body is not an object, or an id is not hex of the right length.
        ValueError, TypeError, RecursionError, json_format.ParseError: the caller maps these to
            InvalidRequestError.
    """
    document = json.loads(body.decode("utf-8"))
    if not isinstance(document, dict):
        raise InvalidRequestError(
            f"request is not a valid ExportLogsServiceRequest (the JSON body is a {type(document).__name__}, "
            "not an object); nothing was sealed"
        )
    _hex_ids_to_base64(document)
    return json_format.ParseDict(document, ExportLogsServiceRequest(), ignore_unknown_fields=True)
