"""Start-up checks of the files a configuration names: private keys and certificates.

A file holding a secret (signing_key, previous_signing_keys, tls.key_file, metrics_tls.key_file,
auth token files, signing_token.pin_file) must be owned by the user the sidecar runs as and be
unreadable by its group and by others, as ssh requires of a private key. A
certificate must be valid now (not expired, not yet valid) and a server certificate must belong to its
key. Each refusal is a ``ConfigurationError`` naming the setting and the file, with the fix.

The decisions (``key_file_problem``, ``certificate_problem``) are pure functions of the file's
status or bytes and the time; ``check_*`` read the files. Files are read here and again where they
are used (gRPC and ssl take paths or bytes of their own): a check cannot vouch for a file changed in
between, only for the configuration at start-up.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from collector_ext.config import SidecarConfig
from collector_ext.errors import ConfigurationError, KeyFileError

# Kubernetes secret volumes with an fsGroup give files group read (0440) owned by root; the deploy
# copies the key into a memory volume owned by the sidecar's user instead (deploy/README.md, step 3).
_KUBERNETES_HINT = "on Kubernetes: deploy/README.md, step 3, on Secret volumes"


def key_file_problem(path: Path, mode: int, owner: int, user: int) -> str | None:
    """Why a private key file with this mode and owner must not be used by ``user``, or None."""
    if owner != user:
        return (
            f"{path} is owned by uid {owner}, not by uid {user} that the sidecar runs as; "
            f"give it to that user (chown {user} {path}) or run the sidecar as its owner ({_KUBERNETES_HINT})"
        )
    if mode & 0o077:
        return (
            f"{path} has mode {stat.S_IMODE(mode):04o}: a key or other secret must be readable by its owner only; "
            f"chmod 600 {path} ({_KUBERNETES_HINT})"
        )
    return None


def check_private_key_file(path: Path, setting: str, *, user: int | None = None) -> None:
    """Refuse a private key (or other secret) file readable by group or others, or owned by another
    user.

    Raises:
        KeyFileError: the file cannot be found or read, or its mode or owner is unsafe.
    """
    try:
        status = os.stat(path)  # follows links: a Kubernetes secret mount is a link to the file
    except OSError as exc:
        raise KeyFileError(setting, f"cannot read {path}: {exc.strerror}") from exc
    problem = key_file_problem(path, status.st_mode, status.st_uid, os.geteuid() if user is None else user)
    if problem is not None:
        raise KeyFileError(setting, problem)


def secret_files(config: SidecarConfig) -> list[tuple[str, Path]]:
    """(setting, path) of every file holding a secret the configuration names: private keys, bearer
    tokens, the signing token's PIN."""
    files = [] if config.signing_key is None else [("signing_key", config.signing_key)]
    files.extend((f"previous_signing_keys[{index}]", path) for index, path in enumerate(config.previous_signing_keys))
    for setting, tls in (("tls", config.tls), ("metrics_tls", config.metrics_tls)):
        if tls is not None:
            files.append((f"{setting}.key_file", tls.key_file))
    for setting, tokens in (("auth.tokens", config.auth.tokens), ("auth.metrics_tokens", config.auth.metrics_tokens)):
        files.extend((f"{setting}[{index}].file", token.file) for index, token in enumerate(tokens))
    if config.signing_token is not None:
        files.append(("signing_token.pin_file", config.signing_token.pin_file))
    return files


def certificate_problem(certificate: x509.Certificate, now: datetime.datetime) -> str | None:
    """Why ``certificate`` is not valid at ``now`` (timezone-aware), or None."""
    subject = certificate.subject.rfc4514_string() or "(empty subject)"
    if now > certificate.not_valid_after_utc:
        return f"the certificate {subject} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if now < certificate.not_valid_before_utc:
        return (
            f"the certificate {subject} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC (check the clock, or wait)"
        )
    return None


def read_certificates(path: Path, setting: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file.

    Raises:
        ConfigurationError: unreadable, or no PEM certificate in it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigurationError(setting, f"{path} holds no PEM certificate (or a damaged one)") from exc


def check_certificate_file(path: Path, setting: str, now: datetime.datetime) -> list[x509.Certificate]:
    """Refuse a certificate file any of whose certificates is expired or not yet valid; returns them.

    Raises:
        ConfigurationError: naming ``setting`` and ``path``.
    """
    certificates = read_certificates(path, setting)
    for certificate in certificates:
        problem = certificate_problem(certificate, now)
        if problem is not None:
            raise ConfigurationError(setting, f"{path}: {problem}; renew it")
    return certificates


def check_key_matches_certificate(
    certificate: x509.Certificate, key_path: Path, key_setting: str, certificate_path: Path
) -> None:
    """Refuse a private key that is not the key of ``certificate``.

    Raises:
        ConfigurationError: naming ``key_setting`` and both files. The key never appears in it.
    """
    try:
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigurationError(key_setting, f"cannot read {key_path}: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Not chained: the library's message might quote the file.
        raise ConfigurationError(
            key_setting, f"{key_path} is not an unencrypted PEM private key (an encrypted key cannot be used)"
        ) from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ConfigurationError(
            key_setting,
            f"{key_path} is not the key of the certificate in {certificate_path}; use the pair issued together",
        )


def check_certificates(config: SidecarConfig, now: datetime.datetime | None = None) -> None:
    """Every certificate and key pair the configuration names: the server certificate (valid now,
    and its chain), its key, the client CA, Loki's CA.

    Raises:
        ConfigurationError: naming the setting and the file.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    for setting, tls in (("tls", config.tls), ("metrics_tls", config.metrics_tls)):
        if tls is None:
            continue
        chain = check_certificate_file(tls.cert_file, f"{setting}.cert_file", now)
        check_key_matches_certificate(chain[0], tls.key_file, f"{setting}.key_file", tls.cert_file)
        if tls.client_ca_file is not None:
            check_certificate_file(tls.client_ca_file, f"{setting}.client_ca_file", now)
    if config.loki is not None and config.loki.ca_file is not None:
        check_certificate_file(config.loki.ca_file, "loki.ca_file", now)


def check_private_keys(files: Iterable[tuple[str, Path]], *, user: int | None = None) -> None:
    """``check_private_key_file`` for each (setting, path)."""
    for setting, path in files:
        check_private_key_file(path, setting, user=user)


def check_configuration_files(config: SidecarConfig, now: datetime.datetime | None = None) -> None:
    """Every start-up check of files: private keys' owners and modes, then certificates.

    Raises:
        ConfigurationError: the first problem, naming the setting and the file.
    """
    check_private_keys(secret_files(config))
    check_certificates(config, now)
