"""The OTLP/gRPC logs receiver: LogsService/Export on a grpc.aio server, plus gRPC health.

Status codes follow what the OpenTelemetry Collector's exporter does with them
(reference: otlp-and-collector.md): malformed data -> INVALID_ARGUMENT (the collector drops it; it
can never succeed); over the size limit -> RESOURCE_EXHAUSTED without RetryInfo (grpc enforces
``max_message_bytes`` after decompression); anything transient (archive slow or down, capacity
full, shutting down) -> UNAVAILABLE with RetryInfo, so the collector retries. Partial success is
never used: it would make the collector drop records.

The request is deserialised here, not by grpc, so a decode failure gets a useful message and never
reaches the chain. This module knows nothing of sealing beyond ``RecordSink``.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector_ext.errors import DeliveryError, InvalidRequestError
from collector_ext.metrics import Metrics
from collector_ext.seal.payload import log_payloads

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
_EMPTY_RESPONSE = ExportLogsServiceResponse().SerializeToString()


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
    """The Export method, taking raw request bytes."""

    def __init__(self, sink: RecordSink, metrics: Metrics, *, retry_after: float = 1.0) -> None:
        self._sink = sink
        self._metrics = metrics
        self._retry_after = retry_after

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.monotonic()
        try:
            # The parsed message is dropped here: a request waiting for its acknowledgement keeps
            # only its sealed entries (the pipeline empties ``payloads`` once it has sealed them).
            payloads = log_payloads(ExportLogsServiceRequest.FromString(request))
        except (DecodeError, RecursionError, ValueError) as exc:
            self._metrics.observe_export("grpc", "invalid", 0, time.monotonic() - started)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid ExportLogsServiceRequest ({type(exc).__name__}: {exc}); nothing was sealed",
            )
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
            message_text = f"{exc.diagnostics()}; retry later"
            context.set_trailing_metadata(
                (("grpc-status-details-bin", _unavailable_details(message_text, self._retry_after)),)
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, message_text)
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
    ) -> None:
        self.metrics = metrics or Metrics()
        self.handler = LogsExportHandler(sink, self.metrics)
        self._sink = sink
        self._listen = listen
        self._max_message_bytes = max_message_bytes
        self._credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0

    def _build_server(self) -> grpc.aio.Server:
        # Built inside the running event loop: grpc.aio binds a server to the loop it is created in.
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        export = grpc.unary_unary_rpc_method_handler(
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
