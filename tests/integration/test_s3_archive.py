"""Records sent by the OpenTelemetry SDK's OTLP gRPC exporter end up sealed in a real SeaweedFS under
Object Lock; verify passes on the bucket and on a downloaded copy, and catches tampering in both. The
S3 archive's reader lists sizes and refuses an object over the caller's limit before reading it."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from collector_ext.deliver.archive import ListedObject, S3Location
from collector_ext.deliver.s3_archive import S3Archive
from collector_ext.errors import ConfigurationError, ObjectTooLargeError, UnreadableObjectError
from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key
from tests.integration.conftest import KeyPairFiles, S3Server, sidecar_config, verify_archive_at


def _send_with_otel_sdk(endpoint: str, count: int) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "ai-workflow"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=endpoint, insecure=True),
            max_export_batch_size=128,
            max_queue_size=max(2048, 2 * count),
        )
    )
    logger = provider.get_logger("test")
    for i in range(count):
        logger.emit(body=f"inference {i}", attributes={"user.id": "alice", "gen_ai.request.model": "m"}, event_name="x")
    assert provider.force_flush(timeout_millis=30_000)
    provider.shutdown()


def test_sdk_records_are_archived_under_object_lock_and_verify(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("sdk-archive")
    url = f"s3://{bucket}/prod"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url, archive_retention_days=2) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 1000)
        assert sidecar.pipeline.stats.records_archived == 1001
        chain_id = sidecar.pipeline.chain_id.hex()

    keys = seaweedfs.keys(bucket, "prod/")
    segments = [k for k in keys if parse_segment_key(k)]
    checkpoints = [k for k in keys if parse_checkpoint_key(k)]
    assert segments and checkpoints
    assert all(k.startswith(f"prod/{chain_id}/") for k in keys)
    for key in (segments[0], checkpoints[-1]):
        head = seaweedfs.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        retain = head["ObjectLockRetainUntilDate"]
        assert dt.timedelta(days=1, hours=23) < retain - dt.datetime.now(dt.UTC) <= dt.timedelta(days=2)
        assert head.get("ChecksumSHA256")

    version = seaweedfs.client.list_object_versions(Bucket=bucket, Prefix=segments[0])["Versions"][0]["VersionId"]
    with pytest.raises(ClientError) as refused:
        seaweedfs.client.delete_object(Bucket=bucket, Key=segments[0], VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    report = verify_archive_at(url, [key_pair.public_key], endpoint_url=seaweedfs.endpoint_url)
    assert report.findings == ()
    assert report.records_checked == 1001

    copy = tmp_path / "copy"
    seaweedfs.download(bucket, "prod", copy)
    local = verify_archive_at(str(copy), [key_pair.public_key], all_signatures=True)
    assert local.findings == ()
    assert local.records_checked == 1001
    assert local.signatures_checked == 1001 + len(checkpoints)


def test_overwriting_a_segment_is_detected_in_the_bucket_and_the_copy(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("tampered")
    url = f"s3://{bucket}/p"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 50)
    segment = next(
        k for k in seaweedfs.keys(bucket, "p/") if parse_segment_key(k) and "-00000000000000000000." not in k
    )
    original = seaweedfs.client.get_object(Bucket=bucket, Key=segment)["Body"].read()
    marker = b"inference 7"
    assert marker in original
    # Someone with write access overwrites the object (Object Lock keeps the original version).
    seaweedfs.client.put_object(Bucket=bucket, Key=segment, Body=original.replace(marker, b"inference 8"))
    report = verify_archive_at(url, [key_pair.public_key], endpoint_url=seaweedfs.endpoint_url)
    assert [(f.kind.value, f.object_key) for f in report.findings] == [("modified-record", segment[len("p/") :])]
    assert not report.clean
    seaweedfs.download(bucket, "p", tmp_path / "copy")
    copy_report = verify_archive_at(str(tmp_path / "copy"), [key_pair.public_key])
    assert [(f.kind.value, f.first_sequence) for f in copy_report.findings] == [
        (f.kind.value, f.first_sequence) for f in report.findings
    ]


def test_bucket_without_object_lock_stops_start_up_naming_the_setting(
    seaweedfs: S3Server, key_pair: KeyPairFiles
) -> None:
    seaweedfs.client.create_bucket(Bucket="unlocked")
    from collector_ext.service import running_in_thread

    config = sidecar_config(key_pair, "s3://unlocked/x", archive_endpoint_url=seaweedfs.endpoint_url)
    with pytest.raises(ConfigurationError) as error, running_in_thread(config):
        pass
    assert error.value.setting == "archive.retention_mode"


def test_missing_bucket_stops_start_up(seaweedfs: S3Server, key_pair: KeyPairFiles) -> None:
    from collector_ext.service import running_in_thread

    config = sidecar_config(key_pair, "s3://no-such-bucket/x", archive_endpoint_url=seaweedfs.endpoint_url)
    with pytest.raises(ConfigurationError, match="does not exist") as error, running_in_thread(config):
        pass
    assert error.value.setting == "archive.url"


def test_verify_cli_exit_codes_and_json(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    import json

    bucket = seaweedfs.create_bucket("cli")
    url = f"s3://{bucket}/audit"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 20)
    base = [sys.executable, "-m", "collector_ext.cli", "verify", "--endpoint-url", seaweedfs.endpoint_url]
    ok = subprocess.run(
        [*base, "--archive", url, "--public-key", str(key_pair.public), "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    document = json.loads(ok.stdout)
    assert document["verified"] is True
    assert document["totals"]["entries"] == 21
    assert document["findings"] == []

    other = KeyPairFiles(tmp_path / "other")
    wrong = subprocess.run([*base, "--archive", url, "--public-key", str(other.public)], capture_output=True, text=True)
    assert wrong.returncode == 1
    assert "unknown-key" in wrong.stdout and "NOT VERIFIED" in wrong.stdout

    empty = subprocess.run(
        [*base, "--archive", f"s3://{bucket}/nothing-here", "--public-key", str(key_pair.public)],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 2
    assert "no collector-ext objects" in empty.stderr

    unreadable = subprocess.run(
        [*base, "--archive", url, "--public-key", str(tmp_path / "missing.pub")], capture_output=True, text=True
    )
    assert unreadable.returncode == 2
    assert "missing.pub" in unreadable.stderr

    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("hello")
    bad = subprocess.run([*base, "--archive", url, "--public-key", str(not_a_key)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "not-a-key.pub" in bad.stderr


def test_get_with_a_limit_refuses_a_large_object_before_reading_its_body(seaweedfs: S3Server) -> None:
    bucket = seaweedfs.create_bucket("limits")
    large, small = "p/chain/large.cxseg", "p/chain/small.cxseg"
    seaweedfs.client.put_object(Bucket=bucket, Key=large, Body=b"\x01" * (24 << 20))
    seaweedfs.client.put_object(Bucket=bucket, Key=small, Body=b"small object")
    hostile = "p/\x1b]0;owned\x07\r.txt"
    seaweedfs.client.put_object(Bucket=bucket, Key=hostile, Body=b"")

    async def run() -> None:
        store = S3Archive(S3Location(bucket, "p"), endpoint_url=seaweedfs.endpoint_url, for_writing=False)
        await store.open()
        try:
            listed = [item async for item in store.list_objects()]
            assert listed == [
                ListedObject("\x1b]0;owned\x07\r.txt", 0),
                ListedObject("chain/large.cxseg", 24 << 20),
                ListedObject("chain/small.cxseg", 12),
            ]
            assert [item async for item in store.list_objects("chain/", "chain/large.cxseg")] == [listed[2]]
            started = time.monotonic()
            with pytest.raises(ObjectTooLargeError) as error:
                await store.get("chain/large.cxseg", max_bytes=1 << 20)
            assert time.monotonic() - started < 5
            # The exact size: it came from Content-Length, before the body (reading stops at limit + 1).
            assert (error.value.key, error.value.size, error.value.limit) == ("chain/large.cxseg", 24 << 20, 1 << 20)
            assert await store.get("chain/small.cxseg", max_bytes=12) == b"small object"
            with pytest.raises(ObjectTooLargeError):
                await store.get("chain/small.cxseg", max_bytes=11)
            assert await store.get("chain/small.cxseg") == b"small object"
            # Listed, then gone: the object's problem, not the store's.
            with pytest.raises(UnreadableObjectError, match="no longer exists"):
                await store.get("chain/deleted.cxseg", max_bytes=1 << 20)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_body_longer_than_announced_is_cut_off_at_the_limit() -> None:
    class EndlessBody:
        """A response body that never ends, as a store announcing no length could send."""

        def __init__(self) -> None:
            self.sent = 0

        async def read(self, amount: int | None = None) -> bytes:
            assert amount is not None, "read without a bound"
            self.sent += amount
            return b"\x00" * amount

    body = EndlessBody()
    with pytest.raises(ObjectTooLargeError) as error:
        asyncio.run(S3Archive._read_body("k", body, 3 << 20))
    assert body.sent == (3 << 20) + 1
    assert "at least 3145729 bytes" in str(error.value)
