"""UNAVAILABLE with RetryInfo and NOT_SERVING health while the archive cannot take records."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.receive.otlp_grpc import EXPORT_METHOD, OtlpGrpcReceiver
from collector_ext.retry import RetryPolicy
from collector_ext.seal.keys import Ed25519Signer
from tests.archive_builder import verify_objects
from tests.fakes import InMemoryArchive

REQUEST = ExportLogsServiceRequest(
    resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(time_unix_nano=1)] * 3)])]
).SerializeToString()


def test_archive_outage_answers_unavailable_with_retry_info_then_recovers(signer: Ed25519Signer) -> None:
    store = InMemoryArchive()

    async def run() -> None:
        pipeline = SealingPipeline(
            signer, store, PipelineSettings(ack_timeout=0.2, retry=RetryPolicy(initial_delay=0.01, max_delay=0.05))
        )
        await pipeline.start()
        receiver = OtlpGrpcReceiver(pipeline, listen="127.0.0.1:0", max_message_bytes=1 << 20)
        port = await receiver.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
            health = health_pb2_grpc.HealthStub(channel)
            await export(REQUEST, timeout=5)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING

            store.fail_puts = 10**9  # the archive goes down
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await export(REQUEST, timeout=5)
            error = raised.value
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
            status = status_pb2.Status.FromString(details)
            retry_info = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(retry_info)
            assert retry_info.retry_delay.ToNanoseconds() > 0
            await receiver.update_health()
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.NOT_SERVING

            store.fail_puts = 0  # back
            for _ in range(300):
                if pipeline.ready:
                    break
                await asyncio.sleep(0.01)
            await receiver.update_health()
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            await export(REQUEST, timeout=5)
        await receiver.stop(1)
        await pipeline.close()

    asyncio.run(run())
    report = verify_objects(store.objects, [signer.public_key])
    assert report.findings == ()
    # genesis + 3 + the 3 sealed during the outage (archived after it, documented as a possible resend
    # duplicate) + 3
    assert report.records_checked == 10
