"""Careless configurations against the real `collector-ext serve` (a child process, loopback only,
every wait bounded): what must stop start-up does, naming the setting and the file, and what is
allowed but unsafe is stated loudly in the log and in /metrics."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector_ext.errors import ConfigurationError
from tests.integration.conftest import KeyPairFiles

CLI = [sys.executable, "-m", "collector_ext.cli", "serve", "--config"]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def _environment(**extra: str) -> dict[str, str]:
    kept = {name: value for name, value in os.environ.items() if not name.startswith("COLLECTOR_EXT_")}
    return {**kept, **extra}


def _write_config(tmp_path: Path, key_pair: KeyPairFiles, **settings: Any) -> Path:
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "signing_key": str(key_pair.private),
        "archive": {"url": str(tmp_path / "archive"), "retention_mode": "GOVERNANCE"},
        "spool": {"directory": str(tmp_path / "spool")},
        "checkpoint_interval_seconds": 600,
        "signing_workers": "threads",
        "signing_worker_count": 1,
        "shutdown_grace_seconds": 1,
        "drain_timeout_seconds": 5,
    }
    config.update(settings)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _refused(config: Path, env: dict[str, str] | None = None) -> str:
    """Run serve, expect it to stop at start-up with exit code 2; returns its stderr."""
    result = subprocess.run(
        [*CLI, str(config)], capture_output=True, text=True, timeout=START_TIMEOUT, env=env or _environment()
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sidecar serving" not in result.stderr
    return result.stderr


def _certificate(directory: Path, not_before: dt.datetime, not_after: dt.datetime) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return {"cert_file": str(cert_file), "key_file": str(key_file)}


@pytest.fixture
def key_pair(tmp_path: Path) -> KeyPairFiles:
    return KeyPairFiles(tmp_path / "keys")


def test_a_signing_key_readable_by_others_stops_start_up(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    key_pair.private.chmod(0o644)
    stderr = _refused(_write_config(tmp_path, key_pair))
    assert f"signing_key: {key_pair.private} has mode 0644" in stderr
    assert f"chmod 600 {key_pair.private}" in stderr
    assert "PRIVATE KEY" not in stderr


def test_a_signing_key_owned_by_another_user_stops_start_up(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root; key_file_problem's unit tests cover the rule")
    os.chown(key_pair.private, 4242, 4242)
    stderr = _refused(_write_config(tmp_path, key_pair))
    assert f"signing_key: {key_pair.private} is owned by uid 4242" in stderr
    assert "chown 0" in stderr


def test_an_expired_server_certificate_stops_start_up(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    now = dt.datetime.now(dt.UTC)
    tls = _certificate(tmp_path, now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    stderr = _refused(_write_config(tmp_path, key_pair, tls=tls))
    assert f"tls.cert_file: {tls['cert_file']}: the certificate CN=127.0.0.1 expired on" in stderr


def test_a_spool_directory_that_is_a_link_stops_start_up(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "spool").symlink_to(tmp_path / "elsewhere")
    stderr = _refused(_write_config(tmp_path, key_pair))
    assert "spool.directory:" in stderr and "is a symbolic link" in stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_dangling_cursor_link_creates_no_file_outside_the_spool(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    (tmp_path / "spool").mkdir()
    outside = tmp_path / "outside.txt"
    (tmp_path / "spool" / "loki.cursor").symlink_to(outside)
    stderr = _refused(_write_config(tmp_path, key_pair))
    assert "spool.directory:" in stderr and "loki.cursor is a symbolic link" in stderr
    assert not outside.exists()


def test_an_archive_url_climbing_out_of_its_prefix_stops_start_up(tmp_path: Path, key_pair: KeyPairFiles) -> None:
    config = _write_config(tmp_path, key_pair)
    stderr = _refused(config, _environment(COLLECTOR_EXT_ARCHIVE__URL="s3://bucket/prefix/../.."))
    assert "archive.url:" in stderr and "'..'" in stderr


class _Serving:
    """`collector-ext serve` in a child process; its stderr JSON lines collected by a thread."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*CLI, str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, umask=0
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, message: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, f"serve exited with {self.process.returncode}: {self.seen[-3:]}"
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.seen.append(record)
            if record.get("message") == message:
                return record
        raise AssertionError(f"no {message!r} within {timeout} s: {self.seen[-3:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def test_retention_none_from_the_environment_is_loud_and_the_settings_are_logged(
    tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    """The file says GOVERNANCE, the environment says NONE: the sidecar runs, and says so."""
    config = _write_config(tmp_path, key_pair)
    serving = _Serving(config, _environment(COLLECTOR_EXT_ARCHIVE__RETENTION_MODE="NONE"))
    try:
        settings = serving.wait_for("effective security settings")
        serving_line = serving.wait_for("sidecar serving")
        warnings = [r for r in serving.seen if r["level"] == "WARNING" and r.get("setting")]
        with urllib.request.urlopen(f"http://127.0.0.1:{serving_line['metrics_port']}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
    finally:
        serving.stop()
    assert serving.process.returncode == 0

    assert settings["level"] == "INFO"
    assert settings["retention_mode"] == "NONE"
    assert settings["retention_mode_source"] == "environment variable COLLECTOR_EXT_ARCHIVE__RETENTION_MODE"
    assert settings["ack"] == "spool"
    assert settings["spool"] == str(tmp_path / "spool")
    assert settings["key_id"] == key_pair.public_key.key_id.hex()
    assert [listener["setting"] for listener in settings["listeners"]] == ["listen", "http_listen", "metrics_listen"]
    assert all(listener["loopback"] and not listener["tls"] for listener in settings["listeners"])
    assert settings["insecure_settings"] == ["archive.retention_mode"]

    [warning] = warnings
    assert warning["setting"] == "archive.retention_mode"
    assert "environment variable COLLECTOR_EXT_ARCHIVE__RETENTION_MODE" in warning["message"]
    assert f"overriding the config file {config}" in warning["message"]

    assert 'collector_ext_insecure_setting{setting="archive.retention_mode"} 1.0' in metrics
    assert 'collector_ext_insecure_setting{setting="listen"} 0.0' in metrics

    # Started with umask 0: the spool is private all the same.
    spool = tmp_path / "spool"
    modes = {path: stat.S_IMODE(path.lstat().st_mode) for path in [spool, *spool.rglob("*")]}
    assert {mode for path, mode in modes.items() if path.is_dir()} == {0o700}
    assert {mode for path, mode in modes.items() if not path.is_dir()} == {0o600}
    assert len(modes) >= 5  # spool, segments, lock, loki.cursor, a genesis segment or clean-shutdown


def test_the_start_up_bucket_check_names_a_missing_bucket_and_passes_an_existing_one(
    seaweedfs: Any, run_sidecar: Any
) -> None:
    """The start-up check is now a listing under the archive prefix (which the IAM policy's s3:prefix
    condition admits) instead of HeadBucket (which it would refuse); it must still tell a missing
    bucket (naming archive.url) from one that is there. That the policy admits the listing cannot be
    checked offline: tests/deploy checks that the condition names the prefix the sidecar lists."""
    with (
        pytest.raises(ConfigurationError) as caught,
        run_sidecar("s3://no-such-audit-bucket/prod", archive_endpoint_url=seaweedfs.endpoint_url),
    ):
        pass
    assert caught.value.setting == "archive.url"
    assert "does not exist" in caught.value.problem

    bucket = seaweedfs.create_bucket("prefix-listed-at-start")
    with run_sidecar(f"s3://{bucket}/prod", archive_endpoint_url=seaweedfs.endpoint_url) as sidecar:
        assert sidecar.port > 0
