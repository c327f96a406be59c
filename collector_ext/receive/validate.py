"""Limits on a decoded OTLP logs request, checked before anything of it is sealed.

``check_request`` refuses a request (``InvalidRequestError``, which the receivers answer with
INVALID_ARGUMENT / 400) when it holds more attributes than ``RequestLimits`` allow, nests values
deeper than they allow, or carries a trace or span id of a length OTLP does not define. It never
trims: a request is sealed whole or not at all, so the seal holds exactly what the client sent.

Every message names the limit or the field and where it is (``resource_logs[0].scope_logs[2].
log_records[7].attributes[3]``), never a key, a value or any other content of the request: the
message goes back to the client and may be logged.

The module is pure: it reads a parsed message and raises; decoding the wire forms, and refusing
values the decoders would change, is the job of ``otlp_protobuf`` and ``otlp_json``.

Cost: reaching each attribute's value from Python costs about 0.4 us (upb makes a wrapper object for
every KeyValue and AnyValue touched), more than the rest of the checks together. A request decoded
by ``otlp_protobuf.parse_scalar_request`` is known to hold no kvlist or array value: depth cannot be
passed and every attribute counts once, so ``check_request(..., scalar_only=True)`` reads only the
counts per record and the ids; anything out of the ordinary goes through the full walk, which raises
with the same message as always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from collector_ext.errors import InvalidRequestError

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
# The protobuf decoder refuses messages nested more than 100 deep; a value at depth d of a record's
# body sits 3d + 2 messages down (request, resource_logs, scope_logs, record, then AnyValue,
# KeyValueList, KeyValue per level), so the depth setting stays below where that limit would answer
# first with a less helpful message.
MAX_VALUE_DEPTH_CEILING = 30


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold (the ``limits:`` settings of the same names).

    Attributes:
        max_attributes: top-level attributes of one log record, one resource or one scope.
        max_attributes_per_request: key/value pairs and array elements at every depth, across the
            request (a resource's and a scope's attributes count once per occurrence).
        max_value_depth: levels of values: a body or attribute value is at level 1, the entries of a
            kvlist or array at level n are at level n + 1.
    """

    max_attributes: int = 1024
    max_attributes_per_request: int = 1 << 20
    max_value_depth: int = 16

    def __post_init__(self) -> None:
        if self.max_attributes < 1 or self.max_attributes_per_request < 1:
            raise ValueError("attribute limits must be positive")
        if not 1 <= self.max_value_depth <= MAX_VALUE_DEPTH_CEILING:
            raise ValueError(f"max_value_depth must be between 1 and {MAX_VALUE_DEPTH_CEILING}")


DEFAULT_REQUEST_LIMITS = RequestLimits()
_CONTAINERS = frozenset({"kvlist_value", "array_value"})


class _Tally:
    """Counts values across a request; refuses as soon as the request-wide limit is passed."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.limit = limit

    def add(self, amount: int, where: str) -> None:
        self.count += amount
        if self.count > self.limit:
            raise InvalidRequestError(
                f"the request holds more than limits.max_attributes_per_request={self.limit} attributes and "
                f"array elements (passed at {where}); nothing was sealed"
            )


def _check_values(
    attributes: Sequence[KeyValue], body: AnyValue | None, where: str, limits: RequestLimits, tally: _Tally
) -> None:
    """Depth and request-wide count of one record's (or resource's, scope's) values."""
    if len(attributes) > limits.max_attributes:
        raise InvalidRequestError(
            f"{where} has {len(attributes)} attributes, more than limits.max_attributes={limits.max_attributes}; "
            "nothing was sealed"
        )
    tally.add(len(attributes), where)
    # Only containers are descended into; most values are scalars and cost one WhichOneof.
    stack: list[tuple[AnyValue, int, str]] = []
    if body is not None:
        kind = body.WhichOneof("value")
        if kind in _CONTAINERS:
            stack.append((body, 1, f"{where}.body"))
    for index, pair in enumerate(attributes):
        value = pair.value
        if value.WhichOneof("value") in _CONTAINERS:
            stack.append((value, 1, f"{where}.attributes[{index}]"))
    while stack:
        value, depth, path = stack.pop()
        entries: Sequence[AnyValue]
        if value.WhichOneof("value") == "kvlist_value":
            entries = [pair.value for pair in value.kvlist_value.values]
        else:
            entries = value.array_value.values
        if not entries:
            continue
        if depth >= limits.max_value_depth:
            raise InvalidRequestError(
                f"{path} nests values more than limits.max_value_depth={limits.max_value_depth} levels deep; "
                "nothing was sealed"
            )
        tally.add(len(entries), path)
        for entry in entries:
            if entry.WhichOneof("value") in _CONTAINERS:
                stack.append((entry, depth + 1, path))


def _check_id(value: bytes, size: int, field: str, where: str) -> None:
    # The Collector's pdata refuses these lengths too (its TraceID and SpanID are fixed-size arrays);
    # sealing them as sent would give the archive ids no trace backend can look up.
    if value and len(value) != size:
        raise InvalidRequestError(
            f"{where}.{field} is {len(value)} bytes; it must be empty or {size} bytes; nothing was sealed"
        )


def _flat_request_within(request: ExportLogsServiceRequest, limits: RequestLimits) -> bool:
    """For a request of scalar values only: True when no limit is passed and every id is well formed
    (False sends it to the full walk, which names the offence)."""
    max_attributes = limits.max_attributes
    total = 0
    for resource_logs in request.resource_logs:
        count = len(resource_logs.resource.attributes)
        if count > max_attributes:
            return False
        total += count
        for scope_logs in resource_logs.scope_logs:
            count = len(scope_logs.scope.attributes)
            if count > max_attributes:
                return False
            total += count
            for record in scope_logs.log_records:
                count = len(record.attributes)
                if count > max_attributes:
                    return False
                total += count
                trace_id = record.trace_id
                span_id = record.span_id
                if (trace_id and len(trace_id) != TRACE_ID_BYTES) or (span_id and len(span_id) != SPAN_ID_BYTES):
                    return False
    return total <= limits.max_attributes_per_request


def check_request(
    request: ExportLogsServiceRequest,
    limits: RequestLimits = DEFAULT_REQUEST_LIMITS,
    *,
    scalar_only: bool = False,
) -> None:
    """Refuse a request that passes ``limits`` or carries a malformed trace or span id.

    Args:
        scalar_only: the request is known to hold no kvlist or array value (it came from
            ``otlp_protobuf.parse_scalar_request``); the full walk runs only if a check fails.

    Raises:
        InvalidRequestError: naming the limit or field and the position of the first offence.
    """
    if scalar_only and _flat_request_within(request, limits):
        return
    tally = _Tally(limits.max_attributes_per_request)
    max_attributes = limits.max_attributes
    for r, resource_logs in enumerate(request.resource_logs):
        where = f"resource_logs[{r}]"
        _check_values(resource_logs.resource.attributes, None, f"{where}.resource", limits, tally)
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            scope_where = f"{where}.scope_logs[{s}]"
            _check_values(scope_logs.scope.attributes, None, f"{scope_where}.scope", limits, tally)
            # The loop below runs once per record: it stays inline and builds no position text unless
            # something needs a closer look, which _check_values and _check_id then take.
            containers = _CONTAINERS
            for index, record in enumerate(scope_logs.log_records):
                attributes = record.attributes
                count = len(attributes)
                closer_look = (
                    count > max_attributes
                    or tally.count + count > tally.limit
                    or record.body.WhichOneof("value") in containers
                )
                if not closer_look:
                    for pair in attributes:
                        if pair.value.WhichOneof("value") in containers:
                            closer_look = True
                            break
                if closer_look:
                    body = record.body if record.HasField("body") else None
                    _check_values(attributes, body, f"{scope_where}.log_records[{index}]", limits, tally)
                else:
                    tally.count += count
                trace_id = record.trace_id
                span_id = record.span_id
                if (trace_id and len(trace_id) != TRACE_ID_BYTES) or (span_id and len(span_id) != SPAN_ID_BYTES):
                    record_where = f"{scope_where}.log_records[{index}]"
                    _check_id(trace_id, TRACE_ID_BYTES, "trace_id", record_where)
                    _check_id(span_id, SPAN_ID_BYTES, "span_id", record_where)
