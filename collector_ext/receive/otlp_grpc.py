"""The OTLP/gRPC logs receiver: LogsService/Export on a grpc.aio server, plus gRPC health.

Status codes follow what the OpenTelemetry Collector's exporter does with them
(reference: otlp-and-collector.md): malformed data -> INVALID_ARGUMENT (the collector drops it; it
can never succeed); over the size limit -> RESOURCE_EXHAUSTED without RetryInfo (grpc enforces
``max_message_bytes`` after decompression); anything transient (archive slow or down, capacity
full, shutting down) -> UNAVAILABLE with RetryInfo, so the collector retries. Partial success is
never used: it would make the collector drop records.

The request is deserialised here, not by grpc, so a decode failure gets a useful message and never
reaches the chain. This module knows nothing of sealing beyond ``RecordSink``.

Memory: Export is served as a client-streaming method (the wire form of a unary call is the same), so
the handler runs *before* the message is read: it authenticates the caller, takes a request slot and
a reservation of the memory budget shared with the HTTP receiver (``admission``), and only then reads
the message, within ``body_timeout``. grpc core is told not to inflate compressed messages
(``grpc.per_message_decompression`` 0): gzip and deflate are inflated here in bounded steps, each
charged to the budget before it exists, so a compression bomb costs what the budget allows and no
more. What grpc core buffers of a message being received (up to ``max_message_bytes`` on the wire)
is held in the budget before the read is asked for (``_reserve_for_reading``). Connections are capped
(``max_connections``) and must finish their HTTP/2 handshake, and not sit idle, within
``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from collector_ext.errors import DeliveryError, InvalidRequestError, RequestTooLargeError
from collector_ext.metrics import Metrics
from collector_ext.receive.admission import (
    DEFAULT_ADMISSION,
    AdmissionControl,
    AdmissionRefusedError,
    ReceiverLimits,
    Reservation,
)
from collector_ext.receive.auth import (
    AuthenticationError,
    Authenticator,
    ClientNotAllowedError,
    certificate_from_grpc,
    grpc_peer,
)
from collector_ext.receive.inflate import inflate_whole
from collector_ext.receive.otlp_protobuf import parse_protobuf_request, parse_scalar_request
from collector_ext.receive.validate import DEFAULT_REQUEST_LIMITS, RequestLimits, check_request
from collector_ext.receive.wire_cost import protobuf_decode_cost
from collector_ext.seal.payload import log_payloads
from collector_ext.seal.sender import Sender

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
_EMPTY_RESPONSE = ExportLogsServiceResponse().SerializeToString()
# Above this size a message is inflated and decoded in a worker thread, off the event loop the HTTP
# receiver and the pipeline share.
_DECODE_IN_THREAD_BYTES = 1 << 20
# How long a call waits for room in the budget before its message is read (then UNAVAILABLE).
_READ_ROOM_WAIT_SECONDS = 2.0
# What a sealed payload costs beyond its bytes while it waits for its acknowledgement (the bytes
# object and its slot in the list).
PAYLOAD_OVERHEAD_BYTES = 64


def message_coding(message: bytes) -> str | None:
    """ "gzip" or "deflate" when the message is compressed in that format, None when it is plain.

    grpc core hands compressed messages over as they arrived; the compressed flag itself is not
    visible here, so the format is recognised by its header. A gzip header (1f 8b) can never begin
    an ExportLogsServiceRequest (0x1f would be field 3 with the undefined wire type 7). A zlib header
    could (an unknown varint field); ``decode_message`` falls back to the plain bytes when such a
    message is not one whole zlib stream.
    """
    if message[:2] == b"\x1f\x8b":
        return "gzip"
    # RFC 1950: method 8, window at most 32 KiB, no preset dictionary, header check a multiple of 31.
    zlib_header = (
        len(message) >= 2
        and message[0] & 0x0F == 8
        and message[0] >> 4 <= 7
        and not message[1] & 0x20
        and (message[0] << 8 | message[1]) % 31 == 0
    )
    return "deflate" if zlib_header else None


def decode_message(
    message: bytes,
    limit: int,
    reservation: Reservation,
    sender: Sender | None,
    request_limits: RequestLimits = DEFAULT_REQUEST_LIMITS,
) -> list[bytes]:
    """The sealed payloads of one Export message, inflated if compressed, charged to ``reservation``.

    Raises:
        InvalidRequestError: not a valid request (or a broken gzip stream).
        RequestTooLargeError: over ``limit`` once inflated, or beyond the whole memory budget.
        AdmissionRefusedError: the memory budget has no room now.
    """
    body = message
    coding = message_coding(message)
    if coding == "gzip":
        body = inflate_whole(message, coding, limit, reservation)
    elif coding == "deflate":
        held = reservation.held
        try:
            body = inflate_whole(message, coding, limit, reservation)
        except InvalidRequestError:  # not zlib after all: a plain message that looked like it
            reservation.shrink_to(held)
    reservation.charge(protobuf_decode_cost(body, reservation.room_alone), "decoding the request")
    try:
        # Most requests hold no nested value: decoded so, their checks skip the walk over every
        # attribute. A body that is not one of them is decoded again once the first attempt is gone.
        request = parse_scalar_request(body)
        scalar_only = request is not None
        if request is None:
            request = parse_protobuf_request(body)
        del body
        check_request(request, request_limits, scalar_only=scalar_only)
        payloads = log_payloads(request, sender)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InvalidRequestError(
            f"request is not a valid ExportLogsServiceRequest ({type(exc).__name__}: {exc}); nothing was sealed"
        ) from exc
    del request
    # From here on the request holds only its payloads.
    reservation.shrink_to(sum(len(p) for p in payloads) + PAYLOAD_OVERHEAD_BYTES * len(payloads))
    return payloads


class RecordSink(Protocol):
    """What the receiver hands records to (the sealing pipeline)."""

    @property
    def ready(self) -> bool: ...

    async def submit(self, payloads: list[bytes]) -> None: ...


def _unavailable_details(message: str, retry_after: float) -> bytes:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after * 1e9))
    detail = AnyMessage()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    details: bytes = status.SerializeToString()
    return details


class LogsExportHandler:
    """The Export method: authenticate, admit, read one message, decode, seal."""

    def __init__(
        self,
        sink: RecordSink,
        metrics: Metrics,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        admission: AdmissionControl | None = None,
        limits: ReceiverLimits | None = None,
        authenticator: Authenticator | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._admission = admission or AdmissionControl(DEFAULT_ADMISSION)
        self._limits = limits or ReceiverLimits()
        self._authenticator = authenticator
        self._retry_after = retry_after

    async def _abort_unavailable(self, context: grpc.aio.ServicerContext, message: str) -> None:
        message_text = f"{message}; retry later"
        context.set_trailing_metadata(
            (("grpc-status-details-bin", _unavailable_details(message_text, self._retry_after)),)
        )
        await context.abort(grpc.StatusCode.UNAVAILABLE, message_text)

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Sender | None:
        if self._authenticator is None:
            return None
        authorization: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else None
                break
        return self._authenticator.authenticate(
            authorization=authorization,
            certificate=certificate_from_grpc(context.auth_context()),
            peer=grpc_peer(context.peer()),
        )

    async def _reserve_for_reading(self, reservation: Reservation) -> None:
        """Hold what grpc core may buffer for this call's message before asking for it.

        Once a read is pending, grpc core lets the whole message in (HTTP/2 flow control opens to
        the length it announces) and buffers all of it before handing it over, so the budget cannot
        charge it as it arrives: it is held in advance, as a body still arriving (at most half the
        budget for all of them), and given back to the message's real size once it is here. A
        request that finds no room waits briefly for it: reads of well-behaved clients take
        milliseconds.

        Raises:
            AdmissionRefusedError: still no room after ``_READ_ROOM_WAIT_SECONDS``.
        """
        capacity = self._admission.settings.max_inflight_bytes
        expected = min(self._max_message_bytes, capacity // 2)
        deadline = time.monotonic() + min(self._limits.body_timeout, _READ_ROOM_WAIT_SECONDS)
        while True:
            try:
                reservation.charge_arriving(expected, "a gRPC message of up to max_message_bytes")
                return
            except AdmissionRefusedError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _read_message(self, context: grpc.aio.ServicerContext) -> bytes:
        try:
            message = await asyncio.wait_for(context.read(), self._limits.body_timeout)
        except TimeoutError:
            self._metrics.observe_export("grpc", "timeout", 0, 0.0)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within limits.body_timeout_seconds={self._limits.body_timeout:g}",
            )
        if not isinstance(message, bytes):  # grpc.aio.EOF: the client closed without a message
            return b""
        return message

    async def export(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """One Export call; ``requests`` is unused (the message is read through ``context``)."""
        started = time.monotonic()
        try:
            sender = self._authenticate(context)
        except AuthenticationError as exc:
            self._metrics.observe_export("grpc", "unauthenticated", 0, time.monotonic() - started)
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if isinstance(exc, ClientNotAllowedError)
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await context.abort(code, str(exc))
        try:
            reservation = self._admission.admit()
        except DeliveryError as exc:
            self._metrics.observe_export("grpc", "unavailable", 0, time.monotonic() - started)
            await self._abort_unavailable(context, exc.diagnostics())
        with reservation:
            return await self._export_admitted(context, reservation, sender, started)

    async def _export_admitted(
        self, context: grpc.aio.ServicerContext, reservation: Reservation, sender: Sender | None, started: float
    ) -> bytes:
        try:
            await self._reserve_for_reading(reservation)
        except DeliveryError as exc:
            text = exc.diagnostics()
            self._metrics.observe_export("grpc", "unavailable", 0, time.monotonic() - started)
            await self._abort_unavailable(context, text)
        message = await self._read_message(context)
        reservation.body_arrived()
        # A refusal is decided inside ``except`` but sent after it: aborting raises, and an exception
        # raised while handling another keeps that one's traceback, whose frames hold the message
        # and its inflated body, for as long as grpc keeps the abort.
        refusal: tuple[grpc.StatusCode, str, str] | None = None
        try:
            reservation.shrink_to(len(message))  # what was held in advance, down to what came
            # Deflate inflates at most about 1032 to 1.
            largest = len(message) * (1032 if message_coding(message) else 1)
            if largest >= _DECODE_IN_THREAD_BYTES:
                payloads = await asyncio.to_thread(
                    decode_message, message, self._max_message_bytes, reservation, sender, self._limits.request
                )
            else:
                payloads = decode_message(message, self._max_message_bytes, reservation, sender, self._limits.request)
        except RequestTooLargeError as exc:
            refusal = (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large", exc.diagnostics())
        except InvalidRequestError as exc:
            refusal = (grpc.StatusCode.INVALID_ARGUMENT, "invalid", exc.diagnostics())
        except DeliveryError as exc:
            refusal = (grpc.StatusCode.UNAVAILABLE, "unavailable", exc.diagnostics())
        if refusal is not None:
            del message
            code, outcome, text = refusal
            self._metrics.observe_export("grpc", outcome, 0, time.monotonic() - started)
            if code is grpc.StatusCode.UNAVAILABLE:
                await self._abort_unavailable(context, text)
            await context.abort(code, text)
        del message
        count = len(payloads)
        if not count:
            self._metrics.observe_export("grpc", "empty", 0, time.monotonic() - started)
            return _EMPTY_RESPONSE
        try:
            await self._sink.submit(payloads)
        except InvalidRequestError as exc:  # a record too large to seal
            self._metrics.observe_export("grpc", "invalid", 0, time.monotonic() - started)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.diagnostics())
        except DeliveryError as exc:
            self._metrics.observe_export("grpc", "unavailable", count, time.monotonic() - started)
            await self._abort_unavailable(context, exc.diagnostics())
        self._metrics.observe_export("grpc", "ok", count, time.monotonic() - started)
        return _EMPTY_RESPONSE


class OtlpGrpcReceiver:
    """A grpc.aio server serving LogsService/Export and grpc.health.v1.Health."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        listen: str,
        max_message_bytes: int,
        metrics: Metrics | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        admission: AdmissionControl | None = None,
        limits: ReceiverLimits | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._limits = limits or ReceiverLimits()
        self.handler = LogsExportHandler(
            sink,
            self.metrics,
            max_message_bytes=max_message_bytes,
            admission=admission,
            limits=self._limits,
            authenticator=authenticator,
        )
        self._sink = sink
        self._listen = listen
        self._max_message_bytes = max_message_bytes
        self._credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0

    def _build_server(self) -> grpc.aio.Server:
        # Built inside the running event loop: grpc.aio binds a server to the loop it is created in.
        idle_ms = int(self._limits.idle_timeout * 1000)
        server = grpc.aio.server(
            options=[
                # On the wire: a compressed message is inflated by the handler, under the budget.
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.per_message_decompression", 0),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                # Connections beyond the cap are closed as soon as they are accepted; a connection
                # must complete its TLS and HTTP/2 handshake, and not sit idle, within idle_timeout.
                ("grpc.max_allowed_incoming_connections", self._limits.max_connections),
                ("grpc.server_handshake_timeout_ms", idle_ms),
                ("grpc.max_connection_idle_ms", max(idle_ms, 1000)),
                ("grpc.max_concurrent_streams", 32),
                # Without bandwidth probing a call whose message is not being read yet gets only the
                # initial 64 KiB window; a call being read gets its message's length (and is charged).
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        export = grpc.stream_unary_rpc_method_handler(
            self.handler.export, request_deserializer=None, response_serializer=None
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": export}),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        self._server = server = self._build_server()
        try:
            if self._credentials is None:
                self.port = server.add_insecure_port(self._listen)
            else:
                self.port = server.add_secure_port(self._listen, self._credentials)
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        await server.start()
        await self.update_health()
        return self.port

    async def update_health(self) -> None:
        """SERVING only while the sink would accept a request now."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if self._sink.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(LOGS_SERVICE, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
