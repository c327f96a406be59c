"""Verifying an archive in shards: which chains a shard takes, and the JSON report it hands on.

``verify --shard I/N`` checks the chains of shard I (0-based) of N and writes a ``ShardReport``: the
archive's full chain list as the shard saw it, and for each chain it checked that chain's summary and
findings, exactly as a single run would have produced them. What relates one chain to another (a
superseded chain that is missing or was cut, an archive id that differs, a stale chain) is left out:
``verify.merge`` works it out once every shard's report is in, with the same code a single run uses, so
a merged verdict is a single run's verdict.

Chains are dealt out by the rank of their id among all the archive's chain ids, round robin, so every
shard decides alone and the same listing always gives the same split. A chain that appears or
disappears between two shards' listings changes that split; the merge then refuses the reports
(their chain lists differ) instead of guessing.

This module encodes and decodes; it reads no files and no archive.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector_ext.errors import ConfigurationError
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, Supersession

SHARD_REPORT_FORMAT = "collector-ext-verify-shard"
SHARD_REPORT_VERSION = 1


class ShardReportError(ConfigurationError):
    """A shard report cannot be read, or does not belong with the others; names the file."""


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` (0-based, as Kubernetes' JOB_COMPLETION_INDEX) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigurationError("--shard", f"{self.index}/{self.count}: needs 0 <= I < N")

    def chains_of(self, chain_ids: Iterable[str]) -> list[str]:
        """The chains (hex ids) this shard checks: every N-th of the sorted ids, from the I-th."""
        return sorted(chain_ids)[self.index :: self.count]


def parse_shard(text: str) -> ShardSpec:
    """``"I/N"`` -> ShardSpec.

    Raises:
        ConfigurationError: not two integers with 0 <= I < N (names --shard).
    """
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigurationError("--shard", f"{text!r}: expected I/N, e.g. 0/4 for the first of four shards")
    return ShardSpec(int(index), int(count))


@dataclass(frozen=True, slots=True)
class ShardSettings:
    """What changes a verdict; every shard of one audit must have run with the same."""

    check_all_signatures: bool
    report_resends: bool
    archive_id: str | None
    stale_after_seconds: float | None
    pinned_key_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChainPart:
    """One chain as a single run would have left it before relating chains to each other."""

    summary: ChainSummary
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class ShardReport:
    archive: str
    shard: ShardSpec
    settings: ShardSettings
    chains_listed: tuple[str, ...]  # every chain id the shard's listing found, sorted
    archive_findings: tuple[Finding, ...]  # objects outside any chain; shard 0 reports them
    chains: tuple[ChainPart, ...]  # the chains this shard checked, sorted by id
    objects_read: int
    records_checked: int
    signatures_checked: int
    now_unix_nano: int


def _finding_to_json(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind.value,
        "severity": finding.severity.value,
        "message": finding.message,
        "chain_id": finding.chain_id,
        "first_sequence": finding.first_sequence,
        "last_sequence": finding.last_sequence,
        "object_key": finding.object_key,
    }


def _finding_from_json(data: Mapping[str, Any]) -> Finding:
    return Finding(
        FindingKind(data["kind"]),
        Severity(data["severity"]),
        str(data["message"]),
        str(data["chain_id"]),
        _optional_int(data["first_sequence"]),
        _optional_int(data["last_sequence"]),
        str(data["object_key"]),
    )


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, found {value!r}")
    return value


def _summary_from_json(data: Mapping[str, Any]) -> ChainSummary:
    fields = dict(data)
    supersedes = fields.pop("supersedes")
    fields["key_ids"] = tuple(fields["key_ids"])
    known = {f.name for f in dataclasses.fields(ChainSummary)}
    if set(fields) | {"supersedes"} != known:
        raise ValueError(f"chain summary fields {sorted(set(fields) ^ (known - {'supersedes'}))} do not match")
    return ChainSummary(**fields, supersedes=Supersession(**supersedes) if supersedes is not None else None)


def encode_shard_report(report: ShardReport) -> bytes:
    """The report as JSON (pure ASCII, one object)."""
    document = {
        "format": SHARD_REPORT_FORMAT,
        "version": SHARD_REPORT_VERSION,
        "archive": report.archive,
        "shard": {"index": report.shard.index, "count": report.shard.count},
        "settings": dataclasses.asdict(report.settings),
        "chains_listed": list(report.chains_listed),
        "archive_findings": [_finding_to_json(f) for f in report.archive_findings],
        "chains": [
            {"summary": dataclasses.asdict(part.summary), "findings": [_finding_to_json(f) for f in part.findings]}
            for part in report.chains
        ],
        "objects_read": report.objects_read,
        "records_checked": report.records_checked,
        "signatures_checked": report.signatures_checked,
        "now_unix_nano": report.now_unix_nano,
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def decode_shard_report(data: bytes, name: str) -> ShardReport:
    """Parse a report written by ``encode_shard_report``.

    Raises:
        ShardReportError: not JSON, not a shard report, another version, or a field is missing or
            has the wrong type (names ``name``).
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardReportError(f"--merge {name}", f"is not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != SHARD_REPORT_FORMAT:
        raise ShardReportError(f"--merge {name}", "is not a shard report of `collector-ext verify --shard`")
    if document.get("version") != SHARD_REPORT_VERSION:
        raise ShardReportError(
            f"--merge {name}",
            f"is a shard report of version {document.get('version')!r}; this verifier reads version "
            f"{SHARD_REPORT_VERSION}: merge with the verifier that wrote it",
        )
    try:
        settings = dict(document["settings"])
        settings["pinned_key_ids"] = tuple(settings["pinned_key_ids"])
        shard = document["shard"]
        return ShardReport(
            archive=str(document["archive"]),
            shard=ShardSpec(int(shard["index"]), int(shard["count"])),
            settings=ShardSettings(**settings),
            chains_listed=tuple(str(c) for c in document["chains_listed"]),
            archive_findings=tuple(_finding_from_json(f) for f in document["archive_findings"]),
            chains=tuple(
                ChainPart(_summary_from_json(part["summary"]), tuple(_finding_from_json(f) for f in part["findings"]))
                for part in document["chains"]
            ),
            objects_read=int(document["objects_read"]),
            records_checked=int(document["records_checked"]),
            signatures_checked=int(document["signatures_checked"]),
            now_unix_nano=int(document["now_unix_nano"]),
        )
    except ConfigurationError as exc:
        raise ShardReportError(f"--merge {name}", f"has an impossible shard number ({exc.problem})") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ShardReportError(f"--merge {name}", f"is a damaged shard report ({type(exc).__name__}: {exc})") from exc


def chain_parts(summaries: Sequence[ChainSummary], groups: Mapping[str, Sequence[Finding]]) -> tuple[ChainPart, ...]:
    """Summaries with the findings of their chain, in chain id order."""
    return tuple(
        ChainPart(summary, tuple(groups.get(summary.chain_id, ())))
        for summary in sorted(summaries, key=lambda s: s.chain_id)
    )
