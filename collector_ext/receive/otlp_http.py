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
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import zlib

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
from collector_ext.receive.otlp_grpc import RecordSink
from collector_ext.receive.otlp_json import parse_json_request
from collector_ext.seal.payload import log_payloads

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


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _BoundedInflater:
    """Inflates gzip (one or more members) or deflate (zlib format, as HTTP defines it) chunk by
    chunk, failing as soon as the output passes ``limit``."""

    def __init__(self, limit: int, coding: str = "gzip") -> None:
        self._limit = limit
        self._produced = 0
        self._coding = coding
        self._wbits = _WBITS[coding]
        self._inflater = zlib.decompressobj(wbits=self._wbits)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"request body inflates to more than max_message_bytes={self._limit} bytes; nothing was sealed"
        )

    def feed(self, data: bytes) -> bytes:
        pieces: list[bytes] = []
        while data:
            if self._inflater.eof:  # a further gzip member follows the previous one
                if self._coding != "gzip":
                    raise InvalidRequestError("data after the end of the deflate stream; nothing was sealed")
                self._inflater = zlib.decompressobj(wbits=self._wbits)
            try:
                # One byte more than the room left: getting it proves the limit is exceeded.
                piece = self._inflater.decompress(data, self._limit - self._produced + 1)
            except zlib.error as exc:
                raise InvalidRequestError(
                    f"request body is not valid {self._coding} ({exc}); nothing was sealed"
                ) from exc
            self._produced += len(piece)
            if self._produced > self._limit:
                raise self._too_large()
            pieces.append(piece)
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        return b"".join(pieces)

    def finish(self) -> None:
        if not self._inflater.eof:
            raise InvalidRequestError(f"request body is truncated {self._coding}; nothing was sealed")


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
            return ExportLogsServiceRequest.FromString(body)
        return parse_json_request(body)
    except (DecodeError, json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        # ValueError covers json.JSONDecodeError and UnicodeDecodeError.
        raise InvalidRequestError(
            f"request is not a valid ExportLogsServiceRequest ({type(exc).__name__}: {exc}); nothing was sealed"
        ) from exc


def _decode_payloads(body: bytes, media_type: str) -> list[bytes]:
    message = _parse_request(body, media_type)
    try:
        return log_payloads(message)
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
    ) -> None:
        self._sink = sink
        self._listen = listen
        self._max_message_bytes = max_message_bytes
        self._metrics = metrics
        self._ssl_context = ssl_context
        self._retry_after = retry_after
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_post(LOGS_PATH, self._export)
        # auto_decompress=False: aiohttp would inflate gzip bodies without our bound.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        host, port = split_host_port(self._listen)
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = site.port
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting connections; requests in flight get ``grace`` seconds to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        if server is not None:
            server.pre_shutdown()
            await server.shutdown(grace)
        await runner.cleanup()

    async def _read_body(self, request: web.Request, coding: str | None) -> bytes:
        """The body, inflated if gzip; never holds more than the limit of either form.

        Raises:
            RequestTooLargeError: over ``max_message_bytes`` on the wire or once inflated.
            InvalidRequestError: broken gzip.
        """
        limit = self._max_message_bytes
        too_large = f"request body exceeds max_message_bytes={limit} bytes; nothing was sealed"
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLargeError(too_large)
        inflater = _BoundedInflater(limit, coding) if coding else None
        received = 0
        parts: list[bytes] = []
        async for chunk in request.content.iter_any():
            received += len(chunk)
            if received > limit:
                raise RequestTooLargeError(too_large)
            parts.append(chunk if inflater is None else inflater.feed(chunk))
        if inflater is not None and received:
            inflater.finish()
        return b"".join(parts)

    async def _export(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        media_type = _media_type(request)
        reply_type = media_type or JSON
        try:
            if media_type is None:
                raise _UnsupportedMediaError(
                    f"unsupported Content-Type {request.headers.get('Content-Type', '(none)')!r}; "
                    f"use {PROTOBUF} or {JSON}"
                )
            body = await self._read_body(request, _content_coding(request))
            if len(body) >= _DECODE_IN_THREAD_BYTES:
                payloads = await asyncio.to_thread(_decode_payloads, body, media_type)
            else:
                payloads = _decode_payloads(body, media_type)
        except RequestTooLargeError as exc:
            self._metrics.observe_export("http", "too_large", 0, time.monotonic() - started)
            return _status_response(413, code_pb2.RESOURCE_EXHAUSTED, exc.diagnostics(), reply_type)
        except _UnsupportedMediaError as exc:
            self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
            return _status_response(415, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
        except InvalidRequestError as exc:
            self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
            return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
        count = len(payloads)
        if payloads:
            try:
                await self._sink.submit(payloads)
            except InvalidRequestError as exc:  # a record too large to seal
                self._metrics.observe_export("http", "invalid", 0, time.monotonic() - started)
                return _status_response(400, code_pb2.INVALID_ARGUMENT, exc.diagnostics(), reply_type)
            except DeliveryError as exc:
                self._metrics.observe_export("http", "unavailable", count, time.monotonic() - started)
                return _status_response(
                    503,
                    code_pb2.UNAVAILABLE,
                    f"{exc.diagnostics()}; retry later",
                    reply_type,
                    retry_after=self._retry_after,
                )
        outcome = "ok" if count else "empty"
        self._metrics.observe_export("http", outcome, count, time.monotonic() - started)
        response = web.Response(status=200, body=_EMPTY_RESPONSES[reply_type])
        response.content_type = reply_type
        return response
