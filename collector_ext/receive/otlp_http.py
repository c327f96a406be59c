"""The OTLP/HTTP logs receiver: POST /v1/logs on an aiohttp server, on the sidecar's event loop.

It accepts ``application/x-protobuf`` and ``application/json`` bodies (OTLP/JSON: hex trace and span
ids, integer enums, decimal-string int64s, unknown fields ignored), uncompressed or gzip, and answers
in the request's content type with an ExportLogsServiceResponse. Records go to the ``RecordSink``
exactly as the gRPC receiver hands them over, and the status codes carry the same meaning for the
collector's ``otlphttp`` exporter (reference: otlp-and-collector.md):

- malformed body (bad protobuf or JSON, invalid UTF-8, nesting beyond the protobuf depth limit, bad
  gzip) -> 400 with a google.rpc.Status body; the collector drops it, nothing was sealed;
- unsupported content type or content encoding -> 415;
- body above ``max_message_bytes`` on the wire or after decompression -> 413 (gzip is inflated
  incrementally and abandoned as soon as it passes the limit, so a gzip bomb costs at most the limit);
- anything transient (archive slow or down, capacity full, shutting down) -> 503 with Retry-After, so
  the collector retries.

Partial success is never used: it would make the collector drop records. Only POST /v1/logs exists
(other paths 404, other methods 405); there are no traces or metrics endpoints and no health endpoint
(health is served over gRPC). TLS is whatever ``ssl_context`` the composition root passes in; this
module reads no files. It logs nothing about requests, so record contents never reach the logs.

Hostile clients (limits, see ``admission``): the caller is authenticated from its headers and TLS
certificate before the body is read (401 with ``WWW-Authenticate: Bearer``, or 403); then the request
takes a slot and charges the memory budget it shares with the gRPC receiver as the body streams in,
as gzip/deflate inflate, and before it is decoded; beyond the budget it gets 503 with Retry-After. A
connection must send its request headers within ``idle_timeout`` (the keep-alive timeout, which also
closes idle connections) and its whole body within ``body_timeout`` (408, connection closed), so
slowloris, stalled and never-ending chunked bodies are cut. Connections beyond ``max_connections``
are closed as soon as they are accepted. aiohttp's own error logging (a malformed request quotes the
bytes it choked on, e.g. a body longer than its Content-Length) goes through ``_ScrubbedServerLog``:
the exception's type only, never its text, at most once per ``_LOG_EVERY_SECONDS`` per kind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time

from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector_ext.errors import DeliveryError, InvalidRequestError, RequestTooLargeError
from collector_ext.metrics import Metrics
from collector_ext.metrics_server import split_host_port
from collector_ext.receive.admission import (
    DEFAULT_ADMISSION,
    AdmissionControl,
    ReceiverLimits,
    Reservation,
)
from collector_ext.receive.auth import (
    AuthenticationError,
    Authenticator,
    ClientNotAllowedError,
    certificate_from_ssl_object,
    format_peer,
)
from collector_ext.receive.inflate import inflate_whole
from collector_ext.receive.otlp_grpc import PAYLOAD_OVERHEAD_BYTES, RecordSink
from collector_ext.receive.otlp_json import parse_json_request
from collector_ext.receive.otlp_protobuf import parse_protobuf_request, parse_scalar_request
from collector_ext.receive.validate import DEFAULT_REQUEST_LIMITS, RequestLimits, check_request
from collector_ext.receive.wire_cost import json_decode_cost, protobuf_decode_cost
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.sender import Sender

log = logging.getLogger(__name__)

LOGS_PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
# Decoding a large body takes long enough to stall the gRPC receiver and the pipeline sharing the
# loop; above this size it runs in a worker thread.
_DECODE_IN_THREAD_BYTES = 1 << 20
# Error messages quote parser output, which can quote the request: keep what goes back bounded.
_MAX_ERROR_MESSAGE_CHARS = 1024
_EMPTY_RESPONSES = {
    PROTOBUF: ExportLogsServiceResponse().SerializeToString(),
    JSON: json_format.MessageToJson(ExportLogsServiceResponse(), indent=None).encode(),
}


class _UnsupportedMediaError(InvalidRequestError):
    """A content type or content encoding the receiver does not speak (415)."""


def _media_type(request: web.Request) -> str | None:
    """PROTOBUF or JSON (parameters such as charset ignored), else None."""
    media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return media_type if media_type in (PROTOBUF, JSON) else None


def _content_coding(request: web.Request) -> str | None:
    """'gzip', 'deflate' or None (identity)."""
    codings = [c.strip().lower() for c in request.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _GZIP_ENCODINGS:
        return "gzip"
    if codings == ["deflate"]:
        return "deflate"
    raise _UnsupportedMediaError(
        f"unsupported Content-Encoding {request.headers['Content-Encoding']!r}; use gzip, deflate or none"
    )


def _parse_request(body: bytes, media_type: str) -> ExportLogsServiceRequest:
    """Decode an ExportLogsServiceRequest in either encoding.

    Raises:
        InvalidRequestError: the body is not a valid request in that encoding.
    """
    if not body:
        return ExportLogsServiceRequest()
    try:
        if media_type == PROTOBUF:
            return parse_protobuf_request(body)
        return parse_json_request(body)
    except (DecodeError, json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        # ValueError covers json.JSONDecodeError and UnicodeDecodeError.
        raise InvalidRequestError(
            f"request is not a valid ExportLogsServiceRequest ({type(exc).__name__}: {exc}); nothing was sealed"
        ) from exc


def _decode_payloads(
    body: bytes,
    media_type: str,
    sender: Sender | None = None,
    request_limits: RequestLimits = DEFAULT_REQUEST_LIMITS,
) -> list[bytes]:
    # A protobuf body without nested values is decoded so that its checks skip the attribute walk.
    message = parse_scalar_request(body) if media_type == PROTOBUF and body else None
    scalar_only = message is not None
    if message is None:
        message = _parse_request(body, media_type)
    check_request(message, request_limits, scalar_only=scalar_only)
    try:
        return log_payloads(message, sender)
    except (RecursionError, ValueError) as exc:
        raise InvalidRequestError(
            f"request is not a valid ExportLogsServiceRequest ({type(exc).__name__}: {exc}); nothing was sealed"
        ) from exc


def _status_response(
    http_status: int, code: int, message: str, media_type: str, *, retry_after: float | None = None
) -> web.Response:
    if len(message) > _MAX_ERROR_MESSAGE_CHARS:
        message = message[: _MAX_ERROR_MESSAGE_CHARS - 3] + "..."
    status = status_pb2.Status(code=code, message=message)
    headers: dict[str, str] = {}
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        detail = AnyMessage()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = json_format.MessageToJson(status, indent=None).encode() if media_type == JSON else status.SerializeToString()
    response = web.Response(status=http_status, body=body, headers=headers)
    response.content_type = media_type
    return response


_LOG_EVERY_SECONDS = 60.0


class _ScrubbedServerLog(logging.Filter):
    """Rewrites aiohttp's server log records so no request bytes reach the logs, and rate-limits them.

    aiohttp logs a request it cannot parse with the exception, whose text quotes the offending bytes
    (a body longer than its Content-Length is parsed as a next request, and logged). What is kept:
    a fixed message, the exception's type, and how many like it were dropped since the last line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[1].__class__.__name__ if record.exc_info and record.exc_info[1] else "none"
        now = time.monotonic()
        if now - self._last.get(kind, -_LOG_EVERY_SECONDS) < _LOG_EVERY_SECONDS:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return False
        self._last[kind] = now
        record.msg = "OTLP/HTTP connection ended by an error (request bytes not logged)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.error_type = kind
        record.similar_dropped = self._dropped.pop(kind, 0)
        return True


_SERVER_LOG = logging.getLogger(f"{__name__}.server")
_SERVER_LOG.addFilter(_ScrubbedServerLog())


class _RefuseConnection(asyncio.Protocol):
    """Stands in for a request handler when the connection cap is reached: closes at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()


class OtlpHttpReceiver:
    """An aiohttp server serving OTLP/HTTP POST /v1/logs; see the module docstring."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        listen: str,
        max_message_bytes: int,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
        retry_after: float = 1.0,
        admission: AdmissionControl | None = None,
        limits: ReceiverLimits | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._sink = sink
        self._listen = listen
        self._max_message_bytes = max_message_bytes
        self._metrics = metrics
        self._ssl_context = ssl_context
        self._retry_after = retry_after
        self._admission = admission or AdmissionControl(DEFAULT_ADMISSION)
        self._limits = limits or ReceiverLimits()
        self._authenticator = authenticator
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.connections_refused = 0
        self._last_refusal_log = -_LOG_EVERY_SECONDS
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_post(LOGS_PATH, self._export)
        # auto_decompress=False: aiohttp would inflate gzip bodies without our bound.
        # keepalive_timeout: aiohttp closes a connection that has no complete request within it,
        # from the connection's start or the previous response (idle, or headers sent slowly).
        runner = web.AppRunner(
            app,
            access_log=None,
            auto_decompress=False,
            keepalive_timeout=self._limits.idle_timeout,
            lingering_time=min(2.0, self._limits.body_timeout),
            logger=_SERVER_LOG,
        )
        await runner.setup()
        host, port = split_host_port(self._listen)
        handlers = runner.server
        assert handlers is not None
        cap = self._limits.max_connections

        def protocol() -> asyncio.BaseProtocol:
            if len(handlers.connections) >= cap:
                self._refused_connection()
                return _RefuseConnection()
            return handlers()

        try:
            self._listener = await asyncio.get_running_loop().create_server(
                protocol,
                host or None,
                port,
                ssl=self._ssl_context,
                # A TLS handshake left unfinished is cut like idle headers.
                ssl_handshake_timeout=self._limits.idle_timeout if self._ssl_context is not None else None,
                backlog=128,
                reuse_address=True,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    def _refused_connection(self) -> None:
        self.connections_refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _LOG_EVERY_SECONDS:
            self._last_refusal_log = now
            log.warning(
                "OTLP/HTTP connections refused: limits.max_connections reached",
                extra={"max_connections": self._limits.max_connections, "refused_total": self.connections_refused},
            )

    async def stop(self, grace: float) -> None:
        """Stop accepting connections; requests in flight get ``grace`` seconds to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        server = runner.server
        if server is not None:
            server.pre_shutdown()
            await server.shutdown(grace)
        await runner.cleanup()

    def _authenticate(self, request: web.Request) -> Sender | None:
        if self._authenticator is None:
            return None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peername = transport.get_extra_info("peername") if transport is not None else None
        return self._authenticator.authenticate(
            authorization=request.headers.get("Authorization"),
            certificate=certificate_from_ssl_object(ssl_object),
            peer=format_peer(peername),
        )

    async def _read_body(self, request: web.Request, reservation: Reservation) -> bytes:
        """The body as it came over the wire (compressed or not), charged to the budget chunk by
        chunk as it arrives.

        Raises:
            RequestTooLargeError: over ``max_message_bytes``, or more than may arrive at once.
            AdmissionRefusedError: the memory budget has no room now.
        """
        limit = self._max_message_bytes
        too_large = f"request body exceeds max_message_bytes={limit} bytes; nothing was sealed"
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLargeError(too_large)
        received = 0
        parts: list[bytes] = []
        async for chunk in request.content.iter_any():
            received += len(chunk)
            if received > limit:
                raise RequestTooLargeError(too_large)
            reservation.charge_arriving(len(chunk))
            parts.append(chunk)
        reservation.body_arrived()
        reservation.charge(received, "the request body")  # the joined copy, while the parts still exist
        body = b"".join(parts)
        parts.clear()
        reservation.refund(received)
        return body

    def _inflate(self, wire: bytes, coding: str | None, reservation: Reservation) -> bytes:
        """The body inflated (under the size limit and the budget); the compressed bytes given back."""
        if coding is None or not wire:
            return wire
        body = inflate_whole(wire, coding, self._max_message_bytes, reservation)
        reservation.refund(len(wire))
        return body

    async def _export(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        media_type = _media_type(request)
        reply_type = media_type or JSON
        try:
            sender = self._authenticate(request)
        except AuthenticationError as exc:
            self._metrics.observe_export("http", "unauthenticated", 0, time.monotonic() - started)
            if isinstance(exc, ClientNotAllowedError):
                return _status_response(403, code_pb2.PERMISSION_DENIED, str(exc), reply_type)
            response = _status_response(401, code_pb2.UNAUTHENTICATED, str(exc), reply_type)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        try:
            reservation = self._admission.admit()
        except DeliveryError as exc:
            self._metrics.observe_export("http", "unavailable", 0, time.monotonic() - started)
            return self._unavailable(exc, reply_type)
        with reservation:
            return await self._export_admitted(request, media_type, reply_type, reservation, sender, started)

    def _unavailable(self, exc: DeliveryError, reply_type: str) -> web.Response:
        return _status_response(
            503, code_pb2.UNAVAILABLE, f"{exc.diagnostics()}; retry later", reply_type, retry_after=self._retry_after
        )

    async def _export_admitted(
        self,
        request: web.Request,
        media_type: str | None,
        reply_type: str,
        reservation: Reservation,
        sender: Sender | None,
        started: float,
    ) -> web.StreamResponse:
        try:
            if media_type is None:
                raise _UnsupportedMediaError(
                    f"unsupported Content-Type {request.headers.get('Content-Type', '(none)')!r}; "
                    f"use {PROTOBUF} or {JSON}"
                )
            coding = _content_coding(request)
            try:
                async with asyncio.timeout(self._limits.body_timeout):
                    wire = await self._read_body(request, reservation)
            except TimeoutError:
                self._metrics.observe_export("http", "timeout", 0, time.monotonic() - started)
                response = _status_response(
                    408,
                    code_pb2.DEADLINE_EXCEEDED,
                    f"the request body did not arrive within limits.body_timeout_seconds={self._limits.body_timeout:g}",
                    reply_type,
                )
                response.force_close()
                return response
            # Deflate inflates at most about 1032 to 1: large ones are inflated off the event loop.
            if coding is not None and len(wire) * 1032 >= _DECODE_IN_THREAD_BYTES:
                body = await asyncio.to_thread(self._inflate, wire, coding, reservation)
            else:
                body = self._inflate(wire, coding, reservation)
            del wire
            cost = json_decode_cost(body) if media_type == JSON else protobuf_decode_cost(body, reservation.room_alone)
            reservation.charge(cost, "decoding the request")
            if len(body) >= _DECODE_IN_THREAD_BYTES:
                payloads = await asyncio.to_thread(_decode_payloads, body, media_type, sender, self._limits.request)
            else:
                payloads = _decode_payloads(body, media_type, sender, self._limits.request)
            del body
            reservation.shrink_to(sum(len(p) for p in payloads) + PAYLOAD_OVERHEAD_BYTES * len(payloads))
        except RequestTooLargeError as exc:
            self._metrics.observe_export("http", "too_large", 0, time.monotonic() - started)
            response = _status_response(413, code_pb2.RESOURCE_EXHAUSTED, exc.diagnostics(), reply_type)
            response.force_close()  # the rest of the body is not read
            return response
        except _UnsupportedMediaError as exc:
            self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
            return _status_response(415, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
        except InvalidRequestError as exc:
            self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
            return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
        except DeliveryError as exc:  # the memory budget, while reading or before decoding
            self._metrics.observe_export("http", "unavailable", 0, time.monotonic() - started)
            response = self._unavailable(exc, reply_type)
            response.force_close()
            return response
        except (ConnectionError, asyncio.IncompleteReadError):
            # The client went away mid-body: nobody to answer, nothing worth an ERROR traceback. (The
            # answer is made outside this block, so no traceback holding the body is kept with it.)
            payloads = None
        if payloads is None:
            self._metrics.observe_export("http", "disconnected", 0, time.monotonic() - started)
            response = web.Response(status=400, text="connection lost")
            response.force_close()
            return response
        count = len(payloads)
        if payloads:
            try:
                await self._sink.submit(payloads)
            except InvalidRequestError as exc:  # a record too large to seal
                self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
                return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
            except DeliveryError as exc:
                self._metrics.observe_export("http", "unavailable", count, time.monotonic() - started)
                return self._unavailable(exc, reply_type)
        outcome = "ok" if count else "empty"
        self._metrics.observe_export("http", outcome, count, time.monotonic() - started)
        response = web.Response(status=200, body=_EMPTY_RESPONSES[reply_type])
        response.content_type = reply_type
        return response
