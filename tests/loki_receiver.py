"""An in-process stand-in for Grafana Loki's push and query_range HTTP API, for tests.

Real Loki cannot be installed on the test machines, so this receiver enforces the push contract
described in ``shared/reference/loki-push-contract.md`` (restated from Loki's sources; "3.x" below
means Loki 3.7.6, single binary, one ingester, replication factor 1):

* ``POST /loki/api/v1/push`` and the legacy ``POST /api/prom/push``: Content-Encoding (``""``,
  ``snappy`` as a no-op, ``gzip``, raw ``deflate``), Content-Type dispatch (``application/json`` is the
  JSON push format, anything else is a *block*-snappy compressed protobuf ``PushRequest``), label
  string parsing with the Prometheus metric grammar, ``service_name`` discovery, every default
  validation limit, structured metadata limits and name normalisation, ``detected_level``
  discovery, the tenant ingestion rate limit (429), the ingester-side checks (stream limit,
  per-stream rate limit, "entry too far behind", duplicate dropping), the partial write on 400 and
  Loki's plain-text error bodies.
* ``GET``/``POST /loki/api/v1/query_range`` for a stream selector (``=``, ``!=``, ``=~``, ``!~``)
  optionally followed by line filters (``|=``, ``!=``, ``|~``, ``!~``); other LogQL is refused
  with 400. The response is Loki's ``streams`` result. By default (like Loki without the
  ``X-Loki-Response-Encoding-Flags: categorize-labels`` header) structured metadata is merged into
  the result stream labels; with the header it comes back as the third element of each value.

Every limit is an attribute named after Loki's ``limits_config`` key and defaults to Loki's
default; pass overrides as keyword arguments to ``LokiReceiver(...)`` or assign them later.

Test knobs: :meth:`LokiReceiver.fail_next`, :attr:`LokiReceiver.down` / :meth:`LokiReceiver.set_down`,
:attr:`LokiReceiver.force_rate_limit`, the record :attr:`LokiReceiver.pushes`, the store views
:meth:`LokiReceiver.streams` / :meth:`LokiReceiver.entries`, and the tampering helpers
:meth:`~LokiReceiver.delete_entry`, :meth:`~LokiReceiver.replace_line`,
:meth:`~LokiReceiver.set_metadata` and :meth:`~LokiReceiver.add_entry`.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import cramjam

__all__ = [
    "DEFAULT_DISCOVER_SERVICE_NAME",
    "LabelParseError",
    "LokiEntry",
    "LokiReceiver",
    "PushRecord",
    "PushedEntry",
    "PushedStream",
    "StoredEntry",
    "StoredStream",
    "go_quote",
    "parse_labels",
    "render_labels",
]

KiB = 1024
MiB = 1024 * KiB

PUSH_PATHS = ("/loki/api/v1/push", "/api/prom/push")
QUERY_RANGE_PATH = "/loki/api/v1/query_range"

# Loki 3.7.6 `discover_service_name` default, in order.
DEFAULT_DISCOVER_SERVICE_NAME: tuple[str, ...] = (
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
)
SERVICE_NAME_LABEL = "service_name"
SERVICE_UNKNOWN = "unknown_service"
LEVEL_LABEL = "detected_level"
LEVEL_FIELDS: tuple[str, ...] = (
    "level",
    "LEVEL",
    "Level",
    "severity",
    "SEVERITY",
    "Severity",
    "lvl",
    "LVL",
    "Lvl",
)
LOG_LEVEL_FROM_JSON_MAX_DEPTH = 2

_NS = 1_000_000_000
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
# Valid protobuf Timestamp seconds: [0001-01-01, 10000-01-01).
_MIN_TS_SECONDS = -62135596800
_MAX_TS_SECONDS = 253402300800
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _space_for_invalid_utf8(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return " ", err.end


codecs.register_error("loki_receiver_space", _space_for_invalid_utf8)


# --------------------------------------------------------------------------------------------------
# Small Go-compatibility helpers: int64 wrap-around, time formatting, strconv.Quote, byte sizes.
# --------------------------------------------------------------------------------------------------


def _wrap_int64(value: int) -> int:
    return ((value - _INT64_MIN) % (1 << 64)) + _INT64_MIN


def go_unix_nano(seconds: int, nanos: int) -> int:
    """Go's ``time.Time.UnixNano()``, including its silent int64 overflow for far-away dates."""
    return _wrap_int64(seconds * _NS + nanos)


def _split_ns(ns: int) -> tuple[int, int]:
    return ns // _NS, ns % _NS


def _datetime(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _date_time(seconds: int, sep: str) -> str:
    d = _datetime(seconds)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}{sep}{d.hour:02d}:{d.minute:02d}:{d.second:02d}"


def rfc3339(seconds: int) -> str:
    """Go ``t.UTC().Format(time.RFC3339)`` (whole seconds, ``Z``)."""
    return _date_time(seconds, "T") + "Z"


def _go_time_string(seconds: int, nanos: int) -> str:
    """Go ``time.Time.String()`` for a UTC time: ``2006-01-02 15:04:05.999999999 +0000 UTC``."""
    text = _date_time(seconds, " ")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(value: str) -> str:
    """Go ``strconv.Quote``. Invalid UTF-8 (kept as surrogate escapes) is written as ``\\xNN``."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _byte_size(n: int) -> str:
    """``flagext.ByteSize.String()`` (c2h5oh/datasize): the largest unit that divides exactly."""
    if n == 0:
        return "0B"
    for unit, size in (
        ("EB", 1 << 60),
        ("PB", 1 << 50),
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", MiB),
        ("KB", KiB),
    ):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _go_duration(delta: timedelta) -> str:
    """Go ``time.Duration.String()`` for whole seconds or more, e.g. ``721h0m0s``."""
    total = int(delta.total_seconds())
    if total == 0:
        return "0s"
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _to_text(raw: bytes) -> str:
    """Bytes from the wire to ``str``, keeping invalid UTF-8 as surrogate escapes (Loki does not check)."""
    return raw.decode("utf-8", "surrogateescape")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _for_json(text: str) -> str:
    """What Go's JSON encoder emits for a string holding invalid UTF-8: U+FFFD per bad byte."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# Label strings: the Prometheus metric grammar that Loki's syntax.ParseLabels uses.
# --------------------------------------------------------------------------------------------------


class LabelParseError(ValueError):
    """A label string that Loki's parser refuses. ``str()`` is Loki's ``<line>:<col>: parse error: ...``."""

    def __init__(self, text: str, pos: int, message: str) -> None:
        prefix = text[:pos]
        line = prefix.count("\n") + 1
        col = _utf8_len(prefix[prefix.rfind("\n") + 1 :]) + 1
        super().__init__(f"{line}:{col}: parse error: {message}")
        self.pos = pos
        self.message = message


_SPACE = " \t\n\r"


def _is_alpha(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_alnum(ch: str) -> bool:
    return _is_alpha(ch) or ("0" <= ch <= "9")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _read_identifier(text: str, pos: int, *, colon: bool = False) -> int:
    while pos < len(text) and (_is_alnum(text[pos]) or (colon and text[pos] == ":")):
        pos += 1
    return pos


_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
}


def _lex_string(text: str, pos: int) -> tuple[str, int]:
    """Lex and unquote the string literal starting at ``pos``; returns (value, end position)."""
    quote = text[pos]
    i = pos + 1
    if quote == "`":
        end = text.find("`", i)
        if end < 0:
            raise LabelParseError(text, pos, "unterminated raw string")
        raw = text[i:end]
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in raw):
            raise LabelParseError(text, pos, "invalid UTF-8 rune")
        return raw, end + 1
    out = bytearray()
    while True:
        if i >= len(text) or text[i] == "\n":
            raise LabelParseError(text, pos, "unterminated quoted string")
        ch = text[i]
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            raise LabelParseError(text, pos, "invalid UTF-8 rune")
        if ch == quote:
            return out.decode("utf-8", "surrogateescape"), i + 1
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        i += 1
        if i >= len(text) or text[i] == "\n":
            raise LabelParseError(text, pos, "escape sequence not terminated")
        esc = text[i]
        if esc in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[esc]
            i += 1
        elif esc == quote:
            out += esc.encode()
            i += 1
        elif esc in "01234567" or esc in "xuU":
            digits, base = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}.get(esc, (3, 8))
            start = i if base == 8 else i + 1
            chunk = text[start : start + digits]
            valid = "01234567" if base == 8 else "0123456789abcdefABCDEF"
            if len(chunk) < digits or any(c not in valid for c in chunk):
                if start + len(chunk) >= len(text) and all(c in valid for c in chunk):
                    raise LabelParseError(text, pos, "escape sequence not terminated")
                raise LabelParseError(text, pos, f"illegal character {chunk[:1]!r} in escape sequence")
            value = int(chunk, base)
            if esc in "xU" or base == 8:
                if base == 8 and value > 255:
                    raise LabelParseError(text, pos, "octal escape value > 255")
                if esc == "U" and (value > 0x10FFFF or 0xD800 <= value <= 0xDFFF):
                    raise LabelParseError(text, pos, "escape sequence is an invalid Unicode code point")
                out += bytes([value]) if esc != "U" else chr(value).encode()
            else:
                if 0xD800 <= value <= 0xDFFF:
                    raise LabelParseError(text, pos, "escape sequence is an invalid Unicode code point")
                out += chr(value).encode()
            i = start + digits
        else:
            raise LabelParseError(text, pos, f"unknown escape sequence U+{ord(esc):04X} {esc!r}")


def _describe_token(text: str, pos: int) -> str:
    """A PromQL-style description of the token at ``pos`` for "unexpected ..." messages."""
    if pos >= len(text):
        return "end of input"
    ch = text[pos]
    if _is_alpha(ch):
        return f'identifier "{text[pos : _read_identifier(text, pos)]}"'
    if ch in "\"'`":
        return "string"
    for op in ("!=", "=~", "!~", "=", ",", "}", "{", "(", ")"):
        if text.startswith(op, pos):
            return f'"{op}"'
    return f"character {ch!r}"


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parse a label string like Loki's ``syntax.ParseLabels`` (Prometheus ``ParseMetric``).

    Returns the pairs in the order written (no sorting, no dropping of empty values, duplicates
    kept). Raises :class:`LabelParseError` with Prometheus' ``1:4: parse error: ...`` text.
    Only the legacy ``[a-zA-Z_][a-zA-Z0-9_]*`` label names are accepted (the conservative choice the
    reference recommends; quoted UTF-8 names are refused).
    """
    pairs: list[tuple[str, str]] = []
    pos = _skip_space(text, 0)
    if pos >= len(text):
        return pairs
    if _is_alpha(text[pos]) or text[pos] == ":":
        end = _read_identifier(text, pos, colon=True)
        pairs.append(("__name__", text[pos:end]))
        pos = _skip_space(text, end)
        if pos >= len(text):
            return pairs
    if text[pos] != "{":
        raise LabelParseError(text, pos, f"unexpected {_describe_token(text, pos)}")
    pos += 1
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            raise LabelParseError(text, pos, "unexpected end of input inside braces")
        ch = text[pos]
        if ch == "}":
            pos += 1
            break
        if not _is_alpha(ch):
            if ch == "{":
                raise LabelParseError(text, pos, "unexpected left brace '{'")
            if ch in "\"'`,=!":
                raise LabelParseError(
                    text,
                    pos,
                    f'unexpected {_describe_token(text, pos)} in label set, expected identifier or "}}"',
                )
            raise LabelParseError(text, pos, f"unexpected character inside braces: {ch!r}")
        end = _read_identifier(text, pos)
        name = text[pos:end]
        pos = _skip_space(text, end)
        if pos >= len(text):
            raise LabelParseError(text, pos, "unexpected end of input inside braces")
        if text.startswith(("!=", "=~", "!~"), pos) or text[pos] != "=":
            if text[pos] in "=!,}\"'`" or _is_alpha(text[pos]):
                raise LabelParseError(text, pos, f'unexpected {_describe_token(text, pos)} in label set, expected "="')
            raise LabelParseError(text, pos, f"unexpected character inside braces: {text[pos]!r}")
        pos = _skip_space(text, pos + 1)
        if pos >= len(text):
            raise LabelParseError(text, pos, "unexpected end of input inside braces")
        if text[pos] not in "\"'`":
            if text[pos] in "=!,}" or _is_alpha(text[pos]):
                raise LabelParseError(
                    text, pos, f"unexpected {_describe_token(text, pos)} in label set, expected string"
                )
            raise LabelParseError(text, pos, f"unexpected character inside braces: {text[pos]!r}")
        value, pos = _lex_string(text, pos)
        pairs.append((name, value))
        pos = _skip_space(text, pos)
        if pos >= len(text):
            raise LabelParseError(text, pos, "unexpected end of input inside braces")
        if text[pos] == ",":
            pos += 1
            continue
        if text[pos] == "}":
            pos += 1
            break
        if text[pos] in "=!\"'`{" or _is_alpha(text[pos]):
            raise LabelParseError(
                text, pos, f'unexpected {_describe_token(text, pos)} in label set, expected "," or "}}"'
            )
        raise LabelParseError(text, pos, f"unexpected character inside braces: {text[pos]!r}")
    pos = _skip_space(text, pos)
    if pos < len(text):
        raise LabelParseError(text, pos, f"unexpected {_describe_token(text, pos)}")
    return pairs


def render_labels(pairs: Iterable[tuple[str, str]]) -> str:
    """Prometheus ``labels.Labels.String()``: ``{a="1", b="2"}`` in the given order."""
    return "{" + ", ".join(f"{name}={go_quote(value)}" for name, value in pairs) + "}"


def _normalise_labels(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop empty values and sort by name (stable, so duplicates stay for the duplicate check)."""
    return sorted(((n, v) for n, v in pairs if v != ""), key=lambda p: p[0].encode("utf-8", "surrogateescape"))


def _labels_key(labels: str | Mapping[str, str]) -> str:
    if isinstance(labels, str):
        return render_labels(_normalise_labels(parse_labels(labels)))
    return render_labels(_normalise_labels(list(labels.items())))


# --------------------------------------------------------------------------------------------------
# Wire decoding of a PushRequest (lenient like Loki's hand-written unmarshaller: no UTF-8 checks).
# --------------------------------------------------------------------------------------------------


class _DecodeError(Exception):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if shift >= 64:
            raise _DecodeError("proto: integer overflow")
        if pos >= len(buf):
            raise _DecodeError("unexpected EOF")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, message: str) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of a protobuf message; unknown fields included."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number <= 0:
            raise _DecodeError(f"proto: {message}: illegal tag {number} (wire type {wire})")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _DecodeError("unexpected EOF")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if length > _INT64_MAX:
                raise _DecodeError("proto: negative length found during unmarshaling")
            if pos + length > len(buf):
                raise _DecodeError("unexpected EOF")
            yield number, wire, bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _DecodeError("unexpected EOF")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire == 4:
            raise _DecodeError(f"proto: {message}: wiretype end group for non-group")
        else:
            raise _DecodeError(f"proto: illegal wireType {wire}")


def _expect(wire: int, expected: int, field_name: str) -> None:
    if wire != expected:
        raise _DecodeError(f"proto: wrong wireType = {wire} for field {field_name}")


@dataclass(frozen=True)
class PushedEntry:
    """One entry as it arrived (before any validation). ``seconds``/``nanos`` are the timestamp."""

    seconds: int
    nanos: int
    line: str
    structured_metadata: tuple[tuple[str, str], ...] = ()

    @property
    def ts(self) -> int:
        """Nanoseconds since the epoch, as Go's ``UnixNano()`` computes it (wraps for year 1)."""
        return go_unix_nano(self.seconds, self.nanos)


@dataclass(frozen=True)
class PushedStream:
    """One stream of a push request as it arrived: the raw label string and its entries."""

    labels: str
    entries: tuple[PushedEntry, ...]


def _decode_label_pair(buf: bytes) -> tuple[str, str]:
    name = value = b""
    for number, wire, val in _fields(buf, "LabelPairAdapter"):
        if number == 1:
            _expect(wire, 2, "Name")
            assert isinstance(val, bytes)
            name = val
        elif number == 2:
            _expect(wire, 2, "Value")
            assert isinstance(val, bytes)
            value = val
    return _to_text(name), _to_text(value)


def _decode_timestamp(buf: bytes) -> tuple[int, int]:
    seconds = nanos = 0
    for number, wire, val in _fields(buf, "Timestamp"):
        if number == 1:
            _expect(wire, 0, "Seconds")
            assert isinstance(val, int)
            seconds = _wrap_int64(val)
        elif number == 2:
            _expect(wire, 0, "Nanos")
            assert isinstance(val, int)
            nanos = ((val & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
    if seconds < _MIN_TS_SECONDS:
        raise _DecodeError(f"timestamp: seconds:{seconds} nanos:{nanos} before 0001-01-01")
    if seconds >= _MAX_TS_SECONDS:
        raise _DecodeError(f"timestamp: seconds:{seconds} nanos:{nanos} after 10000-01-01")
    if not 0 <= nanos < _NS:
        raise _DecodeError(f"timestamp: seconds:{seconds} nanos:{nanos}: nanos not in range [0, 1e9)")
    return seconds, nanos


def _decode_entry(buf: bytes) -> PushedEntry:
    # An absent timestamp is Go's zero time, 0001-01-01T00:00:00Z.
    seconds, nanos = _MIN_TS_SECONDS, 0
    line = b""
    metadata: list[tuple[str, str]] = []
    for number, wire, val in _fields(buf, "EntryAdapter"):
        if number == 1:
            _expect(wire, 2, "Timestamp")
            assert isinstance(val, bytes)
            seconds, nanos = _decode_timestamp(val)
        elif number == 2:
            _expect(wire, 2, "Line")
            assert isinstance(val, bytes)
            line = val
        elif number == 3:
            _expect(wire, 2, "StructuredMetadata")
            assert isinstance(val, bytes)
            metadata.append(_decode_label_pair(val))
        elif number == 4:
            _expect(wire, 2, "Parsed")
    return PushedEntry(seconds, nanos, _to_text(line), tuple(metadata))


def _decode_push_request(buf: bytes) -> list[PushedStream]:
    streams: list[PushedStream] = []
    for number, wire, val in _fields(buf, "PushRequest"):
        if number == 1:
            _expect(wire, 2, "Streams")
            assert isinstance(val, bytes)
            labels = b""
            entries: list[PushedEntry] = []
            for s_number, s_wire, s_val in _fields(val, "StreamAdapter"):
                if s_number == 1:
                    _expect(s_wire, 2, "Labels")
                    assert isinstance(s_val, bytes)
                    labels = s_val
                elif s_number == 2:
                    _expect(s_wire, 2, "Entries")
                    assert isinstance(s_val, bytes)
                    entries.append(_decode_entry(s_val))
                elif s_number == 3:
                    _expect(s_wire, 0, "Hash")
            streams.append(PushedStream(_to_text(labels), tuple(entries)))
        elif number == 2:
            _expect(wire, 2, "Format")
    return streams


# --------------------------------------------------------------------------------------------------
# JSON push bodies.
# --------------------------------------------------------------------------------------------------

_JSON_PREFIX = "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: "
_MALFORMED_STRING = "Value is string, but can't find closing '\"' symbol"
_MALFORMED_OBJECT = "Value looks like object, but can't find closing '}' symbol"
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _json_scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _go_parse_int64(text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f'strconv.ParseInt: parsing "{text}": value out of range')
    return value


def _decode_json_v1(body: bytes) -> list[PushedStream]:
    try:
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeError) as exc:
        raise _DecodeError(f"loghttp.PushRequest: ReadObjectCB: {exc}") from exc
    if not isinstance(doc, dict):
        raise _DecodeError("loghttp.PushRequest: ReadObjectCB: expect { or n, but found " + body[:1].decode("latin-1"))
    raw_streams = doc.get("streams")
    if raw_streams is None:
        return []
    if not isinstance(raw_streams, list):
        raise _DecodeError("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: decode slice: expect [ or n")
    streams: list[PushedStream] = []
    for raw in raw_streams:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise _DecodeError(_JSON_PREFIX + _MALFORMED_OBJECT)
        label_obj = raw.get("stream", {})
        if label_obj is None:
            label_obj = {}
        if not isinstance(label_obj, dict):
            raise _DecodeError(_JSON_PREFIX + _MALFORMED_OBJECT)
        pairs = sorted((str(k), _json_scalar_text(v)) for k, v in label_obj.items())
        labels = "{" + ", ".join(f"{k}={go_quote(v)}" for k, v in pairs) + "}"
        entries: list[PushedEntry] = []
        values = raw.get("values")
        if values is not None and not isinstance(values, list):
            raise _DecodeError(_JSON_PREFIX + "Value is array, but can't find closing ']' symbol")
        for item in values or []:
            if item is None:
                continue
            if not isinstance(item, list):
                raise _DecodeError(_JSON_PREFIX + "Value is array, but can't find closing ']' symbol")
            ts_text = item[0] if item else ""
            if not isinstance(ts_text, str):
                raise _DecodeError(_JSON_PREFIX + _MALFORMED_STRING)
            try:
                ns = _go_parse_int64(ts_text)
            except ValueError as exc:
                raise _DecodeError(_JSON_PREFIX + str(exc)) from exc
            line = item[1] if len(item) > 1 else ""
            if not isinstance(line, str):
                raise _DecodeError(_JSON_PREFIX + _MALFORMED_STRING)
            metadata: list[tuple[str, str]] = []
            if len(item) > 2 and item[2] is not None:
                if not isinstance(item[2], dict):
                    raise _DecodeError(_JSON_PREFIX + _MALFORMED_OBJECT)
                for name, value in item[2].items():
                    if not isinstance(value, str):
                        raise _DecodeError(_JSON_PREFIX + _MALFORMED_STRING)
                    metadata.append((name, value))
            seconds, nanos = _split_ns(ns)
            entries.append(PushedEntry(seconds, nanos, line, tuple(metadata)))
        streams.append(PushedStream(labels, tuple(entries)))
    return streams


_RFC3339_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


def _parse_rfc3339_ns(text: str) -> tuple[int, int]:
    match = _RFC3339_RE.fullmatch(text)
    if not match:
        raise ValueError(f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse "{text}" as "2006"')
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    frac = int((match.group(7) or "0").ljust(9, "0"))
    zone = match.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    seconds = int((moment - _EPOCH).total_seconds()) - offset
    return seconds, frac


def _decode_json_legacy(body: bytes) -> list[PushedStream]:
    try:
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeError) as exc:
        raise _DecodeError(f"logproto.PushRequest: ReadObjectCB: {exc}") from exc
    if not isinstance(doc, dict):
        raise _DecodeError("logproto.PushRequest: ReadObjectCB: expect { or n")
    streams: list[PushedStream] = []
    for raw in doc.get("streams") or []:
        if not isinstance(raw, dict):
            raise _DecodeError("logproto.PushRequest.Streams: ReadObjectCB: expect { or n")
        labels = raw.get("labels", "")
        if not isinstance(labels, str):
            raise _DecodeError('logproto.PushRequest.Streams: Labels: ReadString: expects " or n')
        entries: list[PushedEntry] = []
        for item in raw.get("entries") or []:
            if not isinstance(item, dict):
                raise _DecodeError("logproto.PushRequest.Streams: Entries: ReadObjectCB: expect { or n")
            ts_text = item.get("ts", item.get("timestamp", "0001-01-01T00:00:00Z"))
            line = item.get("line", "")
            if not isinstance(ts_text, str) or not isinstance(line, str):
                raise _DecodeError('logproto.PushRequest.Streams: Entries: ReadString: expects " or n')
            try:
                seconds, nanos = _parse_rfc3339_ns(ts_text)
            except ValueError as exc:
                raise _DecodeError(str(exc)) from exc
            metadata = tuple(
                (str(p.get("name", "")), str(p.get("value", "")))
                for p in item.get("structuredMetadata") or []
                if isinstance(p, dict)
            )
            entries.append(PushedEntry(seconds, nanos, line, metadata))
        streams.append(PushedStream(labels, tuple(entries)))
    return streams


# --------------------------------------------------------------------------------------------------
# Structured metadata helpers: size, name normalisation (3.6+ LabelNamer), log level discovery.
# --------------------------------------------------------------------------------------------------


def _structured_metadata_size(metadata: Iterable[tuple[str, str]]) -> int:
    return sum(_utf8_len(n) + _utf8_len(v) for n, v in metadata if n != LEVEL_LABEL)


_NON_ALNUM_RUN = re.compile(r"[^A-Za-z0-9]+")


class _MetadataNameError(Exception):
    pass


def normalise_metadata_name(name: str) -> str:
    """Loki 3.6+ structured metadata name normalisation (otlptranslator ``LabelNamer{}``)."""
    if name == "" or set(name) == {"_"}:
        raise _MetadataNameError(f"normalization for label name {name!r} resulted in empty name")
    if len(name) > 4 and name.startswith("__") and name.endswith("__"):
        inner = _NON_ALNUM_RUN.sub("_", name[2:-2])
        return f"__{inner}__"
    out = _NON_ALNUM_RUN.sub("_", name)
    if out[0].isdigit():
        out = "key_" + out
    return out


_LEVEL_ALIASES = {
    "trace": "trace",
    "trc": "trace",
    "debug": "debug",
    "dbg": "debug",
    "info": "info",
    "inf": "info",
    "information": "info",
    "warn": "warn",
    "wrn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "critical": "critical",
    "fatal": "fatal",
}
_LEVEL_WORDS = (
    ("trace", "trace"),
    ("debug", "debug"),
    ("fatal", "fatal"),
    ("critical", "critical"),
    ("error", "error"),
    ("err", "error"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("info", "info"),
)


def _word_boundary(text: str, pos: int) -> bool:
    if pos < 0 or pos >= len(text):
        return True
    ch = text[pos]
    return not (ch.isalpha() or ch.isdigit() or ch == "_")


def _level_from_words(line: str) -> str:
    lower = line.lower()
    for word, level in _LEVEL_WORDS:
        pos = lower.find(word)
        if pos >= 0 and _word_boundary(lower, pos - 1) and _word_boundary(lower, pos + len(word)):
            return level
    return "unknown"


def _logfmt_pairs(line: str) -> Iterator[tuple[str, str]]:
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] <= " ":
            i += 1
        start = i
        while i < n and line[i] > " " and line[i] not in '="':
            i += 1
        key = line[start:i]
        value = ""
        if i < n and line[i] == "=":
            i += 1
            if i < n and line[i] == '"':
                j = i + 1
                buf: list[str] = []
                while j < n and line[j] != '"':
                    if line[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(line[j])
                    j += 1
                value, i = "".join(buf), j + 1
            else:
                start = i
                while i < n and line[i] > " ":
                    i += 1
                value = line[start:i]
        elif i < n and line[i] == '"':
            i += 1
        if key:
            yield key, value


def _json_level(obj: Mapping[str, Any], depth: int) -> str | None:
    if depth >= LOG_LEVEL_FROM_JSON_MAX_DEPTH:
        return None
    for key, value in obj.items():
        if isinstance(value, str) and key in LEVEL_FIELDS:
            return value
        if isinstance(value, dict):
            found = _json_level(value, depth + 1)
            if found is not None:
                return found
    return None


def _level_from_line(line: str) -> str:
    stripped = line.strip()
    value: str | None = None
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            value = _json_level(doc, 0)
    elif "=" in line:
        best = len(LEVEL_FIELDS)
        for key, val in _logfmt_pairs(line):
            for rank, hint in enumerate(LEVEL_FIELDS):
                if rank < best and key.lower() == hint.lower():
                    value, best = val, rank
    if value is not None and value.lower() in _LEVEL_ALIASES:
        return _LEVEL_ALIASES[value.lower()]
    return _level_from_words(line)


def _severity_number_level(text: str) -> str:
    try:
        number = int(text)
    except ValueError:
        return "info"
    for upper, level in (
        (0, "unknown"),
        (4, "trace"),
        (8, "debug"),
        (12, "info"),
        (16, "warn"),
        (20, "error"),
    ):
        if number <= upper:
            return level
    return "fatal" if number <= 24 else "unknown"


def _discover_level(labels: Mapping[str, str], metadata: list[tuple[str, str]], line: str) -> str | None:
    """The ``detected_level`` value Loki 3.x appends, or None when the entry already has one."""
    for i, (name, value) in enumerate(metadata):
        if name == LEVEL_LABEL:
            metadata[i] = (name, _LEVEL_ALIASES.get(value.lower(), value))
            return None
    for source in (labels, dict(metadata)):
        for hint in LEVEL_FIELDS:
            if hint in source:
                value = source[hint]
                return _LEVEL_ALIASES.get(value.lower(), value)
    severity = dict(metadata).get("severity_number", "")
    if severity:
        return _severity_number_level(severity)
    return _level_from_line(line)


# --------------------------------------------------------------------------------------------------
# Token bucket with golang.org/x/time/rate semantics (AllowN never waits; n > burst never passes).
# --------------------------------------------------------------------------------------------------


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def allow(self, n: float, rate: float, burst: float) -> bool:
        now = time.monotonic()
        if rate != self.rate or burst != self.burst:
            self.rate, self.burst = rate, burst
            self.tokens = min(self.tokens, burst)
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


# --------------------------------------------------------------------------------------------------
# Storage and records.
# --------------------------------------------------------------------------------------------------


@dataclass
class StoredEntry:
    """An entry as stored: timestamp (ns), line and structured metadata (after Loki's processing)."""

    ts: int
    line: str
    structured_metadata: dict[str, str]
    seq: int = 0


@dataclass
class StoredStream:
    """A stored stream: its label string (sorted, Loki's rendering), labels and entries."""

    tenant: str
    key: str
    labels: dict[str, str]
    entries: list[StoredEntry] = field(default_factory=list)
    highest_ts: int | None = None
    last_line: tuple[int, str, tuple[tuple[str, str], ...]] | None = None
    limiter: _TokenBucket | None = field(default=None, repr=False, compare=False)
    by_ts: dict[int, list[StoredEntry]] = field(default_factory=dict, repr=False, compare=False)

    def append(self, entry: StoredEntry) -> None:
        self.entries.append(entry)
        self.by_ts.setdefault(entry.ts, []).append(entry)

    def has(self, ts: int, line: str) -> bool:
        return any(e.line == line for e in self.by_ts.get(ts, ()))

    def remove(self, doomed: set[int]) -> None:
        self.entries = [e for e in self.entries if id(e) not in doomed]
        self.by_ts = {}
        for e in self.entries:
            self.by_ts.setdefault(e.ts, []).append(e)


@dataclass(frozen=True)
class LokiEntry:
    """A flat view of one stored entry, as returned by :meth:`LokiReceiver.entries`."""

    tenant: str
    stream: str
    labels: dict[str, str]
    ts: int
    line: str
    structured_metadata: dict[str, str]


@dataclass
class PushRecord:
    """One HTTP request received on a push path, with what the receiver answered."""

    index: int
    received_at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    tenant: str | None = None
    status: int = 0
    response_body: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    decoded: list[PushedStream] | None = None
    forced: bool = False
    body_truncated: bool = False


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    body: str | None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _text_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Response:
    """Go ``http.Error``: text/plain, nosniff, message plus a newline."""
    out = {"X-Content-Type-Options": "nosniff"}
    out.update(headers or {})
    return _Response(status, (message + "\n").encode("utf-8", "surrogateescape"), headers=out)


# --------------------------------------------------------------------------------------------------
# LogQL subset for query_range.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        hit = self.regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class _LineFilter:
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, line: str) -> bool:
        if self.op == "|=":
            return self.value in line
        if self.op == "!=":
            return self.value not in line
        assert self.regex is not None
        hit = self.regex.search(line) is not None
        return hit if self.op == "|~" else not hit


class _QueryError(Exception):
    pass


def _logql_error(text: str, pos: int, message: str) -> _QueryError:
    col = _utf8_len(text[:pos]) + 1
    return _QueryError(f"parse error at line 1, col {col}: {message}")


def _compile_regex(text: str, pos: int, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise _QueryError(f"parse error : error parsing regexp: {exc}: `{pattern}`") from exc


def _parse_selector(text: str) -> tuple[list[_Matcher], list[_LineFilter]]:
    pos = _skip_space(text, 0)
    if pos >= len(text) or text[pos] != "{":
        raise _logql_error(text, pos, f"syntax error: unexpected {_describe_token(text, pos)}")
    pos += 1
    matchers: list[_Matcher] = []
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "}" and matchers:
            pos += 1
            break
        if pos >= len(text) or not _is_alpha(text[pos]):
            unexpected = _describe_token(text, pos)
            raise _logql_error(text, pos, f"syntax error: unexpected {unexpected}, expecting IDENTIFIER")
        end = _read_identifier(text, pos)
        name = text[pos:end]
        pos = _skip_space(text, end)
        op = next((o for o in ("=~", "!~", "!=", "=") if text.startswith(o, pos)), None)
        if op is None:
            raise _logql_error(text, pos, f"syntax error: unexpected {_describe_token(text, pos)}")
        pos = _skip_space(text, pos + len(op))
        if pos >= len(text) or text[pos] not in '"`':
            raise _logql_error(text, pos, f"syntax error: unexpected {_describe_token(text, pos)}, expecting STRING")
        try:
            value, pos = _lex_string(text, pos)
        except LabelParseError as exc:
            raise _logql_error(text, exc.pos, exc.message) from exc
        regex = _compile_regex(text, pos, value) if op in ("=~", "!~") else None
        matchers.append(_Matcher(name, op, value, regex))
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "}":
            pos += 1
            break
        raise _logql_error(text, pos, f"syntax error: unexpected {_describe_token(text, pos)}, expecting , or }}")
    filters: list[_LineFilter] = []
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            break
        op = next((o for o in ("|=", "!=", "|~", "!~") if text.startswith(o, pos)), None)
        if op is None:
            raise _logql_error(
                text,
                pos,
                "syntax not supported by the Loki test receiver (only a stream selector and line filters "
                f"|=, !=, |~, !~ are): unexpected {_describe_token(text, pos)}",
            )
        pos = _skip_space(text, pos + 2)
        if pos >= len(text) or text[pos] not in '"`':
            raise _logql_error(text, pos, f"syntax error: unexpected {_describe_token(text, pos)}, expecting STRING")
        try:
            value, pos = _lex_string(text, pos)
        except LabelParseError as exc:
            raise _logql_error(text, exc.pos, exc.message) from exc
        regex = _compile_regex(text, pos, value) if op in ("|~", "!~") else None
        filters.append(_LineFilter(op, value, regex))
    if all(m.matches({}) for m in matchers):
        raise _QueryError(
            "parse error : queries require at least one regexp or equality matcher that does not have an "
            'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
            'but app=~".+" will'
        )
    return matchers, filters


_DURATION_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _parse_prom_duration(text: str) -> timedelta:
    if not text or _DURATION_RE.sub("", text) != "":
        raise ValueError(f'not a valid duration string: "{text}"')
    return timedelta(seconds=sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text)))


def _parse_time_param(name: str, value: str | None, default_ns: int) -> int:
    """Loki's ``loghttp.parseTimestamp``: ns (or s if <= 10 digits), float seconds, or RFC3339Nano."""
    if not value:
        return default_ns
    if "." not in value and _INT_RE.fullmatch(value):
        number = int(value)
        return number * _NS if len(value) <= 10 else number
    try:
        as_float = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(as_float):
            frac, whole = math.modf(as_float)
            return int(whole) * _NS + int(frac * _NS)
    try:
        seconds, nanos = _parse_rfc3339_ns(value)
    except ValueError as exc:
        raise _QueryError(f"invalid {name} parameter: {exc}") from exc
    return seconds * _NS + nanos


# --------------------------------------------------------------------------------------------------
# The HTTP server.
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: LokiReceiver) -> None:
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self.reset_sockets: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.receiver._down_mode == "reset":
            self.mark_reset(request)
            return False
        return True

    def mark_reset(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        with self.conn_lock:
            self.reset_sockets.add(sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
            reset = request in self.reset_sockets
            self.reset_sockets.discard(request)
        if reset:
            # Close without the FIN of shutdown(SHUT_WR): with SO_LINGER 0 the peer gets a RST.
            self.close_request(request)
            return
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.conn_lock:
            connections = list(self.connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _read_body(self, limit: int) -> tuple[bytes, bool]:
        """Read the request body (Content-Length or chunked). Stops past ``limit`` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if total + size > limit:
                    self.close_connection = True
                    return b"".join(chunks), True
                chunks.append(self.rfile.read(size))
                total += size
                self.rfile.readline(65537)
            return b"".join(chunks), False
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True
            return b"", True
        return (self.rfile.read(length) if length > 0 else b""), False

    def _dispatch(self, method: str) -> None:
        receiver = self.server.receiver
        if receiver._down_mode == "reset":
            self.server.mark_reset(self.connection)
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        if path in PUSH_PATHS:
            if method != "POST":
                self._send(_Response(405, b""))
                return
            body, too_large = self._read_body(receiver.max_recv_msg_size)
            self._send(receiver._handle_push(path, dict(self.headers.items()), body, too_large))
            return
        if path == QUERY_RANGE_PATH and method in ("GET", "POST"):
            body, _ = self._read_body(receiver.max_recv_msg_size)
            self._send(receiver._handle_query_range(self.path, dict(self.headers.items()), body))
            return
        if path == "/ready" and method == "GET":
            self._send(_Response(200, b"ready\n"))
            return
        if path == "/loki/api/v1/status/buildinfo" and method == "GET":
            info = {"version": "3.7.6", "revision": "loki-test-receiver", "branch": "", "goVersion": ""}
            self._send(_Response(200, json.dumps(info).encode(), "application/json"))
            return
        self._read_body(receiver.max_recv_msg_size)
        self._send(_text_error(404, "404 page not found"))

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        if response.status not in (204, 304):
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(response.body)


# --------------------------------------------------------------------------------------------------
# The receiver.
# --------------------------------------------------------------------------------------------------

_LIMIT_DEFAULTS: dict[str, Any] = {
    "auth_enabled": True,
    "max_recv_msg_size": 100 * MiB,
    "max_line_size": 256 * KiB,
    "max_line_size_truncate": False,
    "max_line_size_truncate_identifier": "",
    "max_label_names_per_series": 15,
    "max_label_name_length": 1024,
    "max_label_value_length": 2048,
    "reject_old_samples": True,
    "reject_old_samples_max_age": timedelta(days=7),
    "creation_grace_period": timedelta(minutes=10),
    "allow_structured_metadata": True,
    "max_structured_metadata_size": 64 * KiB,
    "max_structured_metadata_entries_count": 128,
    "ingestion_rate_mb": 4.0,
    "ingestion_burst_size_mb": 6.0,
    "per_stream_rate_limit": 3 * MiB,
    "per_stream_rate_limit_burst": 15 * MiB,
    "max_global_streams_per_user": 5000,
    "unordered_writes": True,
    "max_chunk_age": timedelta(hours=2),
    "increment_duplicate_timestamp": False,
    "discover_service_name": DEFAULT_DISCOVER_SERVICE_NAME,
    "discover_log_levels": True,
    "normalize_structured_metadata_names": True,
    "max_returned_stream_errors": 10,
    "max_entries_limit_per_query": 5000,
    "max_query_length": timedelta(hours=721),
    "query_default_since": timedelta(hours=1),
    "dedupe": "stream",
    "force_rate_limit": False,
}


class LokiReceiver:
    """A threaded HTTP stand-in for Loki on 127.0.0.1 (port 0 = pick a free port).

    Keyword arguments override the limits below (each named after Loki's setting, default = Loki's).
    """

    # --- limits (Loki 3.7.6 defaults) ---
    auth_enabled: bool
    """``auth_enabled``: require ``X-Scope-OrgID`` (401 ``no org id``); when off the tenant is ``fake``."""
    max_recv_msg_size: int
    """``distributor.max_recv_msg_size``: compressed body limit in bytes (413 beyond)."""
    max_line_size: int
    max_line_size_truncate: bool
    max_line_size_truncate_identifier: str
    max_label_names_per_series: int
    max_label_name_length: int
    max_label_value_length: int
    reject_old_samples: bool
    reject_old_samples_max_age: timedelta
    creation_grace_period: timedelta
    allow_structured_metadata: bool
    max_structured_metadata_size: int
    max_structured_metadata_entries_count: int
    ingestion_rate_mb: float
    ingestion_burst_size_mb: float
    per_stream_rate_limit: int
    per_stream_rate_limit_burst: int
    max_global_streams_per_user: int
    unordered_writes: bool
    max_chunk_age: timedelta
    """``ingester.max_chunk_age``: the out-of-order window is half of it (1 h)."""
    increment_duplicate_timestamp: bool
    discover_service_name: tuple[str, ...]
    discover_log_levels: bool
    normalize_structured_metadata_names: bool
    """Loki 3.4+ rewrites structured metadata names (3.6+ rules); no Loki setting turns it off."""
    max_returned_stream_errors: int
    """``ingester.max_returned_stream_errors``: entries listed in an out-of-order error body."""
    max_entries_limit_per_query: int
    max_query_length: timedelta
    query_default_since: timedelta
    dedupe: Literal["stream", "previous"]
    """``stream`` (default): an entry with the same timestamp and line as one already stored in the
    stream is dropped silently (Loki's head-block and query-time de-duplication). ``previous``: only
    an exact repeat (timestamp, line, metadata) of the stream's last accepted entry is dropped, the
    narrower rule the reference states."""
    force_rate_limit: bool
    """Test knob: when true every push that reaches the rate limiter gets Loki's 429."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **limits: Any) -> None:
        unknown = set(limits) - set(_LIMIT_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Loki limit(s): {', '.join(sorted(unknown))}")
        for name, default in _LIMIT_DEFAULTS.items():
            setattr(self, name, limits.get(name, default))
        self.host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._down_mode: Literal["up", "refuse", "reset"] = "up"
        self._failures: list[_Failure] = []
        self._pushes: list[PushRecord] = []
        self._store: dict[str, dict[str, StoredStream]] = {}
        self._tenant_limiters: dict[str, _TokenBucket] = {}
        self._seq = 0

    # ---- lifecycle ----

    def start(self) -> LokiReceiver:
        """Bind and serve in a background thread. Returns self."""
        with self._lock:
            if self._server is not None:
                return self
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loki-receiver", daemon=True
            )
            self._thread.start()
            if self._down_mode == "refuse":
                self._down_mode = "up"
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and every open connection."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LokiReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (push to ``url + "/loki/api/v1/push"``)."""
        return f"http://{self.host}:{self._port}"

    @property
    def push_url(self) -> str:
        return self.url + PUSH_PATHS[0]

    # ---- test knobs ----

    @property
    def down(self) -> bool:
        """True while the receiver refuses or resets connections. Setting True = ``set_down("refuse")``."""
        return self._down_mode != "up"

    @down.setter
    def down(self, value: bool) -> None:
        self.set_down("refuse" if value else "up")

    def set_down(self, mode: Literal["up", "refuse", "reset"]) -> None:
        """``refuse``: close the listening socket and open connections (connection refused), keeping
        the port for a later ``up``. ``reset``: keep listening but reset every connection (RST)
        without answering. ``up``: serve again on the same port."""
        if mode not in ("up", "refuse", "reset"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "refuse":
            self.stop()
            self._down_mode = "refuse"
            return
        if mode == "reset":
            self._down_mode = "reset"
            if self._server is None:
                self.start()
                self._down_mode = "reset"
            else:
                self._server.drop_connections()
            return
        self._down_mode = "up"
        if self._server is None:
            self.start()

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: int | float | str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next ``count`` push requests with ``status`` without storing anything.

        Loki itself never sends ``Retry-After``; pass ``retry_after`` to add the header anyway.
        The default body is Loki's text for that status (the rate-limit message for 429).
        """
        with self._lock:
            for _ in range(count):
                retry = None if retry_after is None else str(retry_after)
                self._failures.append(_Failure(status, retry, body))

    @property
    def pushes(self) -> list[PushRecord]:
        """Every request received on a push path, in arrival order (raw body and decoded streams)."""
        with self._lock:
            return list(self._pushes)

    def clear(self) -> None:
        """Forget stored streams, recorded pushes, pending failures and rate-limiter state."""
        with self._lock:
            self._store.clear()
            self._pushes.clear()
            self._failures.clear()
            self._tenant_limiters.clear()

    # ---- store views ----

    def default_tenant(self) -> str:
        with self._lock:
            if not self.auth_enabled:
                return "fake"
            tenants = [t for t, s in self._store.items() if s]
            if len(tenants) == 1:
                return tenants[0]
            if not tenants:
                return "fake"
            raise ValueError(f"several tenants hold data ({', '.join(sorted(tenants))}); pass tenant=")

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(t for t, s in self._store.items() if s)

    def streams(self, tenant: str | None = None) -> dict[str, StoredStream]:
        """Copies of the stored streams of a tenant, keyed by label string; entries sorted by time."""
        with self._lock:
            tenant = tenant if tenant is not None else self.default_tenant()
            out: dict[str, StoredStream] = {}
            for key, stream in sorted(self._store.get(tenant, {}).items()):
                entries = [
                    StoredEntry(e.ts, e.line, dict(e.structured_metadata), e.seq)
                    for e in sorted(stream.entries, key=lambda e: (e.ts, e.seq))
                ]
                out[key] = StoredStream(tenant, key, dict(stream.labels), entries, stream.highest_ts, stream.last_line)
            return out

    def entries(self, tenant: str | None = None, selector: str | None = None) -> list[LokiEntry]:
        """Every stored entry of a tenant (optionally matching a ``{...}`` selector), oldest first."""
        matchers: list[_Matcher] = []
        if selector is not None:
            try:
                matchers, _ = _parse_selector(selector)
            except _QueryError as exc:
                raise ValueError(str(exc)) from None
        with self._lock:
            tenant = tenant if tenant is not None else self.default_tenant()
            rows: list[tuple[int, int, LokiEntry]] = []
            for key, stream in self._store.get(tenant, {}).items():
                if not all(m.matches(stream.labels) for m in matchers):
                    continue
                for e in stream.entries:
                    view = LokiEntry(tenant, key, dict(stream.labels), e.ts, e.line, dict(e.structured_metadata))
                    rows.append((e.ts, e.seq, view))
            return [row[2] for row in sorted(rows, key=lambda r: (r[0], r[1]))]

    # ---- tampering helpers (no validation; they edit storage the way an attacker with DB access would) ----

    def _stream_for(self, labels: str | Mapping[str, str], tenant: str | None, create: bool = False) -> StoredStream:
        key = _labels_key(labels)
        tenant = tenant if tenant is not None else self.default_tenant()
        streams = self._store.setdefault(tenant, {})
        if key not in streams:
            if not create:
                known = ", ".join(sorted(streams)) or "none"
                raise KeyError(f"no stream {key} for tenant {tenant!r} (streams: {known})")
            pairs = _normalise_labels(parse_labels(key))
            streams[key] = StoredStream(tenant, key, dict(pairs))
        return streams[key]

    @staticmethod
    def _pick(stream: StoredStream, ts: int, line: str | None) -> list[StoredEntry]:
        return [e for e in stream.by_ts.get(ts, ()) if line is None or e.line == line]

    def delete_entry(
        self, labels: str | Mapping[str, str], ts: int, line: str | None = None, tenant: str | None = None
    ) -> int:
        """Remove the entries at ``ts`` (and ``line`` if given) from a stream. Returns how many."""
        with self._lock:
            stream = self._stream_for(labels, tenant)
            doomed = {id(e) for e in self._pick(stream, ts, line)}
            stream.remove(doomed)
            return len(doomed)

    def replace_line(
        self,
        labels: str | Mapping[str, str],
        ts: int,
        new_line: str,
        old_line: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Rewrite the line of the entries at ``ts`` (and ``old_line`` if given). Returns how many."""
        with self._lock:
            hits = self._pick(self._stream_for(labels, tenant), ts, old_line)
            for e in hits:
                e.line = new_line
            return len(hits)

    def set_metadata(
        self,
        labels: str | Mapping[str, str],
        ts: int,
        metadata: Mapping[str, str],
        line: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Replace the structured metadata of the entries at ``ts``. Returns how many."""
        with self._lock:
            hits = self._pick(self._stream_for(labels, tenant), ts, line)
            for e in hits:
                e.structured_metadata = dict(metadata)
            return len(hits)

    def add_entry(
        self,
        labels: str | Mapping[str, str],
        ts: int,
        line: str,
        metadata: Mapping[str, str] | None = None,
        tenant: str | None = None,
    ) -> None:
        """Insert an entry directly into storage (no validation, no de-duplication)."""
        with self._lock:
            stream = self._stream_for(labels, tenant, create=True)
            self._seq += 1
            stream.append(StoredEntry(ts, line, dict(metadata or {}), self._seq))

    # ---- request handling ----

    def _resolve_tenant(self, headers: Mapping[str, str]) -> str:
        if not self.auth_enabled:
            return "fake"
        org_id = next((v for k, v in headers.items() if k.lower() == "x-scope-orgid"), "")
        if not org_id:
            raise _HTTPError(401, "no org id")
        first, _, rest = org_id.partition("|")
        tenant = first.split(":", 1)[0]
        # http.server decodes header bytes as latin-1, so one character is one byte here.
        for ch in tenant:
            if not (ch.isascii() and (ch.isalnum() or ch in "!-_.*'()")):
                raise _HTTPError(400, f"tenant ID '{tenant}' contains unsupported character '{ch}'")
        if len(tenant) > 150:
            raise _HTTPError(400, "tenant ID is too long: max 150 characters")
        if tenant in (".", ".."):
            raise _HTTPError(400, "tenant ID is '.' or '..'")
        if rest:
            for other in rest.split("|"):
                if other.split(":", 1)[0] != tenant:
                    raise _HTTPError(400, "multiple org IDs present")
        return tenant

    def _rate_limit_message(self, tenant: str, lines: int, size: int) -> str:
        limit = int(self.ingestion_rate_mb * MiB)
        return (
            f"ingestion rate limit exceeded for user {tenant} (limit: {limit} bytes/sec) while attempting to "
            f"ingest '{lines}' lines totaling '{size}' bytes, reduce log volume or contact your Loki "
            "administrator to see if the limit can be increased"
        )

    def _handle_push(self, path: str, headers: dict[str, str], body: bytes, too_large: bool) -> _Response:
        with self._lock:
            record = PushRecord(
                index=len(self._pushes),
                received_at=time.time(),
                method="POST",
                path=path,
                headers=dict(headers),
                body=body,
                body_truncated=too_large,
            )
            self._pushes.append(record)
            try:
                response = self._process_push(record, path, headers, body, too_large)
            except _HTTPError as exc:
                response = _text_error(exc.status, exc.message, exc.headers)
            record.status = response.status
            record.response_body = response.body.decode("utf-8", "surrogateescape")
            record.response_headers = dict(response.headers)
            return response

    def _process_push(
        self, record: PushRecord, path: str, headers: dict[str, str], body: bytes, too_large: bool
    ) -> _Response:
        lower = {k.lower(): v for k, v in headers.items()}
        if self._failures:
            failure = self._failures.pop(0)
            record.forced = True
            extra = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            text = failure.body
            if text is None:
                tenant = lower.get("x-scope-orgid", "fake") if self.auth_enabled else "fake"
                text = (
                    self._rate_limit_message(tenant, 0, len(body))
                    if failure.status == 429
                    else f"injected failure (LokiReceiver.fail_next): HTTP {failure.status}"
                )
            return _text_error(failure.status, text, extra)

        tenant = self._resolve_tenant(headers)
        record.tenant = tenant
        if too_large:
            declared = lower.get("content-length", "?")
            raise _HTTPError(413, f"request body too large: {declared} bytes, limit: {self.max_recv_msg_size} bytes")

        # Step 1: Content-Encoding, matched exactly.
        encoding = lower.get("content-encoding", "")
        if encoding in ("", "snappy"):
            payload = body
        elif encoding == "gzip":
            try:
                payload = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise _HTTPError(400, f"gzip: invalid header ({exc})") from exc
        elif encoding == "deflate":
            try:
                payload = zlib.decompress(body, -15)
            except zlib.error as exc:
                raise _HTTPError(400, f"flate: corrupt input ({exc})") from exc
        else:
            raise _HTTPError(400, f"Content-Encoding {go_quote(encoding)} not supported")

        # Step 2: Content-Type.
        media_type = self._media_type(lower.get("content-type", ""))
        try:
            if media_type == "application/json":
                streams = _decode_json_v1(payload) if "/loki/api/v1" in path else _decode_json_legacy(payload)
            else:
                try:
                    raw = bytes(cramjam.snappy.decompress_raw(payload))
                except Exception as exc:  # cramjam.DecompressionError and friends
                    raise _DecodeError("snappy: corrupt input") from exc
                streams = _decode_push_request(raw)
        except _DecodeError as exc:
            raise _HTTPError(400, str(exc)) from exc
        record.decoded = streams

        # Step 3: label strings; one bad string refuses the whole request.
        parsed: list[tuple[PushedStream, list[tuple[str, str]], str]] = []
        for stream in streams:
            try:
                pairs = _normalise_labels(parse_labels(stream.labels))
            except LabelParseError as exc:
                raise _HTTPError(400, f"couldn't parse labels: {exc}") from exc
            if self.discover_service_name and not any(n == SERVICE_NAME_LABEL for n, _ in pairs):
                present = dict(pairs)
                service = next((present[n] for n in self.discover_service_name if present.get(n)), SERVICE_UNKNOWN)
                pairs = _normalise_labels([*pairs, (SERVICE_NAME_LABEL, service)])
            parsed.append((stream, pairs, render_labels(pairs)))

        if not streams:
            raise _HTTPError(422, "error at least one valid stream is required for ingestion")
        return self._distribute(tenant, parsed)

    @staticmethod
    def _media_type(header: str) -> str:
        """Go ``mime.ParseMediaType`` reduced to what Loki uses: the lower-cased type or an error."""
        value = header.split(";", 1)[0].strip().lower()
        if not value:
            raise _HTTPError(400, "mime: no media type")
        token = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
        major, slash, minor = value.partition("/")
        if not token.fullmatch(major):
            raise _HTTPError(400, "mime: expected token after slash" if not major else "mime: no media type")
        if not slash:
            raise _HTTPError(400, "mime: expected slash after first token")
        if not token.fullmatch(minor):
            raise _HTTPError(400, "mime: expected token after slash")
        for param in header.split(";")[1:]:
            if param.strip() and "=" not in param:
                raise _HTTPError(400, "mime: invalid media parameter")
        return value

    def _distribute(self, tenant: str, parsed: list[tuple[PushedStream, list[tuple[str, str]], str]]) -> _Response:
        now = time.time_ns()
        oldest_ns = now - int(self.reject_old_samples_max_age.total_seconds() * _NS)
        newest_ns = now + int(self.creation_grace_period.total_seconds() * _NS)
        errors: list[str] = []
        accepted: list[tuple[str, dict[str, str], list[tuple[int, int, int, str, list[tuple[str, str]]]]]] = []

        for stream, pairs, key in parsed:
            if not stream.entries:
                continue
            label_error = self._validate_labels(pairs, key)
            if label_error is not None:
                errors.append(label_error)
                continue
            labels = dict(pairs)
            kept: list[tuple[int, int, int, str, list[tuple[str, str]]]] = []
            prev_ts: int | None = None
            for entry in stream.entries:
                line = self._truncate(entry.line)
                entry_error = self._validate_entry(entry, line, key, oldest_ns, newest_ns)
                if entry_error is not None:
                    errors.append(entry_error)
                    continue
                metadata = list(entry.structured_metadata)
                if self.normalize_structured_metadata_names and metadata:
                    metadata = self._sanitize_metadata(metadata)
                if self.allow_structured_metadata and self.discover_log_levels:
                    level = _discover_level(labels, metadata, line)
                    if level is not None:
                        metadata.append((LEVEL_LABEL, level))
                ts, seconds, nanos = entry.ts, entry.seconds, entry.nanos
                if self.increment_duplicate_timestamp and prev_ts is not None and ts == prev_ts:
                    ts = prev_ts + 1
                    seconds, nanos = _split_ns(ts)
                prev_ts = ts
                kept.append((ts, seconds, nanos, line, metadata))
            if kept:
                accepted.append((key, labels, kept))

        validation_error = self._grouped(errors) if errors else None
        if not accepted:
            return _text_error(400, validation_error) if validation_error else _Response(204)

        total_lines = sum(len(kept) for _, _, kept in accepted)
        total_bytes = sum(
            _utf8_len(line) + _structured_metadata_size(md) for _, _, kept in accepted for *_, line, md in kept
        )
        limiter = self._tenant_limiters.setdefault(
            tenant, _TokenBucket(self.ingestion_rate_mb * MiB, self.ingestion_burst_size_mb * MiB)
        )
        allowed = limiter.allow(total_bytes, self.ingestion_rate_mb * MiB, self.ingestion_burst_size_mb * MiB)
        if self.force_rate_limit or not allowed:
            return _text_error(429, self._rate_limit_message(tenant, total_lines, total_bytes))

        ingester_error: _HTTPError | None = None
        for key, labels, kept in accepted:
            err = self._ingest_stream(tenant, key, labels, kept)
            if err is not None:
                ingester_error = err
        if ingester_error is not None:
            return _text_error(ingester_error.status, ingester_error.message)
        if validation_error is not None:
            return _text_error(400, validation_error)
        return _Response(204)

    def _validate_labels(self, pairs: list[tuple[str, str]], key: str) -> str | None:
        if not pairs:
            return "error at least one label pair is required per stream"
        count = len(pairs) - (1 if any(n == SERVICE_NAME_LABEL for n, _ in pairs) else 0)
        if count > self.max_label_names_per_series:
            return f"entry for stream '{key}' has {count} label names; limit {self.max_label_names_per_series}"
        last = ""
        for name, value in pairs:
            if _utf8_len(name) > self.max_label_name_length:
                return f"stream '{key}' has label name too long: '{name}'"
            if _utf8_len(value) > self.max_label_value_length:
                return f"stream '{key}' has label value too long: '{value}'"
            if name == last:
                return f"stream '{key}' has duplicate label name: '{name}'"
            last = name
        return None

    def _truncate(self, line: str) -> str:
        if not self.max_line_size_truncate or self.max_line_size <= 0:
            return line
        raw = line.encode("utf-8", "surrogateescape")
        if len(raw) <= self.max_line_size:
            return line
        ident = self.max_line_size_truncate_identifier.encode()
        keep = max(self.max_line_size - len(ident), 0)
        return (raw[:keep] + ident).decode("utf-8", "surrogateescape")

    def _validate_entry(self, entry: PushedEntry, line: str, key: str, oldest_ns: int, newest_ns: int) -> str | None:
        ts = entry.ts
        if self.reject_old_samples and ts < oldest_ns:
            return (
                f"entry for stream '{key}' has timestamp too old: {rfc3339(entry.seconds)}, "
                f"oldest acceptable timestamp is: {rfc3339(oldest_ns // _NS)}"
            )
        if ts > newest_ns:
            return f"entry for stream '{key}' has timestamp too new: {rfc3339(entry.seconds)}"
        size = _utf8_len(line)
        if self.max_line_size and size > self.max_line_size:
            return (
                f"max entry size '{self.max_line_size}' bytes exceeded for stream '{key}' while adding an "
                f"entry with length '{size}' bytes"
            )
        metadata = entry.structured_metadata
        if metadata:
            if not self.allow_structured_metadata:
                return (
                    f"stream '{key}' includes structured metadata, but this feature is disallowed. "
                    "Please see `limits_config.allow_structured_metadata` or contact your Loki "
                    "administrator to enable it"
                )
            md_size = _structured_metadata_size(metadata)
            if self.max_structured_metadata_size and md_size > self.max_structured_metadata_size:
                return (
                    f"stream '{key}' has structured metadata too large: '{md_size}' bytes, limit: "
                    f"'{self.max_structured_metadata_size}' bytes. Please see "
                    "`limits_config.max_structured_metadata_size` or contact your Loki administrator to "
                    "increase it"
                )
            count = len(metadata)
            if self.max_structured_metadata_entries_count and count > self.max_structured_metadata_entries_count:
                return (
                    f"stream '{key}' has too many structured metadata labels: '{count}', limit: "
                    f"'{self.max_structured_metadata_entries_count}'. Please see "
                    "`limits_config.max_structured_metadata_entries_count` or contact your Loki "
                    "administrator to increase it"
                )
        return None

    @staticmethod
    def _sanitize_metadata(metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: dict[str, str] = {}
        for name, value in metadata:
            try:
                clean = normalise_metadata_name(name)
            except _MetadataNameError as exc:
                raise _HTTPError(500, str(exc)) from exc
            out[clean] = value.encode("utf-8", "surrogateescape").decode("utf-8", "loki_receiver_space")
        return sorted(out.items())

    @staticmethod
    def _grouped(errors: list[str]) -> str:
        counts: dict[str, int] = {}
        for message in errors:
            counts[message] = counts.get(message, 0) + 1
        parts = []
        for message, n in counts.items():
            parts.append(f"{n} errors like: {message}" if len(counts) > 1 or n > 1 else message)
        return "; ".join(parts)

    def _ingest_stream(
        self,
        tenant: str,
        key: str,
        labels: dict[str, str],
        kept: list[tuple[int, int, int, str, list[tuple[str, str]]]],
    ) -> _HTTPError | None:
        streams = self._store.setdefault(tenant, {})
        stream = streams.get(key)
        if stream is None:
            limit = self.max_global_streams_per_user
            if limit and len(streams) >= limit:
                return _HTTPError(
                    429,
                    f"maximum active stream limit exceeded when trying to create stream {key}, "
                    "reduce the number "
                    "of active streams (reduce labels or reduce label values), or contact your Loki "
                    f"administrator to see if the limit can be increased, user: '{tenant}'",
                )
            stream = StoredStream(tenant, key, dict(labels))
            streams[key] = stream

        window = int(self.max_chunk_age.total_seconds() * _NS) // 2
        failed: list[tuple[int, int, str]] = []  # (seconds, nanos, reason)
        to_store: list[tuple[int, str, list[tuple[str, str]]]] = []
        last_line = stream.last_line
        highest = stream.highest_ts
        for ts, seconds, nanos, line, metadata in kept:
            md_key = tuple(metadata)
            if last_line is not None and last_line[0] == ts and last_line[1] == line:
                if self.dedupe == "stream" or last_line[2] == md_key:
                    continue
            if self.unordered_writes and highest is not None and ts < highest - window:
                cutoff = highest - window
                reason = (
                    f"entry too far behind, entry timestamp is: {rfc3339(seconds)}, "
                    f"oldest acceptable timestamp is: {rfc3339(cutoff // _NS)}"
                )
                failed.append((seconds, nanos, reason))
                continue
            if not self.unordered_writes and highest is not None and ts < highest:
                failed.append((seconds, nanos, "entry out of order"))
                continue
            last_line = (ts, line, md_key)
            highest = ts if highest is None else max(highest, ts)
            to_store.append((ts, line, metadata))

        valid_bytes = sum(_utf8_len(line) + _structured_metadata_size(md) for _, line, md in to_store)
        if stream.limiter is None:
            stream.limiter = _TokenBucket(self.per_stream_rate_limit, self.per_stream_rate_limit_burst)
        if to_store and not stream.limiter.allow(
            valid_bytes, self.per_stream_rate_limit, self.per_stream_rate_limit_burst
        ):
            rate_failed = []
            for ts, line, md in to_store:
                seconds, nanos = _split_ns(ts)
                reason = (
                    f"Per stream rate limit exceeded (limit: {_byte_size(self.per_stream_rate_limit)}/sec) "
                    "while "
                    f"attempting to ingest for stream '{key}' totaling "
                    f"{_byte_size(_utf8_len(line) + _structured_metadata_size(md))}, consider splitting a "
                    "stream via additional labels or contact your Loki administrator to see if the limit "
                    "can be increased"
                )
                rate_failed.append((seconds, nanos, reason))
            return self._stream_error(tenant, key, rate_failed, len(kept), 429)

        for ts, line, metadata in to_store:
            if self.dedupe == "stream" and stream.has(ts, line):
                continue  # Loki's head block keeps the first copy of an identical (ts, line)
            self._seq += 1
            stream.append(StoredEntry(ts, line, dict(metadata), self._seq))
        stream.last_line = last_line
        stream.highest_ts = highest
        if failed:
            return self._stream_error(tenant, key, failed, len(kept), 400)
        return None

    def _stream_error(
        self, tenant: str, key: str, failed: list[tuple[int, int, str]], total: int, status: int
    ) -> _HTTPError:
        shown = failed
        if self.max_returned_stream_errors > 0:
            shown = failed[: self.max_returned_stream_errors]
        text = "".join(
            f"entry with timestamp {_go_time_string(s, n)} ignored, reason: '{reason}',\n" for s, n, reason in shown
        )
        text += f"user '{tenant}', total ignored: {len(failed)} out of {total} for stream: {key}"
        return _HTTPError(status, text)

    # ---- query_range ----

    def _handle_query_range(self, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        params = {k: v[-1] for k, v in parse_qs(urlsplit(raw_path).query, keep_blank_values=True).items()}
        lower = {k.lower(): v for k, v in headers.items()}
        if body and "application/x-www-form-urlencoded" in lower.get("content-type", ""):
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            params.update({k: v[-1] for k, v in form.items()})
        with self._lock:
            try:
                tenant = self._resolve_tenant(headers)
            except _HTTPError as exc:
                return _text_error(exc.status, exc.message)
            flags = {f.strip() for f in lower.get("x-loki-response-encoding-flags", "").split(",") if f.strip()}
            try:
                result = self.query_range(
                    params.get("query", ""),
                    start=params.get("start"),
                    end=params.get("end"),
                    since=params.get("since"),
                    limit=params.get("limit"),
                    direction=params.get("direction"),
                    tenant=tenant,
                    categorize_labels="categorize-labels" in flags,
                )
            except ValueError as exc:
                return _text_error(400, str(exc))
        return _Response(200, json.dumps(result, separators=(",", ":")).encode(), "application/json; charset=UTF-8")

    def query_range(
        self,
        query: str,
        start: str | int | None = None,
        end: str | int | None = None,
        limit: str | int | None = None,
        direction: str | None = None,
        tenant: str | None = None,
        since: str | None = None,
        categorize_labels: bool = False,
    ) -> dict[str, Any]:
        """Run a query_range in-process; returns the JSON document Loki would. Raises ValueError (400)."""
        try:
            matchers, filters = _parse_selector(query)
            now = time.time_ns()
            since_delta = _parse_prom_duration(since) if since else self.query_default_since
            end_ns = _parse_time_param("end", None if end is None else str(end), now)
            start_ns = _parse_time_param(
                "start",
                None if start is None else str(start),
                end_ns - int(since_delta.total_seconds() * _NS),
            )
        except _QueryError as exc:
            raise ValueError(str(exc)) from None
        if end_ns < start_ns:
            raise ValueError("end timestamp must not be before or equal to start time")
        if limit in (None, ""):
            max_entries = 100
        else:
            try:
                max_entries = int(str(limit))
            except ValueError:
                raise ValueError(f'strconv.ParseInt: parsing "{limit}": invalid syntax') from None
        if max_entries <= 0:
            raise ValueError("limit must be a positive value")
        if self.max_entries_limit_per_query and max_entries > self.max_entries_limit_per_query:
            raise ValueError(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query "
                f"({max_entries} > {self.max_entries_limit_per_query})"
            )
        max_len = int(self.max_query_length.total_seconds() * _NS)
        if max_len and end_ns - start_ns > max_len:
            length = timedelta(seconds=(end_ns - start_ns) // _NS)
            raise ValueError(
                f"the query time range exceeds the limit (query length: {_go_duration(length)}, "
                f"limit: {_go_duration(self.max_query_length)})"
            )
        dir_text = (direction or "backward").lower()
        if dir_text not in ("forward", "backward"):
            raise ValueError(f"invalid direction '{direction}'")
        forward = dir_text == "forward"

        started = time.perf_counter()
        with self._lock:
            tenant = tenant if tenant is not None else self.default_tenant()
            hits: list[tuple[int, int, StoredStream, StoredEntry]] = []
            scanned_lines = scanned_bytes = 0
            for stream in self._store.get(tenant, {}).values():
                if not all(m.matches(stream.labels) for m in matchers):
                    continue
                for e in stream.entries:
                    if not start_ns <= e.ts < end_ns:
                        continue
                    scanned_lines += 1
                    scanned_bytes += _utf8_len(e.line)
                    if all(f.matches(e.line) for f in filters):
                        hits.append((e.ts, e.seq, stream, e))
        hits.sort(key=lambda h: (h[0], h[1]), reverse=not forward)
        hits = hits[:max_entries]

        grouped: dict[str, tuple[dict[str, str], list[list[Any]]]] = {}
        md_bytes = 0
        for ts, _, stream, e in hits:
            metadata = {_for_json(k): _for_json(v) for k, v in e.structured_metadata.items()}
            md_bytes += sum(_utf8_len(k) + _utf8_len(v) for k, v in metadata.items())
            if categorize_labels:
                stream_labels = dict(stream.labels)
                value: list[Any] = [
                    str(ts),
                    _for_json(e.line),
                    {"structuredMetadata": metadata} if metadata else {},
                ]
            else:
                stream_labels = dict(stream.labels)
                for name, val in metadata.items():
                    stream_labels[name + "_extracted" if name in stream.labels else name] = val
                value = [str(ts), _for_json(e.line)]
            group_key = render_labels(sorted(stream_labels.items()))
            grouped.setdefault(group_key, (stream_labels, []))[1].append(value)
        result = [
            {"stream": {k: _for_json(v) for k, v in sorted(labels.items())}, "values": values}
            for _, (labels, values) in sorted(grouped.items())
        ]
        elapsed = time.perf_counter() - started
        stats = self._stats(scanned_lines, scanned_bytes, len(hits), md_bytes, elapsed)
        data: dict[str, Any] = {"resultType": "streams", "result": result, "stats": stats}
        if categorize_labels:
            data["encodingFlags"] = ["categorize-labels"]
        return {"status": "success", "data": data}

    @staticmethod
    def _stats(lines: int, size: int, returned: int, md_bytes: int, elapsed: float) -> dict[str, Any]:
        def per_second(n: int) -> int:
            return int(n / elapsed) if elapsed > 0 else 0

        return {
            "summary": {
                "bytesProcessedPerSecond": per_second(size),
                "linesProcessedPerSecond": per_second(lines),
                "totalBytesProcessed": size,
                "totalLinesProcessed": lines,
                "execTime": elapsed,
                "queueTime": 0,
                "subqueries": 0,
                "totalEntriesReturned": returned,
                "splits": 0,
                "shards": 0,
                "totalPostFilterLines": returned,
                "totalStructuredMetadataBytesProcessed": md_bytes,
            },
            "querier": {"store": {"totalChunksRef": 0, "totalChunksDownloaded": 0}},
            "ingester": {
                "totalReached": 1,
                "totalChunksMatched": 0,
                "totalBatches": 1,
                "totalLinesSent": returned,
            },
        }
