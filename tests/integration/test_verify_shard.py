"""verify --shard I/N, verify --merge and verify --processes N through the command line against
SeaweedFS: the merged verdict (JSON and exit code) is the single run's, on a clean archive and on
tampered ones, split by chain and (one long chain) by range; bad reports exit 2 naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector_ext.seal.keys import Ed25519Signer
from tests.integration.conftest import S3Server
from tests.unit.verify.test_shard import TAMPERINGS, several_chains
from tests.unit.verify.test_shard_ranges import SEAM_TAMPERINGS, long_chain

TIMEOUT = 120


def _cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector_ext.cli", "verify", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("tampering", ["clean", "modified-record", "superseded-chain-removed", "stray-object"])
def test_merged_shards_give_the_single_runs_verdict(
    seaweedfs: S3Server, signer: Ed25519Signer, tmp_path: Path, tampering: str
) -> None:
    bucket = seaweedfs.create_bucket(f"shards-{tampering}")
    objects, built = several_chains(signer, archive_id=f"s3://{bucket}/audit")
    TAMPERINGS[tampering](objects, built)
    for key, data in objects.items():
        seaweedfs.client.put_object(Bucket=bucket, Key=f"audit/{key}", Body=data)
    public = tmp_path / "signing.pub"
    public.write_bytes(signer.public_key.pem())
    archive = ["--archive", f"s3://{bucket}/audit", "--endpoint-url", seaweedfs.endpoint_url]
    archive += ["--public-key", str(public)]

    single = _cli(*archive, "--json")
    assert single.returncode in (0, 1), single.stderr
    reports = []
    for index in range(3):
        path = tmp_path / f"shard-{index}.json"
        shard = _cli(*archive, "--shard", f"{index}/3", "--shard-report", str(path))
        assert shard.returncode == 0, shard.stderr
        assert f"shard {index}/3: " in shard.stderr
        reports.append(str(path))
    merged = _cli("--merge", *reports, "--json")
    assert (merged.returncode, json.loads(merged.stdout)) == (single.returncode, json.loads(single.stdout))
    assert merged.returncode == (0 if tampering in ("clean", "stray-object") else 1)
    in_processes = _cli(*archive, "--processes", "3", "--json")
    assert (in_processes.returncode, json.loads(in_processes.stdout)) == (single.returncode, json.loads(single.stdout))
    text = _cli("--merge", *reversed(reports))
    assert text.returncode == single.returncode
    assert text.stdout == _cli(*archive).stdout


def test_merge_errors_exit_2_naming_the_file(seaweedfs: S3Server, signer: Ed25519Signer, tmp_path: Path) -> None:
    bucket = seaweedfs.create_bucket("shards-errors")
    objects, _ = several_chains(signer)
    for key, data in objects.items():
        seaweedfs.client.put_object(Bucket=bucket, Key=key, Body=data)
    public = tmp_path / "signing.pub"
    public.write_bytes(signer.public_key.pem())
    archive = ["--archive", f"s3://{bucket}", "--endpoint-url", seaweedfs.endpoint_url, "--public-key", str(public)]
    first = tmp_path / "a.json"
    shard = _cli(*archive, "--shard", "0/2", "--shard-report", str(first))
    assert shard.returncode == 0, shard.stderr
    second = _cli(*archive, "--shard", "1/2")  # to standard output
    assert second.returncode == 0, second.stderr
    (tmp_path / "b.json").write_text(second.stdout)

    missing = _cli("--merge", str(first))
    assert missing.returncode == 2
    assert "shard report(s) 1/2 missing" in missing.stderr
    twice = _cli("--merge", str(first), str(tmp_path / "b.json"), str(first))
    assert twice.returncode == 2
    assert f"--merge {first}: is shard 0/2 again" in twice.stderr
    (tmp_path / "bad.json").write_text("{")
    bad = _cli("--merge", str(first), str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert f"--merge {tmp_path / 'bad.json'}: is not JSON" in bad.stderr
    absent = _cli("--merge", str(tmp_path / "absent.json"))
    assert absent.returncode == 2
    assert "cannot be read" in absent.stderr
    assert "Traceback" not in absent.stderr + bad.stderr + twice.stderr + missing.stderr
    wrong = _cli(*archive, "--shard", "2/2")
    assert wrong.returncode == 2
    assert "--shard: 2/2: needs 0 <= I < N" in wrong.stderr
    with_state = _cli(*archive, "--shard", "0/2", "--state", str(tmp_path / "state.json"))
    assert with_state.returncode == 2
    assert "--state needs a whole run" in with_state.stderr


@pytest.mark.parametrize(
    "tampering",
    [
        "clean",
        "record modified inside a range",
        "first segment after a seam deleted",
        "last segments deleted",
        "seam checkpoint replaced by the next",
    ],
)
def test_merged_ranges_of_one_chain_give_the_single_runs_verdict(
    seaweedfs: S3Server, signer: Ed25519Signer, tmp_path: Path, tampering: str
) -> None:
    bucket = seaweedfs.create_bucket(f"ranges-{tampering.replace(' ', '-')}")
    built = long_chain(signer, archive_id=f"s3://{bucket}/audit")
    SEAM_TAMPERINGS[tampering](built)
    for key, data in built.objects.items():
        seaweedfs.client.put_object(Bucket=bucket, Key=f"audit/{key}", Body=data)
    public = tmp_path / "signing.pub"
    public.write_bytes(signer.public_key.pem())
    archive = ["--archive", f"s3://{bucket}/audit", "--endpoint-url", seaweedfs.endpoint_url]
    archive += ["--public-key", str(public)]

    single = _cli(*archive, "--json")
    assert single.returncode == (0 if tampering == "clean" else 1), single.stderr
    reports = []
    for index in range(2):
        path = tmp_path / f"range-{index}.json"
        shard = _cli(*archive, "--shard", f"{index}/2", "--shard-by", "range", "--shard-report", str(path))
        assert shard.returncode == 0, shard.stderr
        document = json.loads(path.read_text())
        assert document["version"] == 2
        # One chain, two ranges: each shard checked one of them.
        assert [part["range"]["part"] for part in document["chains"]] == [index]
        reports.append(str(path))
    merged = _cli("--merge", *reports, "--json")
    assert (merged.returncode, json.loads(merged.stdout)) == (single.returncode, json.loads(single.stdout))
    in_processes = _cli(*archive, "--processes", "2", "--shard-by", "range", "--json")
    assert (in_processes.returncode, json.loads(in_processes.stdout)) == (single.returncode, json.loads(single.stdout))
    by_chain = tmp_path / "by-chain.json"
    assert _cli(*archive, "--shard", "0/2", "--shard-report", str(by_chain)).returncode == 0
    mixed = _cli("--merge", str(by_chain), reports[1])
    assert mixed.returncode == 2
    assert f"--merge {reports[1]}: was split by range, {by_chain} by chain" in mixed.stderr
