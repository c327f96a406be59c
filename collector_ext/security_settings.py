"""The effective security settings of a configuration, and which of them are unsafe.

Pure: takes a ``SidecarConfig`` and returns plain data. The composition root logs the summary once at
start-up (one JSON line an operator or a scanner can read), warns about each unsafe setting and sets
the ``collector_ext_insecure_setting`` gauge. Reading files (keys, certificates) is
``startup_checks``'s job, not this module's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from collector_ext.config import SidecarConfig, TlsConfig, TokenConfig

# Every setting the insecure-setting gauge reports on, so each has a series (0 or 1) from the start.
WATCHED_SETTINGS = ("archive.retention_mode", "listen", "http_listen", "metrics_listen")


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket the sidecar listens on, and what protects it."""

    setting: str
    address: str
    tls: bool
    client_certificates: bool
    tokens: bool

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def authenticated(self) -> bool:
        return self.client_certificates or self.tokens


@dataclass(frozen=True, slots=True)
class InsecureSetting:
    """A setting that leaves the evidence or the sidecar exposed; ``reason`` says how."""

    setting: str
    reason: str


def is_loopback(address: str) -> bool:
    """True when ``HOST:PORT`` binds only the loopback interface. A host name other than localhost
    counts as not loopback: what it resolves to is not known here."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listeners(config: SidecarConfig) -> list[Listener]:
    """The listeners a configuration opens (OTLP/gRPC, OTLP/HTTP, metrics)."""
    tls = config.tls is not None
    mtls = config.tls is not None and config.tls.client_ca_file is not None
    tokens = bool(config.auth.tokens)
    found = [Listener("listen", config.listen, tls, mtls, tokens)]
    if config.http_listen:
        found.append(Listener("http_listen", config.http_listen, tls, mtls, tokens))
    if config.metrics_listen:
        metrics_tls = config.metrics_tls
        found.append(
            Listener(
                "metrics_listen",
                config.metrics_listen,
                metrics_tls is not None,
                metrics_tls is not None and metrics_tls.client_ca_file is not None,
                bool(config.auth.metrics_tokens),
            )
        )
    return found


def signing_key_source(config: SidecarConfig) -> str:
    """Where the signing key lives: a key file, or a PKCS#11 token (and how it signs)."""
    token = config.signing_token
    if token is not None:
        return f"pkcs11 token {token.token_label!r}, key {token.key_label!r}, mode {token.mode}"
    return f"file {config.signing_key}"


def effective_ack(config: SidecarConfig) -> str:
    """``ack`` as the pipeline applies it: without a spool, Export succeeds only once archived."""
    return config.ack if config.spool is not None else "archive"


def insecure_settings(config: SidecarConfig) -> list[InsecureSetting]:
    """The unsafe settings of ``config``: retention NONE (objects can be deleted or overwritten), and
    a listener on a non-loopback address without TLS or without client authentication."""
    found = []
    if config.archive.retention_mode == "NONE":
        origins = config.origins("archive.retention_mode")
        reason = "archive objects are written without Object Lock retention and can be deleted or overwritten"
        if origins:
            reason += f"; set by {origins[-1].describe()}"
            if len(origins) > 1:
                reason += f", overriding {origins[-2].describe()}"
        found.append(InsecureSetting("archive.retention_mode", reason))
    for listener in listeners(config):
        if listener.loopback:
            continue
        missing = [
            what
            for what, present in (("TLS", listener.tls), ("client authentication", listener.authenticated))
            if not present
        ]
        if missing:
            found.append(
                InsecureSetting(
                    listener.setting,
                    f"listens on {listener.address}, not a loopback address, without {' and without '.join(missing)}",
                )
            )
    return found


def _client_auth(tls: TlsConfig | None, tokens: tuple[TokenConfig, ...]) -> dict[str, Any]:
    return {
        "mtls": tls is not None and tls.client_ca_file is not None,
        "client_ca_file": str(tls.client_ca_file) if tls is not None and tls.client_ca_file else None,
        "allowed_clients": len(tls.allowed_clients) if tls is not None else 0,
        "tokens": len(tokens),
        "token_names": [token.name for token in tokens],
    }


def security_summary(config: SidecarConfig, *, key_id: str) -> dict[str, Any]:
    """The effective security settings as one JSON-ready mapping (names of secrets, never values)."""
    retention_origins = config.origins("archive.retention_mode")
    return {
        "listeners": [
            {
                "setting": listener.setting,
                "address": listener.address,
                "loopback": listener.loopback,
                "tls": listener.tls,
                "client_certificates": listener.client_certificates,
                "tokens": listener.tokens,
            }
            for listener in listeners(config)
        ],
        "client_auth": _client_auth(config.tls, config.auth.tokens),
        "metrics_client_auth": _client_auth(config.metrics_tls, config.auth.metrics_tokens),
        "archive": config.archive.archive_id,
        "retention_mode": config.archive.retention_mode,
        "retention_days": config.archive.retention_days if config.archive.retention_mode != "NONE" else None,
        "retention_mode_source": retention_origins[-1].describe() if retention_origins else "default",
        "ack": effective_ack(config),
        "spool": str(config.spool.directory) if config.spool is not None else None,
        "signing_key_source": signing_key_source(config),
        "key_id": key_id,
        "previous_signing_keys": len(config.previous_signing_keys),
        "loki": _without_credentials(config.loki.url) if config.loki is not None else None,
        "insecure_settings": [item.setting for item in insecure_settings(config)],
    }


def _without_credentials(url: str) -> str:
    """scheme://host[:port]/path of a URL, without any user name or password it carries."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
