"""A sidecar with two witnesses (one of them down) and a TSA: sealing is not delayed, the live witness's
cosignatures and the TSA's tokens are stored beside the notes, and `verify` requiring 1 of the 2
pinned witnesses passes while requiring 2 of 2 fails; altered cosignatures and tokens are caught."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from collector_ext.config import CheckpointConfig, WitnessConfig
from collector_ext.seal.keys import generate_key_pair, load_public_key_pem
from collector_ext.witness.vkey import witness_vkey
from tests.integration.conftest import KeyPairFiles, logs_request, metric_values
from tests.integration.test_witness_server import NAME, Witness, _free_port
from tests.tsa_server import LocalTsa

DEAD = "witness.example/unreachable"


def _export(port: int, body: bytes) -> float:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/v1/logs", body=body, headers={"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    finally:
        connection.close()
    return time.monotonic() - started


def _verify(archive: Path, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "collector_ext.cli",
            "verify",
            "--archive",
            str(archive),
            "--public-key",
            str(key),
            "--json",
            "--witness-grace",
            "0s",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _kinds(result: subprocess.CompletedProcess[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in json.loads(result.stdout)["findings"]:
        found.setdefault(finding["kind"], []).append(finding)
    return found


def _wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_witness_down_does_not_delay_sealing_and_verify_counts_k_of_n(
    run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
):
    archive = tmp_path / "archive"
    # The sidecar's origins are the archive's name, then the chain id (FORMAT.md 16.4).
    witness = Witness(tmp_path / "witness", key_pair.public, origin_prefix=str(archive).strip("/") + "/")
    live_vkey = witness_vkey(NAME, load_public_key_pem(witness.public.read_bytes(), "test"))
    dead_vkey = witness_vkey(DEAD, load_public_key_pem(generate_key_pair().public_pem, "test"))
    with LocalTsa(tmp_path / "tsa") as tsa:
        witness.start()
        try:
            witnesses = (
                WitnessConfig(url=f"http://127.0.0.1:{_free_port()}", key=dead_vkey, timeout_seconds=2),
                WitnessConfig(url=f"http://127.0.0.1:{witness.port}", key=live_vkey),
            )
            with run_sidecar(
                str(archive),
                witnesses=witnesses,
                checkpoint=CheckpointConfig(tsa_url=tsa.url),
                checkpoint_interval_seconds=1.0,
                checkpoint_min_spacing_seconds=0.1,
                signing_workers="threads",
                signing_worker_count=1,
            ) as sidecar:
                latencies = [_export(sidecar.http_port, logs_request(f"record {i}", "second")) for i in range(20)]
                # The unreachable witness is retried in the background; no Export waits for it.
                assert max(latencies) < 2.0, latencies

                def live_cosigned() -> bool:
                    values = metric_values(sidecar.metrics_port)
                    return (
                        values.get(f'collector_ext_witness_cosignatures_stored_total{{witness="{NAME}"}}', 0) >= 1
                        and values.get("collector_ext_timestamps_stored_total", 0) >= 1
                    )

                _wait_for(live_cosigned, "a cosignature and a token")
                values = metric_values(sidecar.metrics_port)
                assert values["collector_ext_witnesses_failing"] == 1
                assert values["collector_ext_witness_failing_seconds"] > 0
                assert values[f'collector_ext_witness_failures_total{{witness="{DEAD}"}}'] >= 1
                assert values[f'collector_ext_witness_cosignatures_stored_total{{witness="{DEAD}"}}'] == 0
                assert values["collector_ext_tsa_failing_seconds"] == 0
                _export(sidecar.http_port, logs_request("after the first cosignature"))
                time.sleep(1.5)
        finally:
            witness.stop()

    assert list(archive.rglob("*.note.cosig.*")), "no cosignature stored"
    assert list(archive.rglob("*.note.tsr")), "no time-stamp reply stored"
    pinned = ("--witness-key", live_vkey, "--witness-key", dead_vkey)
    one = _verify(
        archive,
        key_pair.public,
        *pinned,
        "--witnesses-required",
        "1",
        "--tsa-cert",
        str(tsa.bundle),
        "--require-timestamp",
    )
    assert one.returncode == 0, one.stdout + one.stderr
    kinds = _kinds(one)
    assert "witnessed" in kinds and NAME in kinds["witnessed"][0]["message"]
    assert "timestamped" in kinds

    both = _verify(archive, key_pair.public, *pinned, "--witnesses-required", "2")
    assert both.returncode == 1, both.stdout + both.stderr
    assert [f["severity"] for f in _kinds(both)["unwitnessed-checkpoint"]] == ["loss"]
    assert _verify(archive, key_pair.public, *pinned).returncode == 1  # default: all pinned witnesses

    # A token checked against another TSA's certificate is refused.
    other = LocalTsa(tmp_path / "other-tsa", name="another TSA")
    foreign = _verify(archive, key_pair.public, "--tsa-cert", str(other.bundle))
    assert foreign.returncode == 1 and "bad-timestamp" in _kinds(foreign)

    # A copy whose cosignature and token were altered.
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    for path in copy.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    cosignature = sorted(copy.rglob("*.note.cosig.*"))[-1]
    line = cosignature.read_bytes()
    cosignature.write_bytes(line[:-6] + (b"AAAA" if line[-6:-2] != b"AAAA" else b"BBBB") + line[-2:])
    token = sorted(copy.rglob("*.note.tsr"))[-1]
    token.write_bytes(tsa.reply(_query_for(b"some other bytes")))
    altered = _verify(copy, key_pair.public, *pinned, "--witnesses-required", "1", "--tsa-cert", str(tsa.bundle))
    assert altered.returncode == 1
    kinds = _kinds(altered)
    assert kinds["bad-cosignature"][0]["severity"] == "tampering"
    assert kinds["bad-timestamp"][0]["severity"] == "tampering"


def _query_for(data: bytes) -> bytes:
    from collector_ext.witness.timestamp import timestamp_request

    return timestamp_request(data).der


def test_bad_witness_options_exit_2_naming_the_option(key_pair: KeyPairFiles, tmp_path: Path):
    archive = tmp_path / "empty"
    archive.mkdir()
    bad = _verify(archive, key_pair.public, "--witness-key", "not-a-vkey")
    assert bad.returncode == 2 and "--witness-key" in bad.stderr
    vkey = witness_vkey(NAME, key_pair.public_key)
    too_many = _verify(archive, key_pair.public, "--witness-key", vkey, "--witnesses-required", "2")
    assert too_many.returncode == 2 and "--witnesses-required" in too_many.stderr
    assert "--tsa-cert" in _verify(archive, key_pair.public, "--require-timestamp").stderr


def _rolled_back_copy(archive: Path, destination: Path, size: int) -> Path:
    """A copy of ``archive`` cut back to the checkpoint of tree ``size``: later checkpoints, notes (with
    what is stored beside them) and segments removed, as a writer that never wrote them would leave it."""
    shutil.copytree(archive, destination)
    for path in sorted(destination.rglob("*"), reverse=True):
        if path.is_dir():
            path.chmod(0o700)
            continue
        path.chmod(0o600)
        name = path.name
        if path.parent.name in ("checkpoints", "notes"):
            last = int(name.split("-")[1][:20])
            if last >= size:
                path.unlink()
        elif name.endswith(".cxseg") and int(name.split("-")[1][:20]) >= size:
            path.unlink()
    return destination


def test_a_rolled_back_archive_is_caught_by_asking_the_witness(
    run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
):
    archive = tmp_path / "archive"
    witness = Witness(tmp_path / "witness", key_pair.public, origin_prefix=str(archive).strip("/") + "/")
    vkey = witness_vkey(NAME, load_public_key_pem(witness.public.read_bytes(), "test"))
    witness.start()
    try:
        url = f"http://127.0.0.1:{witness.port}"
        with run_sidecar(
            str(archive),
            witnesses=(WitnessConfig(url=url, key=vkey),),
            checkpoint_interval_seconds=1.0,
            checkpoint_min_spacing_seconds=0.1,
            signing_workers="threads",
            signing_worker_count=1,
        ) as sidecar:
            size_metric = f'collector_ext_witness_cosigned_tree_size{{witness="{NAME}"}}'
            _export(sidecar.http_port, logs_request("first", "batch"))
            _wait_for(lambda: metric_values(sidecar.metrics_port).get(size_metric, 0) >= 3, "a first cosigned tree")
            first = int(metric_values(sidecar.metrics_port)[size_metric])
            _export(sidecar.http_port, logs_request("second", "batch", "of", "records"))
            _wait_for(lambda: metric_values(sidecar.metrics_port)[size_metric] > first, "a larger cosigned tree")
        asked = ("--witness-key", vkey, "--witness-url", url, "--archive-id", str(archive))
        intact = _verify(archive, key_pair.public, *asked)
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert "witness-rollback" not in _kinds(intact)

        copy = _rolled_back_copy(archive, tmp_path / "rolled-back", first)
        # Alone, the cut archive looks like a writer that stopped after its first checkpoint.
        alone = _verify(copy, key_pair.public, "--archive-id", str(archive))
        assert alone.returncode == 0, alone.stdout + alone.stderr
        caught = _verify(copy, key_pair.public, *asked)
        assert caught.returncode == 1, caught.stdout + caught.stderr
        (finding,) = _kinds(caught)["witness-rollback"]
        assert finding["severity"] == "tampering" and NAME in finding["message"]
    finally:
        witness.stop()
    unreachable = _verify(archive, key_pair.public, *asked)
    assert unreachable.returncode == 2 and "--witness-url" in unreachable.stderr


def test_on_s3_the_witness_follows_the_chain_and_verify_checks_it(
    seaweedfs: Any, run_sidecar: Any, key_pair: KeyPairFiles, tmp_path: Path
):
    """The same against SeaweedFS with Object Lock: proofs read from the bucket's tiles and segments,
    cosignatures and tokens stored under retention, verify reading them back from S3."""
    bucket = seaweedfs.create_bucket("witnessed")
    url = f"s3://{bucket}/prod"
    witness = Witness(tmp_path / "witness", key_pair.public, origin_prefix=f"{bucket}/prod/")
    vkey = witness_vkey(NAME, load_public_key_pem(witness.public.read_bytes(), "test"))
    with LocalTsa(tmp_path / "tsa") as tsa:
        witness.start()
        try:
            with run_sidecar(
                url,
                archive_endpoint_url=seaweedfs.endpoint_url,
                witnesses=(WitnessConfig(url=f"http://127.0.0.1:{witness.port}", key=vkey),),
                checkpoint=CheckpointConfig(tsa_url=tsa.url),
                checkpoint_interval_seconds=1.0,
                checkpoint_min_spacing_seconds=0.1,
                signing_workers="threads",
                signing_worker_count=1,
            ) as sidecar:
                size_metric = f'collector_ext_witness_cosigned_tree_size{{witness="{NAME}"}}'
                sent = 0
                for batch in range(3):
                    _export(sidecar.http_port, logs_request(*[f"batch {batch} record {i}" for i in range(300)]))
                    sent += 300
                    target = sent + 1  # the genesis entry too
                    _wait_for(
                        lambda: metric_values(sidecar.metrics_port).get(size_metric, 0) >= target,
                        f"the witness at tree size {target}",
                    )
                values = metric_values(sidecar.metrics_port)
                assert values["collector_ext_witness_failures_total" + f'{{witness="{NAME}"}}'] == 0
                assert values["collector_ext_timestamps_stored_total"] >= 3
            keys = seaweedfs.keys(bucket, "prod/")
            assert any(".note.cosig." in key for key in keys) and any(key.endswith(".note.tsr") for key in keys)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "collector_ext.cli",
                    "verify",
                    "--archive",
                    url,
                    "--endpoint-url",
                    seaweedfs.endpoint_url,
                    "--public-key",
                    str(key_pair.public),
                    "--json",
                    "--witness-grace",
                    "0",
                    "--witness-key",
                    vkey,
                    "--witness-url",
                    f"http://127.0.0.1:{witness.port}",
                    "--tsa-cert",
                    str(tsa.bundle),
                    "--require-timestamp",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            witness.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"witnessed", "timestamped"} <= set(_kinds(result))
