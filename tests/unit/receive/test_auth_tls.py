"""Certificate files re-read without a restart (collector_ext.tls): what is taken, what is refused."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector_ext.errors import ConfigurationError
from collector_ext.tls import ReloadingTls, TlsFiles, check_material

NOW = dt.datetime.now(dt.UTC)


def _pair(name: str, *, days: int = 1) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    temporary.chmod(0o600)
    os.replace(temporary, path)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    cert, key = _pair("first")
    ca, _ = _pair("client CA")
    _write(tmp_path / "tls.crt", cert)
    _write(tmp_path / "tls.key", key)
    _write(tmp_path / "ca.crt", ca)
    return TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt", "metrics_tls")


def test_material_is_checked_and_errors_name_the_setting(files: TlsFiles) -> None:
    cert, key = _pair("a")
    _, other_key = _pair("b")
    expired_cert, expired_key = _pair("old", days=-1)
    ca = files.client_ca_file.read_bytes() if files.client_ca_file else None
    assert check_material(cert, key, ca, files, NOW).not_after > NOW
    cases = [
        ((b"not pem", key, ca), "metrics_tls.cert_file", "holds no PEM certificate"),
        ((expired_cert, expired_key, ca), "metrics_tls.cert_file", "is valid only from"),
        ((cert, b"garbage", ca), "metrics_tls.key_file", "no unencrypted PEM private key"),
        ((cert, other_key, ca), "metrics_tls.key_file", "is not the key of the certificate"),
        ((cert, key, b"nothing"), "metrics_tls.client_ca_file", "holds no PEM certificate"),
    ]
    for (c, k, a), setting, message in cases:
        with pytest.raises(ConfigurationError, match=message) as caught:
            check_material(c, k, a, files, NOW)
        assert caught.value.setting == setting


def test_start_up_refuses_a_mismatched_pair(files: TlsFiles) -> None:
    _, other_key = _pair("other")
    _write(files.key_file, other_key)
    with pytest.raises(ConfigurationError, match="is not the key of the certificate"):
        ReloadingTls(files)


def test_a_complete_rotation_is_taken_once_and_handed_to_grpc(files: TlsFiles) -> None:
    clock = Clock()
    tls = ReloadingTls(files, check_interval=1.0, clock=clock)
    first_context = tls.ssl_context()
    assert tls._fetch_for_grpc() is None  # nothing changed: gRPC keeps its configuration
    cert, key = _pair("second")
    _write(files.key_file, key)
    _write(files.cert_file, cert)
    clock.now = 0.5
    assert not tls.refresh()  # not looked at before the interval
    clock.now = 1.0
    assert tls._fetch_for_grpc() is not None  # gRPC's fetcher refreshes and gets the new pair
    assert tls.material.cert_chain == cert and tls.reloads == 1
    assert tls.ssl_context() is not first_context
    clock.now = 5.0
    assert not tls.refresh()  # unchanged files are not read again
    assert tls._fetch_for_grpc() is None


def test_a_half_done_rotation_keeps_the_previous_material(files: TlsFiles, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    tls = ReloadingTls(files, check_interval=1.0, clock=clock)
    before = tls.material
    cert, key = _pair("second")
    _write(files.cert_file, cert)  # the key is not there yet
    clock.now = 1.0
    with caplog.at_level(logging.WARNING):
        assert not tls.refresh()
    assert tls.material is before
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.__dict__["setting"] == "metrics_tls.key_file"
    _write(files.key_file, key)  # the rotation completes
    clock.now = 2.0
    assert tls.refresh()
    assert tls.material.cert_chain == cert
