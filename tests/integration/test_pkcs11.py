"""The signing key in a PKCS#11 token: SoftHSM2 (Debian's softhsm2), a token made by softhsm2-util in a
temporary SOFTHSM2_CONF directory, the key made inside it by `collector-ext keygen --token-module`, the
sidecar sealing real OTLP requests with it in both modes, and the archive verified with the token's
public key alone.

PKCS#11 modules are loaded once per process and read SOFTHSM2_CONF when loaded, so the whole module
shares one token directory (each test uses its own key label)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from collector_ext.cli import main
from collector_ext.config import ArchiveConfig, SidecarConfig, SigningTokenConfig, SpoolConfig
from collector_ext.errors import ConfigurationError
from collector_ext.seal.entry import EntryKind, decode_entry_header
from collector_ext.seal.keys import PublicKey, load_public_key_pem
from collector_ext.seal.layout import parse_segment_key
from collector_ext.seal.segment import decode_segment
from collector_ext.service import Sidecar, running_in_thread
from collector_ext.verify.findings import FindingKind
from tests.integration.conftest import logs_request, verify_archive_at

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN_LABEL = "collector-ext-test"
USER_PIN = "4711-0815"


@dataclass(frozen=True)
class Token:
    module: Path
    label: str
    pin_file: Path


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    util = shutil.which("softhsm2-util")
    module = next((Path(m) for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if util is None or module is None:
        pytest.fail("SoftHSM2 is missing: apt-get install softhsm2 (README, test command)")
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", "so-12345678", "--pin", USER_PIN],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pin_file = directory / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    try:
        yield Token(module, TOKEN_LABEL, pin_file)
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved


def _keygen(token: Token, key_label: str, out: Path, *extra: str) -> PublicKey:
    result = CliRunner().invoke(
        main,
        [
            "keygen",
            "--out",
            str(out),
            "--token-module",
            str(token.module),
            "--token-label",
            token.label,
            "--key-label",
            key_label,
            "--pin-file",
            str(token.pin_file),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (out / "signing.key").exists()  # the private key stays in the token
    return load_public_key_pem((out / "signing.pub").read_bytes(), "signing.pub")


def _config(token: Token, key_label: str, archive: Path, **settings: object) -> SidecarConfig:
    return SidecarConfig(
        listen="127.0.0.1:0",
        http_listen=None,
        metrics_listen=None,
        signing_token=SigningTokenConfig(
            module=token.module, token_label=token.label, key_label=key_label, pin_file=token.pin_file, **settings
        ),
        archive=ArchiveConfig(url=str(archive)),
        writer_id="pod-hsm",
        checkpoint_min_spacing_seconds=0,
    )


def _send(sidecar: Sidecar, batches: int, per_batch: int, run: str = "run 1") -> None:
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        for batch in range(batches):
            request = logs_service_pb2.ExportLogsServiceRequest.FromString(
                logs_request(*(f"hsm {run} batch {batch} record {i}" for i in range(per_batch)))
            )
            stub.Export(request, timeout=30)


def _signing_key_ids(archive: Path) -> dict[int, set[bytes]]:
    """Key ids in the archived entry headers, by entry kind."""
    found: dict[int, set[bytes]] = {}
    for path in archive.rglob("*.cxseg"):
        assert parse_segment_key(str(path.relative_to(archive))) is not None
        for record in decode_segment(path.read_bytes()).records:
            header = decode_entry_header(record.entry)
            found.setdefault(header.kind, set()).add(header.key_id)
    return found


@pytest.mark.parametrize("spool", [True, False], ids=["restart-with-spool", "new-chain-without-spool"])
def test_run_key_mode_seals_with_a_run_key_the_token_certifies(token: Token, tmp_path: Path, spool: bool) -> None:
    """Two runs: with a spool the chain continues after a restart mark, without one a new chain
    supersedes the first (its genesis names the first chain's head, signed by the first run's run key)."""
    label = f"run-key-mode-{spool}"
    public_key = _keygen(token, label, tmp_path / "keys")
    archive = tmp_path / "archive"
    config = _config(token, label, archive)
    if spool:
        config = config.model_copy(update={"spool": SpoolConfig(directory=tmp_path / "spool")})
    with running_in_thread(config) as sidecar:
        _send(sidecar, 5, 20)
    with running_in_thread(config) as sidecar:
        _send(sidecar, 2, 10, run="run 2")

    keys = _signing_key_ids(archive)
    assert keys[EntryKind.GENESIS] | keys[EntryKind.RUN_KEY] == {public_key.key_id}
    assert len(keys[EntryKind.LOG_RECORD]) == 2 and public_key.key_id not in keys[EntryKind.LOG_RECORD]
    for all_signatures in (False, True):
        report = verify_archive_at(str(archive), [public_key], all_signatures=all_signatures)
        assert report.clean, report.findings
        # A genesis and a certification per run, or a genesis, a restart mark and two certifications.
        assert report.records_checked == 5 * 20 + 2 * 10 + 4
        second = FindingKind.RESTART if spool else FindingKind.SUPERSEDED_CHAIN
        assert sorted(f.kind for f in report.findings) == sorted([second, FindingKind.RUN_KEY, FindingKind.RUN_KEY])


@pytest.mark.parametrize("workers", ["processes", "threads"])
def test_per_record_mode_signs_every_record_in_the_token(token: Token, tmp_path: Path, workers: str) -> None:
    public_key = _keygen(token, f"per-record-{workers}", tmp_path / "keys")
    archive = tmp_path / "archive"
    config = _config(token, f"per-record-{workers}", archive, mode="per_record")
    config = config.model_copy(update={"signing_workers": workers, "signing_worker_count": 2})
    with running_in_thread(config) as sidecar:
        _send(sidecar, 4, 25)

    assert set().union(*_signing_key_ids(archive).values()) == {public_key.key_id}
    report = verify_archive_at(str(archive), [public_key], all_signatures=True)
    assert report.clean, report.findings
    assert report.records_checked == 4 * 25 + 1


def test_keygen_exports_the_existing_key_and_refuses_to_make_a_second(token: Token, tmp_path: Path) -> None:
    made = _keygen(token, "exported", tmp_path / "made")
    exported = _keygen(token, "exported", tmp_path / "exported", "--existing")
    assert exported == made
    result = CliRunner().invoke(
        main,
        [
            "keygen",
            "--out",
            str(tmp_path / "again"),
            "--token-module",
            str(token.module),
            "--token-label",
            token.label,
            "--key-label",
            "exported",
            "--pin-file",
            str(token.pin_file),
        ],
    )
    assert result.exit_code == 2
    assert "signing_token.key_label" in result.output and "already holds a key" in result.output


def test_a_pin_file_readable_by_others_is_refused(token: Token, tmp_path: Path) -> None:
    _keygen(token, "loose-pin", tmp_path / "keys")
    loose = tmp_path / "pin"
    loose.write_text(USER_PIN)
    loose.chmod(0o644)
    config = _config(token, "loose-pin", tmp_path / "archive").model_copy(
        update={
            "signing_token": SigningTokenConfig(
                module=token.module, token_label=token.label, key_label="loose-pin", pin_file=loose
            )
        }
    )
    with pytest.raises(ConfigurationError, match=r"signing_token\.pin_file") as error:
        Sidecar(config)
    assert USER_PIN not in str(error.value)


def test_a_missing_key_or_token_names_the_setting(token: Token, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"signing_token\.key_label"):
        Sidecar(_config(token, "no-such-key", tmp_path / "archive"))
    other = _config(token, "no-such-key", tmp_path / "archive")
    other = other.model_copy(
        update={"signing_token": other.signing_token.model_copy(update={"token_label": "no-such-token"})}  # type: ignore[union-attr]
    )
    with pytest.raises(ConfigurationError, match=r"signing_token\.token_label"):
        Sidecar(other)


def test_a_wrong_pin_is_refused_naming_the_pin_file(token: Token, tmp_path: Path) -> None:
    """In a fresh process: PKCS#11 logs in per process, so this one must not be logged in already."""
    _keygen(token, "wrong-pin", tmp_path / "keys")
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000-0000\n")
    wrong.chmod(0o600)
    script = (
        "import sys\n"
        "from collector_ext.errors import ConfigurationError\n"
        "from collector_ext.token_signer import TokenSettings, TokenSigner\n"
        "try:\n"
        f"    TokenSigner(TokenSettings({str(token.module)!r}, {token.label!r}, 'wrong-pin', '0000-0000'))\n"
        "except ConfigurationError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.returncode == 3, result.stderr
    assert "signing_token.pin_file" in result.stdout and "0000-0000" not in result.stdout
