"""How a sealed entry becomes a Loki entry: labels, line, timestamp, structured metadata, the seal.

The mapping follows Loki's own OTLP ingestion (reference: loki-push-contract.md section 7), so users
see the same streams whichever way their logs reach Loki:

- index labels: the configured resource attributes (Loki's default list), names sanitised the way
  Loki does (runs of characters other than ASCII letters and digits become one ``_``), at most 15;
  ``service_name`` is always present (``unknown_service`` when the resource has none);
- line: the body as a string; maps and arrays as JSON;
- timestamp: the record's time, else its observed time, else the sealing time;
- structured metadata: log attributes, trace_id/span_id (hex), severity, event_name, flags, the
  other resource attributes, scope attributes and name/version, nested maps flattened as
  ``parent_child``; then the seal: ``audit_chain_id``, ``audit_seq``, ``audit_hash``,
  ``audit_signature``, ``audit_key_id``. Seal fields are never labels (they are unique per record).
  A record sealed with its sender (proto/FORMAT.md 7.3a) adds ``audit_sender``, e.g.
  ``token:collector-prod cert:CN=collector from 10.0.0.7:53422``; it is kept like the seal fields.

Limits (documented in README, "Loki"): structured metadata beyond Loki's 128 entries / 64 KiB per
entry drops non-seal fields (resource, then scope, then log attributes, last first) and adds
``audit_metadata_truncated``; a line over ``max_line_bytes`` is cut and ``audit_line_truncated``
carries the original length. The seal is never dropped, so the record can always be found in the
archive. With ``seal_in_line`` (Loki 2.9, where structured metadata is off by default) there is no
structured metadata at all: the line is a JSON object {"line", "attributes", ..., "audit_*"}.

This module is pure: entry bytes in, LokiEntry out. The verifier's cross-check uses the same
function to know what Loki should hold.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind
from collector_ext.seal.sender import describe_sender_message

# Loki 3.x's default index-label list for OTLP resource attributes.
DEFAULT_LABEL_ATTRIBUTES: tuple[str, ...] = (
    "service.name",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "cloud.region",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
)
MAX_LABELS = 15
MAX_METADATA_ENTRIES = 128
MAX_METADATA_BYTES = 64 * 1024
MAX_LINE_BYTES = 256 * 1024

SEAL_CHAIN_ID = "audit_chain_id"
SEAL_SEQUENCE = "audit_seq"
SEAL_HASH = "audit_hash"
SEAL_SIGNATURE = "audit_signature"
SEAL_KEY_ID = "audit_key_id"
SEAL_FIELDS = (SEAL_CHAIN_ID, SEAL_SEQUENCE, SEAL_HASH, SEAL_SIGNATURE, SEAL_KEY_ID)
SENDER = "audit_sender"
LINE_TRUNCATED = "audit_line_truncated"
METADATA_TRUNCATED = "audit_metadata_truncated"

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


@functools.lru_cache(maxsize=8192)
def sanitise_name(name: str) -> str:
    """A label or structured-metadata name as Loki 3.6+ normalises it (``service.name`` ->
    ``service_name``); names Loki would refuse (empty, only separators) become ``attribute``."""
    cleaned = _NOT_ALNUM.sub("_", name)
    if cleaned.strip("_") == "":
        return "attribute"
    if cleaned[0].isdigit():
        cleaned = "key_" + cleaned
    return cleaned


@dataclass(frozen=True, slots=True)
class MappingSettings:
    label_attributes: tuple[str, ...] = DEFAULT_LABEL_ATTRIBUTES
    seal_in_line: bool = False
    max_line_bytes: int = MAX_LINE_BYTES
    max_metadata_entries: int = MAX_METADATA_ENTRIES
    max_metadata_bytes: int = MAX_METADATA_BYTES


@dataclass(frozen=True, slots=True)
class LokiEntry:
    """One entry as it is pushed: its stream's labels (sorted), timestamp, line and metadata."""

    labels: tuple[tuple[str, str], ...]
    timestamp_ns: int
    line: str
    metadata: tuple[tuple[str, str], ...]
    chain_id: str
    sequence: int

    def label_string(self) -> str:
        return render_label_set(self.labels)


@functools.lru_cache(maxsize=4096)
def render_label_set(labels: tuple[tuple[str, str], ...]) -> str:
    """``{a="x", b="y"}`` with Go-compatible quoting of the values (JSON string escapes)."""
    return "{" + ", ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in labels) + "}"


@dataclass(frozen=True, slots=True)
class Seal:
    chain_id: str
    sequence: int
    hash_hex: str
    signature_b64: str
    key_id: str

    def pairs(self) -> list[tuple[str, str]]:
        return [
            (SEAL_CHAIN_ID, self.chain_id),
            (SEAL_SEQUENCE, str(self.sequence)),
            (SEAL_HASH, self.hash_hex),
            (SEAL_SIGNATURE, self.signature_b64),
            (SEAL_KEY_ID, self.key_id),
        ]


def any_value_to_python(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def any_value_to_string(value: AnyValue) -> str:
    """A body or attribute value as Loki shows it: strings as they are, the rest as JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return ""
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    return json.dumps(any_value_to_python(value), ensure_ascii=False, separators=(",", ":"))


def _flatten(prefix: str, attributes: Iterable[KeyValue], out: list[tuple[str, str]]) -> None:
    for attribute in attributes:
        name = f"{prefix}_{attribute.key}" if prefix else attribute.key
        if attribute.value.WhichOneof("value") == "kvlist_value":
            _flatten(name, attribute.value.kvlist_value.values, out)
        else:
            out.append((sanitise_name(name), any_value_to_string(attribute.value)))


@dataclass(frozen=True, slots=True)
class ResourceScopeMapping:
    """What a record's resource and scope contribute: its stream's labels and their metadata."""

    labels: tuple[tuple[str, str], ...]
    resource_metadata: tuple[tuple[str, str], ...]
    scope_metadata: tuple[tuple[str, str], ...]


@dataclass
class EntryMapper:
    """Maps entries with one settings object; caches the resource/scope part, which is shared by
    all records of a request."""

    settings: MappingSettings = field(default_factory=MappingSettings)
    _cache: dict[tuple[bytes, bytes], ResourceScopeMapping] = field(default_factory=dict)

    def resource_scope(self, resource_bytes: bytes, scope_bytes: bytes) -> ResourceScopeMapping:
        """Labels and metadata of one resource/scope pair (encoded bytes), cached."""
        key = (resource_bytes, scope_bytes)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        resource = Resource.FromString(resource_bytes)
        scope = InstrumentationScope.FromString(scope_bytes)
        wanted = {name: index for index, name in enumerate(self.settings.label_attributes)}
        labelled: list[tuple[int, str, str]] = []
        rest: list[KeyValue] = []
        for attribute in resource.attributes:
            index = wanted.get(attribute.key)
            any_value = attribute.value
            if index is not None and any_value.WhichOneof("value") == "string_value" and any_value.string_value:
                labelled.append((index, sanitise_name(attribute.key), any_value.string_value))
            else:
                rest.append(attribute)
        labelled.sort()
        labels: dict[str, str] = {}
        for _index, name, text in labelled:
            if name not in labels and len(labels) < MAX_LABELS:
                labels[name] = text
        labels.setdefault("service_name", "unknown_service")
        if len(labels) > MAX_LABELS:  # service_name added to a full set: drop the last configured one
            labels.pop(next(name for name in reversed(list(labels)) if name != "service_name"))
        resource_metadata: list[tuple[str, str]] = []
        _flatten("", rest, resource_metadata)
        scope_metadata: list[tuple[str, str]] = []
        _flatten("", scope.attributes, scope_metadata)
        if scope.name:
            scope_metadata.append(("scope_name", scope.name))
        if scope.version:
            scope_metadata.append(("scope_version", scope.version))
        if scope.dropped_attributes_count:
            scope_metadata.append(("scope_dropped_attributes_count", str(scope.dropped_attributes_count)))
        mapped = ResourceScopeMapping(tuple(sorted(labels.items())), tuple(resource_metadata), tuple(scope_metadata))
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = mapped
        return mapped

    def map_entry(self, entry: bytes, entry_hash: bytes, signature: bytes) -> LokiEntry | None:
        """The Loki entry for a sealed log record; None for entries that are not log records."""
        if entry[2] != EntryKind.LOG_RECORD:
            return None
        chain_id = entry[4:20].hex()
        sequence = int.from_bytes(entry[20:28], "big")
        sealed_ns = int.from_bytes(entry[68:76], "big")
        payload = archive_pb2.LogPayload.FromString(entry[ENTRY_HEADER_SIZE:])
        shared = self.resource_scope(payload.resource, payload.scope)
        record = LogRecord.FromString(payload.log_record)
        seal = Seal(
            chain_id,
            sequence,
            entry_hash.hex(),
            base64.b64encode(signature).decode(),
            entry[60:68].hex(),
        )
        timestamp = record.time_unix_nano or record.observed_time_unix_nano or sealed_ns
        line = any_value_to_string(record.body)
        log_metadata: list[tuple[str, str]] = []
        _flatten("", record.attributes, log_metadata)
        if record.time_unix_nano and record.observed_time_unix_nano:
            log_metadata.append(("observed_timestamp", str(record.observed_time_unix_nano)))
        if record.severity_number:
            log_metadata.append(("severity_number", str(record.severity_number)))
        if record.severity_text:
            log_metadata.append(("severity_text", record.severity_text))
        if record.event_name:
            log_metadata.append(("event_name", record.event_name))
        if record.dropped_attributes_count:
            log_metadata.append(("dropped_attributes_count", str(record.dropped_attributes_count)))
        if record.flags:
            log_metadata.append(("flags", str(record.flags)))
        if record.trace_id:
            log_metadata.append(("trace_id", record.trace_id.hex()))
        if record.span_id:
            log_metadata.append(("span_id", record.span_id.hex()))
        sender = describe_sender_message(payload.sender) if payload.HasField("sender") else None
        if self.settings.seal_in_line:
            return self._seal_in_line(shared, timestamp, line, log_metadata, seal, sender)
        extra: list[tuple[str, str]] = [(SENDER, sender)] if sender else []
        if len(line.encode()) > self.settings.max_line_bytes:
            original = len(line.encode())
            line = line.encode()[: self.settings.max_line_bytes].decode(errors="ignore")
            extra.append((LINE_TRUNCATED, str(original)))
        metadata = self._fit_metadata(
            [list(log_metadata), list(shared.scope_metadata), list(shared.resource_metadata)], seal.pairs() + extra
        )
        return LokiEntry(shared.labels, timestamp, line, metadata, chain_id, sequence)

    def _fit_metadata(
        self, groups: list[list[tuple[str, str]]], reserved: list[tuple[str, str]]
    ) -> tuple[tuple[str, str], ...]:
        """Seal fields first and always kept; other fields by priority while Loki's limits allow."""
        limit_entries = self.settings.max_metadata_entries
        limit_bytes = self.settings.max_metadata_bytes
        combined = reserved + [pair for group in groups for pair in group]
        # Fast path: few, short fields with distinct names (4 bytes per character bounds UTF-8).
        if len(combined) < limit_entries and len({name for name, _ in combined}) == len(combined):
            characters = sum(len(name) + len(value) for name, value in combined)
            if characters * 4 <= limit_bytes - 64:
                return tuple(combined)
        taken = {name for name, _ in reserved}
        chosen: list[tuple[str, str]] = list(reserved)
        size = sum(len(n) + len(v.encode()) for n, v in chosen)
        truncated = False
        for group in groups:
            for name, value in group:
                if name in taken:
                    name = f"{name}_attr"  # an attribute never shadows a seal or earlier field
                    if name in taken:
                        continue
                cost = len(name) + len(value.encode())
                if len(chosen) + 1 >= limit_entries or size + cost > limit_bytes - 64:
                    truncated = True
                    continue
                chosen.append((name, value))
                taken.add(name)
                size += cost
        if truncated:
            chosen.append((METADATA_TRUNCATED, "true"))
        return tuple(chosen)

    def _seal_in_line(
        self,
        shared: ResourceScopeMapping,
        timestamp: int,
        line: str,
        log_metadata: Sequence[tuple[str, str]],
        seal: Seal,
        sender: str | None,
    ) -> LokiEntry:
        document: dict[str, Any] = {"line": line}
        if log_metadata:
            document["attributes"] = dict(log_metadata)
        if shared.scope_metadata:
            document["scope"] = dict(shared.scope_metadata)
        if shared.resource_metadata:
            document["resource"] = dict(shared.resource_metadata)
        document.update(seal.pairs())
        document[SEAL_SEQUENCE] = seal.sequence
        if sender:
            document[SENDER] = sender
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode()) > self.settings.max_line_bytes:
            document["line"] = line.encode()[: self.settings.max_line_bytes // 2].decode(errors="ignore")
            document.pop("attributes", None)
            document.pop("resource", None)
            document[LINE_TRUNCATED] = len(line.encode())
            text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        return LokiEntry(shared.labels, timestamp, text, (), seal.chain_id, seal.sequence)
