"""Bearer tokens from files, the client-certificate allow-list, and the Sender they produce."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector_ext.errors import ConfigurationError
from collector_ext.receive.auth import (
    AuthenticationError,
    Authenticator,
    ClientNotAllowedError,
    PeerCertificate,
    TokenFile,
    TokenStore,
    bearer_token,
    certificate_from_der,
    certificate_from_grpc,
    certificate_from_pem,
    format_peer,
    grpc_peer,
    normalize_allowed_client,
)
from collector_ext.seal.sender import Sender

TOKEN_A = "a" * 20 + "-first-token"
TOKEN_B = "b" * 20 + "-second-token"


def _certificate(common_name: str, sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def client_der() -> bytes:
    return _certificate(
        "collector",
        [
            x509.DNSName("Collector.Example.org"),
            x509.UniformResourceIdentifier("spiffe://example.org/ns/obs/sa/collector"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
            x509.RFC822Name("ops@example.org"),
        ],
    )


def _token_file(directory: Path, name: str, token: str, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- certificates -----------------------------------------------------------------------------------


def test_certificate_facts(client_der: bytes) -> None:
    certificate = certificate_from_der(client_der)
    assert certificate.subject == r"CN=collector,O=Example\, Inc."
    assert certificate.sans == (
        "DNS:Collector.Example.org",
        "URI:spiffe://example.org/ns/obs/sa/collector",
        "IP:10.0.0.7",
        "email:ops@example.org",
    )
    assert certificate.sha256 == hashlib.sha256(client_der).digest()
    pem = x509.load_der_x509_certificate(client_der).public_bytes(serialization.Encoding.PEM)
    assert certificate_from_pem(pem) == certificate
    assert certificate_from_grpc({"x509_pem_cert": [pem], "transport_security_type": [b"ssl"]}) == certificate
    assert certificate_from_grpc({"transport_security_type": [b"ssl"]}) is None


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(AuthenticationError, match="cannot be parsed"):
        certificate_from_der(b"\x30\x03\x02\x01\x00")


def test_peer_addresses() -> None:
    assert grpc_peer("ipv4:127.0.0.1:53422") == "127.0.0.1:53422"
    assert grpc_peer("ipv6:%5B::1%5D:53422") == "[::1]:53422"
    assert grpc_peer("ipv6:[::1]:53422") == "[::1]:53422"
    assert grpc_peer("unix:/run/x.sock") == "unix:/run/x.sock"
    assert format_peer(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_peer(("::1", 80, 0, 0)) == "[::1]:80"
    assert format_peer(None) == ""


# --- the allow-list ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "normalized"),
    [
        ("subject:O=Example\\, Inc., CN=collector", r"subject:O=Example\, Inc.,CN=collector"),
        ("DNS:Collector.EXAMPLE.org", "DNS:collector.example.org"),
        ("IP:::0001", "IP:::1"),
        ("URI:spiffe://example.org/x", "URI:spiffe://example.org/x"),
    ],
)
def test_allow_list_entries_are_normalized(entry: str, normalized: str) -> None:
    assert normalize_allowed_client(entry) == normalized


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("collector", "not an allow-list entry"),
        ("CN=collector", "not an allow-list entry"),
        ("IP:not-an-ip", "not an IP address"),
        ("subject:", "not an allow-list entry"),
        ("dns:x", "the kind must be one of"),
        ("subject:==", "not an RFC 4514 name"),
    ],
)
def test_bad_allow_list_entries_say_what_to_write(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_allowed_client(entry)


@pytest.mark.parametrize(
    "entry",
    [
        "subject:CN=collector,O=Example\\, Inc.",
        "DNS:collector.example.org",
        "URI:spiffe://example.org/ns/obs/sa/collector",
        "IP:10.0.0.7",
        "email:ops@example.org",
    ],
)
def test_a_certificate_matches_by_subject_or_any_san(client_der: bytes, entry: str) -> None:
    certificate = certificate_from_der(client_der)
    sender = Authenticator(allowed_clients=[entry]).authenticate(
        authorization=None, certificate=certificate, peer="127.0.0.1:1"
    )
    assert sender == Sender(
        peer="127.0.0.1:1", certificate_subject=certificate.subject, certificate_sha256=certificate.sha256
    )


@pytest.mark.parametrize(
    "entry",
    [
        "subject:CN=collector",
        "URI:spiffe://example.org/ns/obs/sa/other",
        "URI:spiffe://example.org/ns/obs/sa/collector/",
        "IP:10.0.0.8",
        "DNS:example.org",
    ],
)
def test_a_certificate_not_on_the_list_is_forbidden(client_der: bytes, entry: str) -> None:
    authenticator = Authenticator(allowed_clients=[entry])
    with pytest.raises(ClientNotAllowedError, match="not on the allow-list"):
        authenticator.authenticate(authorization=None, certificate=certificate_from_der(client_der), peer="p")
    with pytest.raises(AuthenticationError, match="client certificate is required") as caught:
        authenticator.authenticate(authorization=None, certificate=None, peer="p")
    assert not isinstance(caught.value, ClientNotAllowedError)


def test_without_settings_everyone_is_accepted_and_named(client_der: bytes) -> None:
    authenticator = Authenticator()
    assert authenticator.authenticate(authorization="Bearer whatever", certificate=None, peer="127.0.0.1:5") == Sender(
        peer="127.0.0.1:5"
    )
    certificate = certificate_from_der(client_der)
    sender = authenticator.authenticate(authorization=None, certificate=certificate, peer="127.0.0.1:5")
    assert sender.certificate_subject == certificate.subject
    assert authenticator.describe() == "none"


# --- tokens -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("BEARER abc", "abc")],
)
def test_bearer_values(value: str, token: str) -> None:
    assert bearer_token(value) == token


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "required"), ("", "required"), ("Basic dXNlcjpwYXNz", "Bearer scheme"), ("Bearer ", "no token")],
)
def test_bad_bearer_values(value: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        bearer_token(value)


def test_tokens_authenticate_by_name_and_errors_never_hold_a_token(tmp_path: Path) -> None:
    authenticator = Authenticator.from_files(
        [
            TokenFile("old", _token_file(tmp_path, "old", TOKEN_A)),
            TokenFile("new", _token_file(tmp_path, "new", TOKEN_B)),
        ]
    )
    assert authenticator.requires_token and not authenticator.requires_allowed_certificate
    assert authenticator.describe() == "bearer tokens old, new"
    for token, name in ((TOKEN_A, "old"), (TOKEN_B, "new")):
        sender = authenticator.authenticate(authorization=f"Bearer {token}", certificate=None, peer="127.0.0.1:2")
        assert sender == Sender(peer="127.0.0.1:2", token_name=name)
    for value in (None, f"Bearer {TOKEN_A}x", f"Bearer {TOKEN_A[:-1]}", TOKEN_A, f"Basic {TOKEN_A}"):
        with pytest.raises(AuthenticationError) as caught:
            authenticator.authenticate(authorization=value, certificate=None, peer="p")
        assert not isinstance(caught.value, ClientNotAllowedError)
        assert TOKEN_A[:16] not in str(caught.value)


def test_token_and_certificate_both_required_when_both_configured(tmp_path: Path, client_der: bytes) -> None:
    certificate = certificate_from_der(client_der)
    authenticator = Authenticator.from_files(
        [TokenFile("prod", _token_file(tmp_path, "t", TOKEN_A))], ["DNS:collector.example.org"]
    )
    sender = authenticator.authenticate(authorization=f"Bearer {TOKEN_A}", certificate=certificate, peer="h:1")
    assert (sender.token_name, sender.certificate_subject) == ("prod", certificate.subject)
    with pytest.raises(AuthenticationError):
        authenticator.authenticate(authorization=None, certificate=certificate, peer="h:1")
    with pytest.raises(AuthenticationError):
        authenticator.authenticate(authorization=f"Bearer {TOKEN_A}", certificate=None, peer="h:1")
    other = PeerCertificate(subject="CN=intruder", sans=(), sha256=bytes(32))
    with pytest.raises(ClientNotAllowedError):
        authenticator.authenticate(authorization=f"Bearer {TOKEN_A}", certificate=other, peer="h:1")


@pytest.mark.parametrize(
    ("mode", "content", "message"),
    [
        (0o644, TOKEN_A, "chmod 600"),
        (0o640, TOKEN_A, "chmod 600"),
        (0o600, "", "is empty"),
        (0o600, "short", "5 characters"),
        (0o600, "has a space in the middle", "printable ASCII"),
    ],
)
def test_bad_token_files_stop_start_up_naming_the_file(tmp_path: Path, mode: int, content: str, message: str) -> None:
    path = _token_file(tmp_path, "token", content, mode)
    with pytest.raises(ConfigurationError, match=message) as caught:
        TokenStore([TokenFile("x", path)])
    assert caught.value.setting == "auth.tokens[0].file"
    assert str(path) in caught.value.problem


def test_missing_token_file_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        TokenStore([TokenFile("x", tmp_path / "absent")])
    a = _token_file(tmp_path, "a", TOKEN_A)
    b = _token_file(tmp_path, "b", TOKEN_A)
    with pytest.raises(ConfigurationError, match="same token"):
        TokenStore([TokenFile("x", a), TokenFile("y", b)])
    with pytest.raises(ConfigurationError, match="listed once"):
        TokenStore([TokenFile("x", a), TokenFile("x", tmp_path / "c")])


def test_a_rotated_token_file_is_read_again_after_the_check_interval(tmp_path: Path) -> None:
    clock = Clock()
    path = _token_file(tmp_path, "token", TOKEN_A)
    authenticator = Authenticator(TokenStore([TokenFile("prod", path)], check_interval=1.0, clock=clock))

    def name_for(token: str) -> str | None:
        try:
            return authenticator.authenticate(authorization=f"Bearer {token}", certificate=None, peer="p").token_name
        except AuthenticationError:
            return None

    assert name_for(TOKEN_A) == "prod"
    replacement = tmp_path / "token.new"
    _token_file(tmp_path, "token.new", TOKEN_B)
    os.replace(replacement, path)
    clock.now = 0.5
    assert name_for(TOKEN_B) is None  # not looked at yet
    clock.now = 1.0
    assert name_for(TOKEN_B) == "prod"
    assert name_for(TOKEN_A) is None


def test_a_broken_rotation_keeps_the_previous_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    path = _token_file(tmp_path, "token", TOKEN_A)
    store = TokenStore([TokenFile("prod", path)], check_interval=1.0, clock=clock)
    authenticator = Authenticator(store)
    path.chmod(0o644)
    path.write_text(TOKEN_B)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 4):
            clock.now = float(step)
            sender = authenticator.authenticate(authorization=f"Bearer {TOKEN_A}", certificate=None, peer="p")
            assert sender.token_name == "prod"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "chmod 600" in warnings[0].__dict__["problem"]
    assert all(TOKEN_B not in r.getMessage() and TOKEN_B not in str(r.__dict__) for r in caplog.records)
    path.chmod(0o600)
    clock.now = 10.0
    assert (
        authenticator.authenticate(authorization=f"Bearer {TOKEN_B}", certificate=None, peer="p").token_name == "prod"
    )


def test_a_sender_that_cannot_be_sealed_is_refused_not_crashed() -> None:
    huge = PeerCertificate(subject="CN=" + "x" * 5000, sans=(), sha256=bytes(32))
    with pytest.raises(AuthenticationError, match="cannot be recorded as a sender"):
        Authenticator().authenticate(authorization=None, certificate=huge, peer="127.0.0.1:1")
