"""The command line as a user meets it: keygen, and serve refusing bad settings by name."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from collector_ext.seal.keys import load_private_key_pem, load_public_key_pem

CLI = [sys.executable, "-m", "collector_ext.cli"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_key_id(tmp_path: Path) -> None:
    result = _run("keygen", "--out", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signer = load_private_key_pem(private.read_bytes(), "test")
    assert load_public_key_pem(public.read_bytes(), "test").key_id == signer.key_id
    assert f"key id:      {signer.key_id.hex()}" in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    before = private.read_bytes()
    again = _run("keygen", "--out", str(tmp_path / "keys"))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert private.read_bytes() == before  # the existing key is left alone


def test_serve_names_the_setting_it_cannot_use(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert _run("keygen", "--out", str(keys)).returncode == 0
    archive = str(tmp_path / "archive")
    cases = [
        (["--archive", archive], "signing_key"),
        (["--archive", archive, "--signing-key", str(keys / "signing.key"), "--listen", "0.0.0.0:4317"], "listen"),
        (["--archive", archive, "--signing-key", str(tmp_path / "missing.key")], "missing.key"),
        (["--archive", archive, "--signing-key", str(keys / "signing.pub")], "signing.pub"),
        (["--signing-key", str(keys / "signing.key")], "archive"),
        (["--archive", archive, "--signing-key", str(keys / "signing.key"), "--loki-url", "loki:3100"], "loki.url"),
    ]
    for args, named in cases:
        result = _run("serve", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "PRIVATE KEY" not in result.stderr


def test_serve_reports_a_config_file_error_with_its_setting(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("signing_key: k\narchive:\n  url: ./a\n  retention_days: -3\n")
    result = _run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "archive.retention_days" in result.stderr
