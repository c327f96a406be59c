"""`collector-ext prove` and `verify-proof` as an auditor runs them, against a real sidecar's archive in
SeaweedFS: exit codes, the named failed check, and no traceback on bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.pipeline import PipelineSettings, SealingPipeline
from collector_ext.seal.keys import load_private_key_pem
from collector_ext.spool import Spool
from tests.integration.conftest import KeyPairFiles, S3Server
from tests.integration.test_s3_archive import _send_with_otel_sdk

CLI = [sys.executable, "-m", "collector_ext.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture
def archive(seaweedfs: S3Server, run_sidecar: Any, key_pair: KeyPairFiles) -> tuple[str, str]:
    bucket = seaweedfs.create_bucket("prove-cli")
    url = f"s3://{bucket}/audit"
    with run_sidecar(url, archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        _send_with_otel_sdk(f"127.0.0.1:{sidecar.port}", 300)
        chain = sidecar.pipeline.chain_id.hex()
    return url, chain


def test_prove_and_verify_proof(
    archive: tuple[str, str], seaweedfs: S3Server, key_pair: KeyPairFiles, tmp_path: Path
) -> None:
    url, chain = archive
    endpoint = ["--endpoint-url", seaweedfs.endpoint_url]
    one = tmp_path / "one.tlog-proof"
    done = _run("prove", "--archive", url, *endpoint, "--chain", chain, "--seq", "150", "--out", str(one))
    assert done.returncode == 0, done.stderr
    assert "record 150" in done.stdout
    checked = _run("verify-proof", str(one), "--public-key", str(key_pair.public))
    assert checked.returncode == 0, checked.stdout
    assert "VERIFIED: 1 record" in checked.stdout
    assert "record 150:" in checked.stdout
    assert "body: inference " in checked.stdout
    # A Loki entry's seal fields name the record just as well; a run of records.
    entry = tmp_path / "loki-entry.json"
    entry.write_text(json.dumps({"line": "inference 9", "audit_chain_id": chain, "audit_seq": "11"}))
    run = tmp_path / "run.proof"
    assert _run("prove", "--archive", url, *endpoint, "--record", str(entry), "--out", str(run)).returncode == 0
    assert (
        _run("prove", "--archive", url, *endpoint, "--chain", chain, "--seq", "0-300", "--out", str(run)).returncode
        == 0
    )
    report = json.loads(_run("verify-proof", str(run), "--public-key", str(key_pair.public), "--json").stdout)
    assert report["verified"] and len(report["records"]) == 301

    # Bad input: exit 1 naming the check, never a traceback.
    other = KeyPairFiles(tmp_path / "other")
    data = one.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "check failed: "),
        "other key": (data, "check failed: checkpoint signature"),
        "inconsistent": (data.replace(b"index 150", b"index 151"), "check failed: record"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.tlog-proof"
        path.write_bytes(content)
        key = other.public if name == "other key" else key_pair.public
        result = _run("verify-proof", str(path), "--public-key", str(key))
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert expected in result.stdout, (name, result.stdout)
        assert "Traceback" not in result.stdout + result.stderr
    # Could not run: exit 2 with a message naming the option or file.
    missing = _run("verify-proof", str(tmp_path / "absent"), "--public-key", str(key_pair.public))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    ahead = _run("prove", "--archive", url, *endpoint, "--chain", chain, "--seq", "5000", "--out", str(run))
    assert ahead.returncode == 2 and "not covered by a checkpoint yet" in ahead.stderr
    bad = _run("prove", "--archive", url, *endpoint, "--chain", "xyz", "--seq", "1", "--out", str(run))
    assert bad.returncode == 2 and "--chain" in bad.stderr
    for output in (missing, ahead, bad):
        assert "Traceback" not in output.stderr


async def _seal_run(key_pair: KeyPairFiles, archive: Path, spool: Path, count: int) -> bytes:
    """One run of a writer in run key mode (the chain's key certifies an in-memory key that signs the
    records), as with a PKCS#11 token; a file key stands in for the token's."""
    signer = load_private_key_pem(key_pair.private.read_bytes(), "test")
    settings = PipelineSettings(signing_workers="threads", signing_worker_count=1, max_linger=0.001, ack_timeout=5)
    pipeline = SealingPipeline(
        signer, DirectoryArchive(archive), settings, spool=Spool(spool), archive_id=str(archive), run_key=True
    )
    await pipeline.start()
    await pipeline.submit([b"run record %d" % i for i in range(count)])
    await pipeline.close(drain_timeout=5)
    assert pipeline._spool is not None
    pipeline._spool.mark_clean_shutdown()
    pipeline._spool.close()
    return pipeline.chain_id


def test_records_signed_by_run_keys_prove_with_their_certification(key_pair: KeyPairFiles, tmp_path: Path) -> None:
    archive, spool = tmp_path / "archive", tmp_path / "spool"
    chain = asyncio.run(_seal_run(key_pair, archive, spool, 10)).hex()
    assert asyncio.run(_seal_run(key_pair, archive, spool, 10)).hex() == chain
    # 0 genesis, 1 run key, 2-11 records, 12 restart mark, 13 run key, 14-23 records.
    for sequence in ("5", "20", "0-23"):
        proof = tmp_path / f"{sequence}.proof"
        done = _run("prove", "--archive", str(archive), "--chain", chain, "--seq", sequence, "--out", str(proof))
        assert done.returncode == 0, done.stderr
        checked = _run("verify-proof", str(proof), "--public-key", str(key_pair.public), "--json")
        assert checked.returncode == 0, checked.stdout
        records = json.loads(checked.stdout)["records"]
        certified = {r["sequence"]: r.get("run_key_certified_at") for r in records}
        assert certified.get(5, 1) == 1 and certified.get(20, 13) == 13
    # Another writer's key refuses the proof at the note.
    other = KeyPairFiles(tmp_path / "other")
    refused = _run("verify-proof", str(tmp_path / "5.proof"), "--public-key", str(other.public))
    assert refused.returncode == 1 and "check failed: checkpoint signature" in refused.stdout
