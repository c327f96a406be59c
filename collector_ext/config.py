"""The sidecar's configuration: one YAML file, environment overrides, validated at start-up.

Precedence, lowest first: built-in defaults, the YAML file (``--config``), environment variables
``COLLECTOR_EXT_<SECTION>__<FIELD>`` (e.g. ``COLLECTOR_EXT_ARCHIVE__URL``; top-level fields as
``COLLECTOR_EXT_LISTEN``), then command-line flags. This module is the only place that reads the
environment for configuration (AWS settings are left to the AWS SDK's own conventions).

Every validation error names the setting in dotted form, so a bad value stops start-up with a
message an operator can act on.
"""

from __future__ import annotations

import os
import socket
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from collector_ext.deliver.loki.mapping import DEFAULT_LABEL_ATTRIBUTES
from collector_ext.errors import ConfigurationError
from collector_ext.receive.auth import normalize_allowed_client, valid_token_name

ENV_PREFIX = "COLLECTOR_EXT_"
DEFAULT_LISTEN = "127.0.0.1:14317"
DEFAULT_METRICS_LISTEN = "127.0.0.1:19464"
DEFAULT_HTTP_LISTEN = "127.0.0.1:14318"
# The collector's own batches can exceed grpc's 4 MiB default; 16 MiB leaves room for the largest
# batches we document (4096 records) while one request of that size, decoded, fits the default
# limits.max_inflight_bytes.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SettingOrigin:
    """Where one value of a setting came from: ``source`` is "config file" (``detail``: its path),
    "environment" (``detail``: the variable's name) or "command line"."""

    source: Literal["config file", "environment", "command line"]
    detail: str = ""

    def describe(self) -> str:
        if self.source == "environment":
            return f"environment variable {self.detail}"
        if self.source == "config file":
            return f"the config file {self.detail}"
        return "the command line"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def archive_id_for(url: str) -> str:
    """The archive name a writer records by default, and a verifier expects for an S3 URL."""
    if url.startswith("s3://"):
        return "s3://" + url[len("s3://") :].strip("/")
    return url.rstrip("/") or url


def archive_url_problem(url: str) -> str | None:
    """What makes ``url`` unsafe as an archive location, or None.

    The prefix of an S3 URL, or a directory path, becomes part of every object key or file name: a
    ``..`` or ``.`` segment, an empty segment (``a//b``), a backslash or a control character would
    make a key another tool resolves or displays differently from the one the sidecar wrote (``aws s3
    sync`` into a directory, a verifier given the same URL). One trailing slash is allowed.
    """
    if any(unicodedata.category(char) == "Cc" for char in url):
        return "contains a control character; write the URL without it"
    if "\\" in url:
        return "contains a backslash; separate the prefix's parts with /"
    is_s3 = url.startswith("s3://")
    rest = url[len("s3://") :].partition("/")[2] if is_s3 else url.removeprefix("/")
    rest = rest.removesuffix("/")
    if not rest:
        return None
    what = "prefix" if is_s3 else "path"
    for part in rest.split("/"):
        if part == "":
            return f"the {what} has an empty part (//); write it without"
        if part == "..":
            return f"the {what} must not contain '..'; name the location directly"
        if part == "." and is_s3:
            return "the prefix must not contain '.' parts; name the location directly"
    return None


class ArchiveConfig(_Section):
    url: str = Field(description="s3://bucket/prefix, or a directory path")
    retention_mode: Literal["GOVERNANCE", "COMPLIANCE", "NONE"] = "GOVERNANCE"
    retention_days: int = Field(default=365, ge=1, le=36500)
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; else AWS_ENDPOINT_URL")
    region: str | None = None
    # The name every new chain's genesis gives its archive, so a chain copied into another archive is
    # caught (`verify --archive-id`). Default: the URL, s3://bucket/prefix without a trailing slash.
    id: str | None = Field(default=None, min_length=1, max_length=1024)

    @property
    def archive_id(self) -> str:
        if self.id is not None:
            return self.id
        return archive_id_for(self.url)

    @field_validator("url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be s3://bucket[/prefix] or a directory path")
        if value.startswith("s3://") and not value[len("s3://") :].split("/", 1)[0]:
            raise ValueError("an s3:// URL needs a bucket name, e.g. s3://audit-bucket/prod")
        problem = archive_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class SegmentConfig(_Section):
    # At most 200,000: a segment object holds at most 262,144 records (proto/FORMAT.md 4.1).
    max_records: int = Field(default=20_000, ge=1, le=200_000)
    # At most 32 MiB; a segment object never passes the 64 MiB a verifier reads of one object
    # (proto/FORMAT.md 4.1): the pipeline closes a segment early rather than let a batch push it past.
    max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    max_linger_ms: float = Field(default=15.0, ge=0, le=60_000)
    upload_concurrency: int = Field(default=2, ge=1, le=64)


class SpoolConfig(_Section):
    directory: Path = Field(description="a directory on a persistent volume, used by this sidecar only")
    max_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="refuse new records (UNAVAILABLE) while the spool holds this much",
    )


class SigningTokenConfig(_Section):
    """The signing key in a PKCS#11 token instead of a key file (proto/FORMAT.md 7.7)."""

    module: Path = Field(description="the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
    token_label: str = Field(min_length=1, max_length=32, description="CKA_LABEL of the token (its slot's label)")
    key_label: str = Field(min_length=1, max_length=256, description="CKA_LABEL of the Ed25519 key pair")
    pin_file: Path = Field(description="file holding the user PIN (mode 0600 or 0400); never pass the PIN itself")
    mode: Literal["run_key", "per_record"] = Field(
        default="run_key",
        description="run_key: the token certifies a fresh in-memory key per run, which signs the records; "
        "per_record: the token signs every record (as fast as the token signs)",
    )


class TlsConfig(_Section):
    """A listener's certificate, key and client CA; re-read when the files change (no restart)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(default=None, description="require client certificates signed by this CA")
    allowed_clients: tuple[str, ...] = Field(
        default=(),
        max_length=1024,
        description="verified clients that may submit: subject:<RFC 4514 name>, DNS:, URI: (SPIFFE id), IP:, "
        "email:; empty: any certificate from client_ca_file",
    )

    @field_validator("allowed_clients")
    @classmethod
    def _allowed_clients_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            normalize_allowed_client(entry)
        return value

    @model_validator(mode="after")
    def _allow_list_needs_client_ca(self) -> TlsConfig:
        if self.allowed_clients and self.client_ca_file is None:
            raise ValueError("allowed_clients needs client_ca_file: only verified certificates can be allowed")
        return self


class TokenConfig(_Section):
    name: str = Field(description="what the seal records as the sender (never the token)")
    file: Path = Field(description="file holding the token (mode 0600 or 0400); re-read when it changes")

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        return valid_token_name(value)


class AuthConfig(_Section):
    """Bearer tokens. With ``tokens``, every OTLP request must carry one of them; with
    ``metrics_tokens``, every scrape of /metrics must. Several are allowed at once, for rotation."""

    tokens: tuple[TokenConfig, ...] = Field(default=(), max_length=64)
    metrics_tokens: tuple[TokenConfig, ...] = Field(default=(), max_length=64)

    @field_validator("tokens", "metrics_tokens")
    @classmethod
    def _distinct(cls, value: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        if len({token.name for token in value}) != len(value):
            raise ValueError("each token name may be listed once")
        return value


class LimitsConfig(_Section):
    """What hostile or broken clients may hold of the sidecar (both receivers together).

    The defaults keep the sidecar's resident memory under 300 MiB however hard it is pushed."""

    max_inflight_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=8 * 1024 * 1024,
        le=16 * 1024 * 1024 * 1024,
        description="memory budget of all requests in flight: bytes received, inflated and being decoded; "
        "beyond it requests get UNAVAILABLE / 503 and are retried",
    )
    max_concurrent_requests: int = Field(default=64, ge=1, le=10_000, description="requests in flight, both receivers")
    max_connections: int = Field(
        default=256,
        ge=8,
        le=100_000,
        description="connections per receiver; lowered at start to stay below the open-file limit",
    )
    idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="an OTLP/HTTP connection without a complete request head (idle, or headers sent slowly), "
        "or a gRPC connection without a finished handshake or without calls, is closed after this",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a request's whole body (gRPC: its message) must arrive within this (the collector's own "
        "exporter timeout is 5 s)",
    )
    # Requests past these are refused whole (INVALID_ARGUMENT / 400 naming the limit), never trimmed.
    max_attributes: int = Field(
        default=1024, ge=1, le=1 << 20, description="top-level attributes of one log record, resource or scope"
    )
    max_attributes_per_request: int = Field(
        default=1 << 20,
        ge=1,
        le=1 << 26,
        description="key/value pairs and array elements at every depth, across one request",
    )
    max_value_depth: int = Field(
        default=16,
        ge=1,
        le=30,
        description="levels of nested values: a body or attribute value is level 1, "
        "the entries of a kvlist or array one level more",
    )


class CheckpointConfig(_Section):
    """Outside evidence for every checkpoint note: an RFC 3161 time-stamp token (proto/FORMAT.md 19.3)."""

    tsa_url: str | None = Field(
        default=None,
        description="time-stamping authority (RFC 3161 over HTTP); each checkpoint note's token is stored beside "
        "it, requested off the acknowledgement path",
    )
    tsa_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    merkle_tree: bool = Field(
        default=True,
        description="hash tiles and a signed note per checkpoint (proto/FORMAT.md 16), which prove one record on "
        "its own and which witnesses and time stamps vouch for; false only to measure what the tree costs",
    )

    @field_validator("tsa_url")
    @classmethod
    def _tsa_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of an RFC 3161 time-stamping authority")
        return value


class WitnessConfig(_Section):
    """A C2SP tlog-witness the sidecar submits each checkpoint note to (proto/FORMAT.md 19.2)."""

    url: str = Field(description="the witness's submission prefix; /add-checkpoint is appended")
    key: str = Field(description="the witness's cosigning verifier key: <name>+<hint hex>+<base64(0x04 || key)>")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @property
    def name(self) -> str:
        return self.key.split("+", 1)[0]

    @field_validator("url")
    @classmethod
    def _witness_http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://witness.example/tlog")
        return value.rstrip("/")

    @field_validator("key")
    @classmethod
    def _cosigner_key(cls, value: str) -> str:
        from collector_ext.witness.vkey import WitnessKeyError, parse_witness_vkey

        try:
            parse_witness_vkey(value)
        except WitnessKeyError as exc:
            raise ValueError(f"not a witness verifier key: {exc}") from exc
        return value.strip()


class LokiConfig(_Section):
    url: str = Field(description="Loki base URL, e.g. http://loki:3100")
    tenant: str | None = Field(default=None, description="X-Scope-OrgID")
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    bearer_token: str | None = Field(default=None, repr=False)
    ca_file: Path | None = None
    label_attributes: tuple[str, ...] = DEFAULT_LABEL_ATTRIBUTES
    seal_in_line: bool = Field(default=False, description="Loki 2.9: the seal in a JSON line, no structured metadata")
    json_body: bool = Field(default=False, description="push JSON instead of snappy protobuf")
    batch_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    batch_max_wait_seconds: float = Field(default=1.0, ge=0, le=60)
    max_queue_records: int = Field(default=500_000, ge=1000)
    max_queue_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="entry bytes the Loki process holds in memory; the rest waits on disk (spool or temporary file)",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://loki:3100")
        return value.rstrip("/")

    @field_validator("label_attributes")
    @classmethod
    def _distinct_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # More may be listed than Loki's 15 labels per stream: only those a resource has become
        # labels, the first 15 of them in this order.
        if any(not name.strip() for name in value):
            raise ValueError("attribute names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("each attribute may be listed once")
        return value


class SidecarConfig(_Section):
    listen: str = DEFAULT_LISTEN
    http_listen: str | None = Field(
        default=DEFAULT_HTTP_LISTEN, description="HOST:PORT for OTLP/HTTP POST /v1/logs; null disables"
    )
    metrics_listen: str | None = Field(
        default=DEFAULT_METRICS_LISTEN, description="HOST:PORT for GET /metrics (Prometheus); null disables"
    )
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024, le=1024 * 1024 * 1024)
    signing_key: Path | None = Field(default=None, description="PEM private key file; or set signing_token")
    signing_token: SigningTokenConfig | None = None
    # Keys this sidecar signed with before signing_key: a chain in the spool signed by one of them is
    # continued after a key rotation entry that it signs (proto/FORMAT.md 7.6), and the chain a lost
    # spool supersedes is found among theirs too.
    previous_signing_keys: list[Path] = Field(default_factory=list, max_length=16)
    archive: ArchiveConfig
    segment: SegmentConfig = SegmentConfig()
    tls: TlsConfig | None = None
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics_tls: TlsConfig | None = Field(
        default=None, description="HTTPS (and client certificates) for /metrics; may name the same files as tls"
    )
    loki: LokiConfig | None = None
    checkpoint: CheckpointConfig = CheckpointConfig()
    witnesses: tuple[WitnessConfig, ...] = Field(
        default=(), max_length=32, description="tlog-witnesses that cosign every checkpoint note, off the ack path"
    )
    spool: SpoolConfig | None = None
    ack: Literal["spool", "archive"] = Field(
        default="spool",
        description="when Export succeeds: once fsynced to the spool, or once stored in the archive "
        "(forced when no spool is set)",
    )
    writer_id: str = Field(
        default_factory=lambda: os.environ.get("HOSTNAME") or socket.gethostname(),
        min_length=1,
        max_length=253,
        description="stable name of this writer (the pod name); a writer without local state supersedes "
        "the newest chain of the same writer_id",
    )
    checkpoint_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    checkpoint_min_spacing_seconds: float = Field(
        default=1.0, ge=0, le=60, description="at most one checkpoint per this many seconds after uploads"
    )
    ack_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    max_pending_records: int = Field(default=200_000, ge=1000)
    max_pending_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024 * 1024, description="sealed bytes held in memory before they are durable"
    )
    signing_workers: Literal["processes", "threads"] = "processes"
    signing_worker_count: int = Field(default=0, ge=0, le=64, description="0: one per CPU")
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=0, le=600, description="on SIGTERM: time for in-flight requests to finish"
    )
    drain_timeout_seconds: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="on SIGTERM, after the requests: time to archive what is spooled (the rest stays in the spool)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Where each setting's value came from; load_config fills it (empty for a config built in code).
    _origins: dict[str, tuple[SettingOrigin, ...]] = PrivateAttr(default_factory=dict)

    def origins(self, setting: str) -> tuple[SettingOrigin, ...]:
        """Every source that gave ``setting`` (dotted, e.g. ``archive.retention_mode``) a value, lowest
        precedence first; empty when it has its default."""
        return self._origins.get(setting, ())

    @model_validator(mode="after")
    def _one_signing_key(self) -> SidecarConfig:
        # A check across two settings has no location of its own; the error type carries the setting
        # load_config names (_CROSS_FIELD_SETTINGS).
        if self.signing_key is None and self.signing_token is None:
            raise PydanticCustomError(
                "signing_key_missing",
                "is required: the Ed25519 private key file (collector-ext keygen writes one), or instead "
                "signing_token for a key in a PKCS#11 token; set exactly one of signing_key and signing_token",
            )
        if self.signing_key is not None and self.signing_token is not None:
            raise PydanticCustomError(
                "signing_key_and_token", "signing_key and signing_token are both set; keep one of them"
            )
        return self

    @field_validator("witnesses")
    @classmethod
    def _distinct_witnesses(cls, value: tuple[WitnessConfig, ...]) -> tuple[WitnessConfig, ...]:
        if len({witness.name for witness in value}) != len(value):
            raise ValueError("each witness (the name in its key) may be listed once")
        return value

    @field_validator("listen", "http_listen", "metrics_listen")
    @classmethod
    def _listen_has_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:14317")
        if int(port) in (4317, 4318, 13133):
            raise ValueError(f"port {port} is the collector's own port in the same pod; pick another")
        return value


# The setting named by the errors of checks across settings (model validators), by error type.
_CROSS_FIELD_SETTINGS = {"signing_key_missing": "signing_key", "signing_key_and_token": "signing_key"}


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[path[-1]] = value


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
            _set_path(overrides, path, value)
    return overrides


def _without_unset(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values (flags not given) and sections left empty by that."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _without_unset(value)
            if not value:
                continue
        if value is not None:
            kept[key] = value
    return kept


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in _without_unset(extra).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SidecarConfig:
    """Build the configuration from a YAML file, the environment and command-line overrides.

    Raises:
        ConfigurationError: unreadable file, bad YAML, or an invalid setting (named in the error).
    """
    data: dict[str, Any] = {}
    environ = os.environ if environ is None else environ
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigurationError("--config", f"{path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigurationError("--config", f"{path} must hold a mapping of settings")
        data = loaded or {}
    origins = _setting_origins(data, path, environ, overrides or {})
    data = _merge(data, _environment_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        config = SidecarConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        setting = ".".join(str(part) for part in error["loc"]) or _CROSS_FIELD_SETTINGS.get(error["type"], "config")
        problem = error["msg"]
        if error["type"] == "missing":
            problem = "is required (set it in the config file, the environment or a flag)"
        elif error["type"] == "extra_forbidden":
            problem = "is not a known setting"
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise ConfigurationError(setting, f"{problem}{more}") from exc
    config._origins = origins
    return config


def _leaf_settings(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield from _leaf_settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _setting_origins(
    file_data: Mapping[str, Any], path: Path | None, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> dict[str, tuple[SettingOrigin, ...]]:
    """Every source that gave each setting (dotted name) a value, lowest precedence first."""
    origins: dict[str, list[SettingOrigin]] = {}
    for setting in _leaf_settings(file_data):
        origins.setdefault(setting, []).append(SettingOrigin("config file", str(path)))
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            setting = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            origins.setdefault(setting, []).append(SettingOrigin("environment", name))
    for setting in _leaf_settings(flags):
        origins.setdefault(setting, []).append(SettingOrigin("command line"))
    return {setting: tuple(found) for setting, found in origins.items()}
