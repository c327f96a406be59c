"""TLS material for the listeners, re-read when its files change, so certificates rotate without a restart.

``ReloadingTls`` reads a listener's certificate chain, private key and client CA, and gives both
servers a view that looks at the files again on new handshakes (at most once per ``check_interval``):

- gRPC: ``grpc.dynamic_ssl_server_credentials`` with a fetcher that answers a new certificate
  configuration when the files changed, and None (keep the current one) otherwise;
- aiohttp (OTLP/HTTP and /metrics): an ``ssl.SSLContext`` whose ``sni_callback`` (run for every
  ClientHello, with or without SNI) switches the connection to a context built from the new files.

Connections already open keep the certificate they were made with. A rotation caught half-way (a new
certificate beside the old key, a file being written, an expired certificate) is not taken: the
previous material stays in use and a warning names the file; the next change is tried again. At
start-up the same problems stop the sidecar (``ConfigurationError`` naming the setting).

This module does not decide who may connect beyond "has a certificate from the client CA"; the
allow-list is ``receive.auth``'s.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector_ext.errors import ConfigurationError

log = logging.getLogger(__name__)

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a listener's TLS material lives; ``setting`` names the config section in errors."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    setting: str = "tls"


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The bytes of one consistent read of the files."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    not_after: dt.datetime


def check_material(
    cert_chain: bytes, private_key: bytes, client_ca: bytes | None, files: TlsFiles, now: dt.datetime
) -> TlsMaterial:
    """Parse and cross-check what was read: a certificate valid now, the key of that certificate,
    a client CA that holds certificates. Pure.

    Raises:
        ConfigurationError: naming the setting and the file at fault.
    """
    setting = files.setting
    try:
        chain = x509.load_pem_x509_certificates(cert_chain)
    except ValueError as exc:
        raise ConfigurationError(f"{setting}.cert_file", f"{files.cert_file} holds no PEM certificate") from exc
    leaf = chain[0]
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ConfigurationError(
            f"{setting}.cert_file",
            f"{files.cert_file} is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{setting}.key_file", f"{files.key_file} holds no unencrypted PEM private key"
        ) from exc
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise ConfigurationError(
            f"{setting}.key_file", f"{files.key_file} is not the key of the certificate in {files.cert_file}"
        )
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError as exc:
            raise ConfigurationError(
                f"{setting}.client_ca_file", f"{files.client_ca_file} holds no PEM certificate"
            ) from exc
    return TlsMaterial(cert_chain, private_key, client_ca, leaf.not_valid_after_utc)


def _identity(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


class ReloadingTls:
    """One listener's TLS material, read now and again when its files change."""

    def __init__(
        self,
        files: TlsFiles,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.files = files
        self._check_interval = check_interval
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._paths = [p for p in (files.cert_file, files.key_file, files.client_ca_file) if p is not None]
        self._identities = self._read_identities()
        self.material = self._read()
        self._context = self._build_context(self.material)
        self._next_check = clock() + check_interval
        self._served_by_grpc: TlsMaterial | None = self.material
        self.reloads = 0

    # --- reading ------------------------------------------------------------------------------------

    def _read_identities(self) -> list[tuple[int, int, int] | None]:
        identities: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                identities.append(_identity(path))
            except OSError:
                identities.append(None)
        return identities

    def _read(self) -> TlsMaterial:
        files = self.files

        def read(path: Path, field: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"{files.setting}.{field}", f"cannot read {path}: {exc.strerror}") from exc

        cert = read(files.cert_file, "cert_file")
        key = read(files.key_file, "key_file")
        ca = read(files.client_ca_file, "client_ca_file") if files.client_ca_file is not None else None
        return check_material(cert, key, ca, files, self._now())

    def _build_context(self, material: TlsMaterial) -> ssl.SSLContext:
        """A server context for the material just checked; its ``sni_callback`` keeps it current."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            # ssl loads a chain only from files; load the ones just checked. A rotation between the read
            # and this load is caught by the key check of the next reload.
            context.load_cert_chain(self.files.cert_file, self.files.key_file)
            if material.client_ca is not None:
                context.load_verify_locations(cadata=material.client_ca.decode("ascii", errors="replace"))
                context.verify_mode = ssl.CERT_REQUIRED
        except ssl.SSLError as exc:
            raise ConfigurationError(
                self.files.setting, f"cannot use the certificate, key or client CA: {exc.reason}"
            ) from exc
        except OSError as exc:
            raise ConfigurationError(self.files.setting, f"cannot read {exc.filename}: {exc.strerror}") from exc
        context.sni_callback = self._on_client_hello
        return context

    def refresh(self) -> bool:
        """Re-read the files if their identity changed since the last look and the check interval
        passed; True when new material was taken. Never raises: a bad rotation is logged and skipped."""
        now = self._clock()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return False
        try:
            self._next_check = now + self._check_interval
            identities = self._read_identities()
            if identities == self._identities:
                return False
            self._identities = identities
            try:
                material = self._read()
                context = self._build_context(material)
            except ConfigurationError as exc:
                log.warning(
                    "changed TLS files not taken; the previous certificate stays in use",
                    extra={"setting": exc.setting, "problem": exc.problem},
                )
                return False
            self.material, self._context = material, context
            self.reloads += 1
            log.info(
                "TLS files re-read",
                extra={"setting": self.files.setting, "not_after": material.not_after.isoformat()},
            )
            return True
        finally:
            self._lock.release()

    # --- aiohttp ------------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """The context to give the server: it switches each new connection to the newest material."""
        return self._context

    def _on_client_hello(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        self.refresh()
        current = self._context
        if connection.context is not current:
            connection.context = current

    # --- gRPC ---------------------------------------------------------------------------------------

    def _grpc_configuration(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
        )

    def _fetch_for_grpc(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC on its own threads before each handshake; None keeps the current configuration.
        self.refresh()
        material = self.material
        if material is self._served_by_grpc:
            return None
        self._served_by_grpc = material
        return self._grpc_configuration(material)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self.material),
            self._fetch_for_grpc,
            require_client_authentication=self.material.client_ca is not None,
        )
