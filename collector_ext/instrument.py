"""Helpers for workflow code: structlog events as OpenTelemetry log records, so they reach the seal.

:class:`OpenTelemetryProcessor` is a structlog processor. Put it in structlog's processor chain and
every event is emitted through an OpenTelemetry ``LoggerProvider``'s logger, from where the SDK's
OTLP exporter sends it to the sidecar like any other audit event:

- the event (``log.info("ai_task_started", ...)``) becomes the record's top-level ``event_name``
  and its body;
- the other key-values become attributes: dicts stay OTLP maps, lists/tuples/sets become arrays,
  str/int/float/bool/bytes keep their type, ``None`` an empty value, anything else its ``str()``
  (datetimes their ISO form; ints beyond 64 bits their decimal text);
- a few keys that the OpenTelemetry semantic conventions name are renamed (:data:`SEMCONV_KEYS`:
  ``user_id`` -> ``user.id``, ``session_id`` -> ``session.id``, ...), unless the event already
  carries the dotted key;
- the level (``add_log_level``'s ``level`` key, else the method name) gives severity number and text;
- ``exc_info`` (``True``, an exception, or a ``sys.exc_info()`` tuple) gives ``exception.type``,
  ``exception.message`` and ``exception.stacktrace`` exactly as the SDK's ``emit(exception=...)``
  does; a stack already rendered into ``exception`` by ``format_exc_info`` becomes
  ``exception.stacktrace``;
- ``timestamp`` (``TimeStamper``: UNIX seconds, or ISO 8601; an ISO time without zone is local time)
  is the record's time; without it the SDK stamps the time of emission.

What it deliberately does not do: it imports neither structlog nor the OpenTelemetry SDK at import
time (only the API, lazily, when the first event is emitted), configures neither of them, renders
nothing, and does not batch or send: the ``LoggerProvider`` you give it owns export, retry and flush.
The contrib package opentelemetry-instrumentation-structlog was considered and not used: it puts the
event into the body but not into ``event_name``, renames no keys, offers no way to drop the event
after emitting it, and pins an opentelemetry-semantic-conventions release that conflicts with the
SDK this project pins.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

# structlog key -> the semantic-convention attribute it becomes. Small on purpose: only keys whose
# meaning is unambiguous; pass ``key_map=`` to extend or replace it.
SEMCONV_KEYS: Mapping[str, str] = {
    "user_id": "user.id",
    "user_name": "user.name",
    "user_email": "user.email",
    "user_roles": "user.roles",
    "session_id": "session.id",
}

# structlog level -> (OpenTelemetry SeverityNumber value, severity text). "exception" is structlog's
# method for error-with-traceback; "msg" is its alias of info.
_SEVERITIES: Mapping[str, tuple[int, str]] = {
    "trace": (1, "TRACE"),
    "debug": (5, "DEBUG"),
    "info": (9, "INFO"),
    "msg": (9, "INFO"),
    "warn": (13, "WARN"),
    "warning": (13, "WARN"),
    "error": (17, "ERROR"),
    "exception": (17, "ERROR"),
    "critical": (21, "FATAL"),
    "fatal": (21, "FATAL"),
}

# Keys structlog and its stdlib integration use for themselves: consumed here, never attributes.
_RESERVED_KEYS = frozenset(
    {"event", "level", "timestamp", "exc_info", "exception", "_record", "_from_structlog", "_logger", "_name"}
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class OtelLogger(Protocol):
    """What this module needs of an OpenTelemetry logger (``opentelemetry._logs.Logger``)."""

    def emit(self, record: Any = None, **fields: Any) -> None: ...


class OtelLoggerProvider(Protocol):
    """What this module needs of an OpenTelemetry ``LoggerProvider``."""

    def get_logger(self, name: str, version: str | None = None, /, *args: Any, **kwargs: Any) -> Any: ...


class OpenTelemetryProcessor:
    """A structlog processor that emits each event as an OpenTelemetry log record.

    Place it after the processors that add context (``merge_contextvars``, ``add_log_level``,
    ``TimeStamper``) and before the renderer.

    Args:
        logger_provider: the OpenTelemetry SDK ``LoggerProvider`` whose logger emits the records.
        scope_name: the instrumentation scope (OpenTelemetry logger name) of the records.
        scope_version: its version, if any.
        pass_on: True (default) returns the event to the next processor, so structlog still
            renders it; False emits it and then drops it (``structlog.DropEvent``), for code whose
            structlog output goes nowhere else.
        key_map: renames applied to top-level keys; default :data:`SEMCONV_KEYS`.
    """

    def __init__(
        self,
        logger_provider: OtelLoggerProvider,
        *,
        scope_name: str = "structlog",
        scope_version: str | None = None,
        pass_on: bool = True,
        key_map: Mapping[str, str] = SEMCONV_KEYS,
    ) -> None:
        self._logger: OtelLogger = logger_provider.get_logger(scope_name, scope_version)
        self._pass_on = pass_on
        self._key_map = dict(key_map)

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self._logger.emit(**record_fields(event_dict, method_name, self._key_map))
        if self._pass_on:
            return event_dict
        from structlog import DropEvent  # only ever called from inside structlog

        raise DropEvent


def record_fields(
    event_dict: Mapping[str, Any], method_name: str, key_map: Mapping[str, str] = SEMCONV_KEYS
) -> dict[str, Any]:
    """The keyword arguments of ``Logger.emit`` for one structlog event (see the module docstring).

    Pure apart from reading the exception being handled when ``exc_info`` is ``True``.
    """
    from opentelemetry._logs import SeverityNumber

    event = event_dict.get("event")
    event_name = event if isinstance(event, str) else (None if event is None else str(event))
    level = event_dict.get("level")
    level_name = level if isinstance(level, str) and level else method_name
    number, text = _SEVERITIES.get(level_name.lower(), (0, level_name.upper()))

    attributes: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key in _RESERVED_KEYS:
            continue
        name = key_map.get(key, key)
        if name != key and name in event_dict:
            name = key  # the event also carries the dotted key: keep both as given
        attributes[name] = attribute_value(value)

    timestamp = _timestamp_nanos(event_dict.get("timestamp"))
    if timestamp is None and event_dict.get("timestamp") is not None:
        attributes.setdefault("timestamp", attribute_value(event_dict["timestamp"]))

    exception = _exception(event_dict.get("exc_info"))
    rendered = event_dict.get("exception")
    if exception is None and isinstance(rendered, str) and rendered:
        attributes.setdefault("exception.stacktrace", rendered)

    fields: dict[str, Any] = {
        "event_name": event_name,
        "body": event_name,
        "severity_number": SeverityNumber(number),
        "severity_text": text,
        "attributes": attributes,
    }
    if timestamp is not None:
        fields["timestamp"] = timestamp
    if exception is not None:
        fields["exception"] = exception
    return fields


def attribute_value(value: Any) -> Any:
    """A Python value as an OpenTelemetry ``AnyValue``: maps and arrays kept, scalars typed."""
    if value is None or isinstance(value, str | bool | float | bytes):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, Mapping):
        return {str(k): attribute_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [attribute_value(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def _timestamp_nanos(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value * 1_000_000_000)
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
        # a naive time is local time, as TimeStamper(fmt="iso", utc=False) writes it
        since_epoch = parsed.astimezone() - _EPOCH if parsed.tzinfo is None else parsed - _EPOCH
        return (since_epoch // datetime.timedelta(microseconds=1)) * 1000
    return None


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    return None
