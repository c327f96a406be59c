"""The auditor's side against a real sidecar and SeaweedFS, through the command line: a daily audit
with --state that reads only what is new and catches a rollback of a downloaded copy, a chain
copied into another prefix, and a keyring whose window the archive's signatures fall outside."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key
from tests.integration.conftest import KeyPairFiles, S3Server, logs_request
from tests.integration.test_s3_archive import _send_with_otel_sdk


def _verify(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector_ext.cli", "verify", *arguments, "--json"], capture_output=True, text=True
    )


def _kinds(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    return [(f["kind"], f["severity"]) for f in json.loads(result.stdout)["findings"]]


def test_daily_audit_with_state_reads_only_what_is_new_and_catches_a_rollback(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("daily-audit")
    url = f"s3://{bucket}/prod"
    s3 = ["--endpoint-url", seaweedfs.endpoint_url, "--public-key", str(key_pair.public)]
    state = tmp_path / "audit-state.json"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 200)
        first_chain = sidecar.pipeline.chain_id.hex()

    day_one = _verify("--archive", url, *s3, "--state", str(state))
    assert day_one.returncode == 0, day_one.stdout + day_one.stderr
    report = json.loads(day_one.stdout)
    assert report["incremental"] is False
    assert report["chains"][0]["archive_id"] == url
    assert report["chains"][0]["final"] is True  # the sidecar stopped cleanly
    remembered = json.loads(state.read_text())
    assert remembered["archive"] == url
    assert remembered["chains"][first_chain]["checkpoint"]["last_sequence"] == 200

    # A second run of the writer (no spool: a new chain that names the first), then the next audit.
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 50)
        second_chain = sidecar.pipeline.chain_id.hex()
    day_two = _verify("--archive", url, *s3, "--state", str(state))
    assert day_two.returncode == 0, day_two.stdout + day_two.stderr
    report = json.loads(day_two.stdout)
    assert report["incremental"] is True
    by_chain = {c["chain_id"]: c for c in report["chains"]}
    assert by_chain[first_chain]["entries"] == 0  # nothing new in it: not read again
    assert by_chain[first_chain]["resumed_from_checkpoint"] is not None
    assert by_chain[second_chain]["entries"] == 51
    assert ("superseded-chain", "info") in _kinds(day_two)

    # The same audit of a downloaded copy, then the copy is rolled back: the newest checkpoints and the
    # segments after the newest remaining one are removed. Consistent, but not what was verified.
    copy = tmp_path / "copy"
    seaweedfs.download(bucket, "prod", copy)
    copy_state = tmp_path / "copy-state.json"
    keys = ["--public-key", str(key_pair.public)]
    assert _verify("--archive", str(copy), *keys, "--state", str(copy_state)).returncode == 0
    checkpoints = sorted(
        (parsed.checkpoint_number, path)
        for path in copy.rglob("*.cxckpt")
        if (parsed := parse_checkpoint_key(path.relative_to(copy).as_posix())) is not None
        and parsed.chain_id_hex == second_chain
    )
    # Keep all but the newest checkpoint (none if it had one) and the segments they cover.
    kept_last = -1
    if len(checkpoints) >= 2:
        kept = parse_checkpoint_key(checkpoints[-2][1].relative_to(copy).as_posix())
        assert kept is not None
        kept_last = kept.last_sequence
    for _, path in checkpoints[-1:] if kept_last >= 0 else checkpoints:
        path.unlink()
    for path in copy.rglob("*.cxseg"):
        parsed = parse_segment_key(path.relative_to(copy).as_posix())
        if parsed is not None and parsed.chain_id_hex == second_chain and parsed.first_sequence > max(kept_last, 0):
            path.unlink()
    rolled_back = _verify("--archive", str(copy), *keys, "--state", str(copy_state))
    assert rolled_back.returncode == 1, rolled_back.stdout
    assert ("rollback", "tampering") in _kinds(rolled_back)
    # Without the state the rolled-back copy is consistent: only what was remembered catches it.
    unaware = _verify("--archive", str(copy), *keys)
    assert unaware.returncode == 0, unaware.stdout

    # The state of the bucket is not the copy's: mixing them up is an error, not a fresh start.
    mixed = _verify("--archive", str(copy), *keys, "--state", str(state))
    assert mixed.returncode == 2
    assert "audit-state.json" in mixed.stderr and "use one state file per archive" in mixed.stderr
    state.write_text("{damaged")
    damaged = _verify("--archive", url, *s3, "--state", str(state))
    assert damaged.returncode == 2
    assert "is damaged" in damaged.stderr


def test_a_chain_copied_into_another_prefix_is_foreign_there(
    seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("replay")
    url = f"s3://{bucket}/eu"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 20)
    for key in seaweedfs.keys(bucket, "eu/"):
        seaweedfs.client.copy_object(Bucket=bucket, Key="us/" + key[3:], CopySource={"Bucket": bucket, "Key": key})
    s3 = ["--endpoint-url", seaweedfs.endpoint_url, "--public-key", str(key_pair.public)]
    assert _verify("--archive", url, *s3).returncode == 0
    replayed = _verify("--archive", f"s3://{bucket}/us", *s3)
    assert replayed.returncode == 1
    assert _kinds(replayed) == [("foreign-chain", "tampering")]
    # A local copy names no archive by itself; --archive-id says which one it is a copy of.
    copy = tmp_path / "copy"
    seaweedfs.download(bucket, "us", copy)
    keys = ["--public-key", str(key_pair.public)]
    assert _verify("--archive", str(copy), *keys).returncode == 0
    assert _verify("--archive", str(copy), *keys, "--archive-id", f"s3://{bucket}/us").returncode == 1
    assert _verify("--archive", str(copy), *keys, "--archive-id", url).returncode == 0


def test_a_keyring_window_the_signatures_fall_outside(run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    archive = tmp_path / "archive"
    with (
        run_sidecar(str(archive)) as sidecar,
        grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel,
    ):
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        stub.Export(ExportLogsServiceRequest.FromString(logs_request("a", "b")), timeout=10)
    shutil.copy(key_pair.public, tmp_path / "signing.pub")
    current = tmp_path / "current.yaml"
    current.write_text("keys:\n  - public_key: signing.pub\n    not_before: 2020-01-01T00:00:00Z\n")
    expired = tmp_path / "expired.yaml"
    expired.write_text("keys:\n  - public_key: signing.pub\n    not_after: 2021-01-01T00:00:00Z\n")
    assert _verify("--archive", str(archive), "--keyring", str(current)).returncode == 0
    outside = _verify("--archive", str(archive), "--keyring", str(expired))
    assert outside.returncode == 1
    assert {kind for kind, _ in _kinds(outside)} == {"key-outside-validity"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("keys:\n  - public_key: signing.pub\n    not_after: yesterday\n")
    refused = _verify("--archive", str(archive), "--keyring", str(bad))
    assert refused.returncode == 2
    assert "keys[0].not_after" in refused.stderr
