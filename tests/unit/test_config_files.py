"""Start-up checks of the files a configuration names: private keys (owner and mode, as ssh checks
them) and certificates (validity now, the server key matching its certificate)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector_ext.config import SidecarConfig
from collector_ext.errors import ConfigurationError, KeyFileError
from collector_ext.seal.keys import generate_key_pair
from collector_ext.startup_checks import (
    check_certificates,
    check_configuration_files,
    check_private_key_file,
    key_file_problem,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(key: ec.EllipticCurvePrivateKey, not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector-ext test")])
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
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _config(tmp_path: Path, **settings: object) -> SidecarConfig:
    signing = _write(tmp_path / "signing.key", generate_key_pair().private_pem)
    return SidecarConfig.model_validate({"signing_key": signing, "archive": {"url": str(tmp_path / "a")}, **settings})


@pytest.fixture
def server(tmp_path: Path) -> dict[str, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {
        "cert_file": _write(tmp_path / "server.crt", _certificate(key, NOW - DAY, NOW + 30 * DAY), 0o644),
        "key_file": _write(tmp_path / "server.key", _key_pem(key)),
    }


# -- private keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o440])
def test_a_key_readable_by_group_or_others_is_refused_with_the_fix(mode: int) -> None:
    problem = key_file_problem(Path("k.pem"), 0o100000 | mode, owner=1000, user=1000)
    assert problem is not None
    assert f"{mode:04o}" in problem
    assert "chmod 600 k.pem" in problem


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_only_its_owner_reads_is_accepted(mode: int) -> None:
    assert key_file_problem(Path("k.pem"), 0o100000 | mode, owner=1000, user=1000) is None


def test_a_key_owned_by_another_user_is_refused_even_when_private() -> None:
    problem = key_file_problem(Path("k.pem"), 0o100400, owner=0, user=10001)
    assert problem is not None
    assert "uid 0" in problem
    assert "chown 10001 k.pem" in problem


def test_the_check_names_the_setting_and_the_file(tmp_path: Path) -> None:
    key = _write(tmp_path / "signing.key", generate_key_pair().private_pem, 0o644)
    with pytest.raises(KeyFileError) as caught:
        check_private_key_file(key, "signing_key")
    assert caught.value.setting == "signing_key"
    assert str(key) in caught.value.problem
    assert "BEGIN" not in str(caught.value)

    key.chmod(0o600)
    check_private_key_file(key, "signing_key")
    with pytest.raises(KeyFileError, match="owned by uid"):
        check_private_key_file(key, "signing_key", user=os.geteuid() + 1)
    with pytest.raises(KeyFileError, match="cannot read"):
        check_private_key_file(tmp_path / "missing.key", "signing_key")


def test_the_key_behind_a_link_is_checked_as_a_kubernetes_secret_mount_presents_it(tmp_path: Path) -> None:
    real = _write(tmp_path / "..data-signing.key", generate_key_pair().private_pem, 0o440)
    (tmp_path / "signing.key").symlink_to(real.name)
    with pytest.raises(KeyFileError, match="0440"):
        check_private_key_file(tmp_path / "signing.key", "signing_key")


def test_every_private_key_of_the_configuration_is_checked(tmp_path: Path, server: dict[str, Path]) -> None:
    old = _write(tmp_path / "old.key", generate_key_pair().private_pem, 0o640)
    with pytest.raises(KeyFileError) as caught:
        check_configuration_files(_config(tmp_path, previous_signing_keys=[old]), NOW)
    assert caught.value.setting == "previous_signing_keys[0]"

    server["key_file"].chmod(0o644)
    with pytest.raises(KeyFileError) as caught:
        check_configuration_files(_config(tmp_path, tls=server), NOW)
    assert caught.value.setting == "tls.key_file"
    server["key_file"].chmod(0o600)
    check_configuration_files(_config(tmp_path, tls=server), NOW)


# -- certificates --------------------------------------------------------------------------------------


def test_an_expired_server_certificate_stops_start_up_naming_the_file(tmp_path: Path, server: dict[str, Path]) -> None:
    config = _config(tmp_path, tls=server)
    check_certificates(config, NOW)
    with pytest.raises(ConfigurationError) as caught:
        check_certificates(config, NOW + 31 * DAY)
    assert caught.value.setting == "tls.cert_file"
    assert str(server["cert_file"]) in caught.value.problem
    assert "expired on 2026-07-01" in caught.value.problem


def test_a_certificate_not_yet_valid_is_refused(tmp_path: Path, server: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="not valid before") as caught:
        check_certificates(_config(tmp_path, tls=server), NOW - 2 * DAY)
    assert caught.value.setting == "tls.cert_file"


def test_a_key_that_is_not_the_certificates_is_refused_naming_both_files(
    tmp_path: Path, server: dict[str, Path]
) -> None:
    _write(server["key_file"], _key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigurationError) as caught:
        check_certificates(_config(tmp_path, tls=server), NOW)
    assert caught.value.setting == "tls.key_file"
    assert str(server["key_file"]) in caught.value.problem
    assert str(server["cert_file"]) in caught.value.problem


def test_a_key_file_without_a_key_is_refused_without_quoting_it(tmp_path: Path, server: dict[str, Path]) -> None:
    _write(server["key_file"], b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError) as caught:
        check_certificates(_config(tmp_path, tls=server), NOW)
    assert caught.value.setting == "tls.key_file"
    assert "c2VjcmV0" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("setting", ["tls.client_ca_file", "loki.ca_file"])
def test_an_expired_ca_certificate_is_refused_naming_its_setting(
    tmp_path: Path, server: dict[str, Path], setting: str
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    valid = _certificate(ca_key, NOW - DAY, NOW + 365 * DAY)
    expired = _certificate(ca_key, NOW - 400 * DAY, NOW - 35 * DAY)
    ca = _write(tmp_path / "ca.pem", valid + expired, 0o644)
    if setting == "tls.client_ca_file":
        config = _config(tmp_path, tls={**server, "client_ca_file": ca})
    else:
        config = _config(tmp_path, loki={"url": "https://loki:3100", "ca_file": ca})
    with pytest.raises(ConfigurationError) as caught:
        check_certificates(config, NOW)
    assert caught.value.setting == setting
    assert str(ca) in caught.value.problem
    assert "expired" in caught.value.problem

    _write(ca, valid, 0o644)
    check_certificates(config, NOW)


def test_a_file_without_a_certificate_is_refused(tmp_path: Path, server: dict[str, Path]) -> None:
    _write(server["cert_file"], b"not a certificate")
    with pytest.raises(ConfigurationError, match="no PEM certificate") as caught:
        check_certificates(_config(tmp_path, tls=server), NOW)
    assert caught.value.setting == "tls.cert_file"


def test_token_files_pin_files_and_the_metrics_key_are_checked_like_keys(
    tmp_path: Path, server: dict[str, Path]
) -> None:
    token = _write(tmp_path / "collector.token", b"0123456789abcdef0123456789abcdef\n", 0o644)
    config = _config(tmp_path, auth={"metrics_tokens": [{"name": "prometheus", "file": token}]})
    with pytest.raises(KeyFileError) as caught:
        check_configuration_files(config, NOW)
    assert caught.value.setting == "auth.metrics_tokens[0].file"
    assert "0644" in caught.value.problem and "BEGIN" not in caught.value.problem
    token.chmod(0o600)
    check_configuration_files(config, NOW)

    server["key_file"].chmod(0o640)
    with pytest.raises(KeyFileError) as caught:
        check_configuration_files(_config(tmp_path, metrics_tls=server), NOW)
    assert caught.value.setting == "metrics_tls.key_file"
    server["key_file"].chmod(0o600)
    with pytest.raises(ConfigurationError) as caught:
        check_configuration_files(_config(tmp_path, metrics_tls=server), NOW + 60 * DAY)
    assert caught.value.setting == "metrics_tls.cert_file"

    pin = _write(tmp_path / "pin", b"1234\n", 0o600)
    token_config = SidecarConfig.model_validate(
        {
            "signing_token": {"module": "m.so", "token_label": "t", "key_label": "k", "pin_file": pin},
            "archive": {"url": str(tmp_path / "a")},
        }
    )
    check_configuration_files(token_config, NOW)
    pin.chmod(0o604)
    with pytest.raises(KeyFileError) as caught:
        check_configuration_files(token_config, NOW)
    assert caught.value.setting == "signing_token.pin_file"
