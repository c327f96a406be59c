"""Verifying an archive in shards: which chains a shard takes, and the JSON report it hands on.

``verify --shard I/N`` checks the chains of shard I (0-based) of N and writes a ``ShardReport``: the
archive's full chain list as the shard saw it, and for each chain it checked that chain's summary and
findings, exactly as a single run would have produced them. What relates one chain to another (a
superseded chain that is missing or was cut, an archive id that differs, a stale chain) is left out:
``verify.merge`` works it out once every shard's report is in, with the same code a single run uses, so
a merged verdict is a single run's verdict.

Two ways to split (``--shard-by``):

- ``chain`` (the default): chains are dealt out by the rank of their id among all the archive's chain
  ids, round robin, so every shard decides alone and the same listing always gives the same split.
- ``range``: every chain is cut into up to N ranges of its segments (``plan_ranges``), at seams the
  listing alone shows: between two segments whose keys are contiguous, where a checkpoint key ends at
  the first one's last sequence number. The cuts split the chain's listed bytes as evenly as the seams
  allow, so one long chain is checked by N shards at once. Range j of the chain of rank r goes to
  shard (j + r) mod N, so chains too short to cut are still spread round robin. Every range but the
  first resumes after its seam checkpoint, which it authenticates; its report says what it assumed
  there (``SeamState``) and the range before says what its walk reached there, and the merge holds
  the two equal.

A chain that appears or disappears between two shards' listings changes the split; the merge then
refuses the reports (their chain lists or listing digests differ) instead of guessing.

This module encodes and decodes; it reads no files and no archive.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector_ext.errors import ConfigurationError
from collector_ext.verify.findings import ChainSummary, Finding, FindingKind, Severity, Supersession

SHARD_REPORT_FORMAT = "collector-ext-verify-shard"
# Version 2 adds ranges (``--shard-by range``); a split by chain is still written as version 1, which
# verifiers without ranges read.
SHARD_REPORT_VERSION = 2
CHAIN_SHARD_REPORT_VERSION = 1
SHARD_BY = ("chain", "range")


class ShardReportError(ConfigurationError):
    """A shard report cannot be read, or does not belong with the others; names the file."""


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` (0-based, as Kubernetes' JOB_COMPLETION_INDEX) of ``count``."""

    index: int
    count: int
    by: str = "chain"  # one of SHARD_BY

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigurationError("--shard", f"{self.index}/{self.count}: needs 0 <= I < N")
        if self.by not in SHARD_BY:
            raise ConfigurationError("--shard-by", f"{self.by!r}: expected one of {', '.join(SHARD_BY)}")

    def chains_of(self, chain_ids: Iterable[str]) -> list[str]:
        """The chains (hex ids) this shard checks (all or part of): by chain, every N-th of the sorted
        ids from the I-th; by range, every chain (the shard checks its ranges of each)."""
        if self.by == "range":
            return sorted(chain_ids)
        return sorted(chain_ids)[self.index :: self.count]

    def owns_part(self, chain_rank: int, part: int) -> bool:
        """Whether range ``part`` of the chain of rank ``chain_rank`` (among the sorted ids) is this shard's."""
        return (part + chain_rank) % self.count == self.index


def parse_shard(text: str, by: str = "chain") -> ShardSpec:
    """``"I/N"`` -> ShardSpec.

    Raises:
        ConfigurationError: not two integers with 0 <= I < N (names --shard), or ``by`` is not one of
            SHARD_BY (names --shard-by).
    """
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigurationError("--shard", f"{text!r}: expected I/N, e.g. 0/4 for the first of four shards")
    return ShardSpec(int(index), int(count), by)


@dataclass(frozen=True, slots=True)
class ListedSegmentKey:
    """A segment as the listing shows it: its key's sequence range, its key and its listed size."""

    first_sequence: int
    last_sequence: int
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class SegmentRange:
    """Range ``part`` of ``parts`` of one chain: the listed segments ``first`` .. ``end - 1`` (in the
    walk's order), and the checkpoint numbers it starts after and ends with (None: the chain's start,
    or its end, where every remaining checkpoint belongs to the range)."""

    part: int
    parts: int
    first: int
    end: int
    start_checkpoint: int | None
    end_checkpoint: int | None


def plan_ranges(
    segments: Sequence[ListedSegmentKey], checkpoints: Iterable[tuple[int, int]], parts: int
) -> list[SegmentRange]:
    """Cut a chain into at most ``parts`` ranges of its segments, from the listing alone.

    ``segments`` are in the walk's order (first sequence, last sequence, key); ``checkpoints`` are
    (number, last sequence) pairs from the checkpoint keys. A seam can follow segment i when segment
    i + 1's key starts right after it and a checkpoint key ends at segment i's last sequence (the
    newest such checkpoint is the seam's: the range before feeds every checkpoint up to it, the range
    after resumes from it). Cuts go at the seams nearest to equal shares of the listed bytes."""
    ends: dict[int, int] = {}
    for number, last in checkpoints:
        ends[last] = max(number, ends.get(last, -1))
    seams: list[tuple[int, int]] = []  # (segment index the range after starts at, checkpoint number)
    newest = -1
    for index in range(len(segments) - 1):
        here, after = segments[index], segments[index + 1]
        seam = ends.get(here.last_sequence)
        if seam is None or after.first_sequence != here.last_sequence + 1 or seam <= newest:
            continue
        seams.append((index + 1, seam))
        newest = seam
    before: list[int] = []  # listed bytes before each segment
    running = 0
    for segment in segments:
        before.append(running)
        running += max(segment.size, 0)
    offsets = [before[index] for index, _ in seams]
    cuts: list[tuple[int, int]] = []
    lowest = 0  # cuts go in order: the next one after the last
    for share in range(1, max(parts, 1)):
        if lowest >= len(seams):
            break
        target = running * share / parts
        at = bisect.bisect_left(offsets, target, lowest)
        choices = [c for c in (at - 1, at) if lowest <= c < len(seams)]
        best = min(choices, key=lambda c: (abs(offsets[c] - target), c))
        cuts.append(seams[best])
        lowest = best + 1
    bounds = [(0, None), *[(index, number) for index, number in cuts]]
    ranges = []
    for part, (first, start) in enumerate(bounds):
        end, end_checkpoint = (cuts[part][0], cuts[part][1]) if part < len(cuts) else (len(segments), None)
        ranges.append(SegmentRange(part, len(bounds), first, end, start, end_checkpoint))
    return ranges


def listing_digest(segments: Sequence[ListedSegmentKey], checkpoint_keys: Iterable[str]) -> str:
    """SHA-256 (hex) of a chain's listed segment keys and sizes and checkpoint keys: ranges of one
    chain fit together only when every shard planned them from the same listing."""
    digest = hashlib.sha256()
    for segment in segments:
        digest.update(f"s {segment.key} {segment.size}\n".encode())
    for key in sorted(checkpoint_keys):
        digest.update(f"c {key}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SeamState:
    """The walk's state right after a seam checkpoint: what a range assumed at its start, or what the
    range before it reached at its end (hashes and key ids hex)."""

    checkpoint_number: int
    checkpoint_sha256: str
    last_sequence: int
    head_sha256: str
    key_id: str  # the key the chain is bound to after last_sequence
    run_public_key: str = ""  # the run key whose run continues past it, if any
    run_key_sequence: int = 0
    format_version: int = 0
    time_unix_nano: int = 0  # the checkpoint's time and final flag (not compared: the sha256 covers them)
    final: bool = False


@dataclass(frozen=True, slots=True)
class RangePart:
    """What a range of a chain adds to its ChainPart: where it lies and what it assumed and reached."""

    part: int
    parts: int
    first_segment: int  # index among the chain's listed segments
    end_segment: int  # one past the last
    segments_listed: int  # in the whole chain
    listing_sha256: str
    start_checkpoint_key: str  # "" for the first range
    end_checkpoint_key: str  # "" for the last range
    start: SeamState | None  # what the range assumed (None: the chain's genesis)
    end: SeamState | None  # what the walk reached at its end checkpoint (None: not reached, or the last range)
    walked_to: int | None  # the last sequence number the walk accepted
    walked_head: str  # that entry's hash, hex
    tree_findings: tuple[Finding, ...] = ()  # checkpoint notes' findings (a single run lists them first)
    evidence_findings: tuple[Finding, ...] = ()  # witnesses' and the TSA's (then these)
    objects: int = 0  # the range's objects (its segments, and its checkpoints and notes by number)
    signatures: int = 0  # signatures the range's walk checked


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
    findings: tuple[Finding, ...]  # with a range: the walk's own findings
    range: RangePart | None = None


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
        "count": finding.count,
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
        int(data.get("count", 1)),
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


def _part_to_json(part: ChainPart) -> dict[str, Any]:
    document: dict[str, Any] = {
        "summary": dataclasses.asdict(part.summary),
        "findings": [_finding_to_json(f) for f in part.findings],
    }
    if part.range is not None:
        segment_range = part.range
        fields = {f.name: getattr(segment_range, f.name) for f in dataclasses.fields(segment_range)}
        fields["start"] = dataclasses.asdict(segment_range.start) if segment_range.start is not None else None
        fields["end"] = dataclasses.asdict(segment_range.end) if segment_range.end is not None else None
        fields["tree_findings"] = [_finding_to_json(f) for f in segment_range.tree_findings]
        fields["evidence_findings"] = [_finding_to_json(f) for f in segment_range.evidence_findings]
        document["range"] = fields
    return document


def _part_from_json(data: Mapping[str, Any]) -> ChainPart:
    segment_range = None
    fields = data.get("range")
    if fields is not None:
        fields = dict(fields)
        fields["start"] = SeamState(**fields["start"]) if fields["start"] is not None else None
        fields["end"] = SeamState(**fields["end"]) if fields["end"] is not None else None
        fields["tree_findings"] = tuple(_finding_from_json(f) for f in fields["tree_findings"])
        fields["evidence_findings"] = tuple(_finding_from_json(f) for f in fields["evidence_findings"])
        segment_range = RangePart(**fields)
    findings = tuple(_finding_from_json(f) for f in data["findings"])
    return ChainPart(_summary_from_json(data["summary"]), findings, segment_range)


def encode_shard_report(report: ShardReport) -> bytes:
    """The report as JSON (pure ASCII, one object)."""
    document = {
        "format": SHARD_REPORT_FORMAT,
        "version": SHARD_REPORT_VERSION if report.shard.by == "range" else CHAIN_SHARD_REPORT_VERSION,
        "archive": report.archive,
        "shard": {"index": report.shard.index, "count": report.shard.count, "by": report.shard.by},
        "settings": dataclasses.asdict(report.settings),
        "chains_listed": list(report.chains_listed),
        "archive_findings": [_finding_to_json(f) for f in report.archive_findings],
        "chains": [_part_to_json(part) for part in report.chains],
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
    if document.get("version") not in (CHAIN_SHARD_REPORT_VERSION, SHARD_REPORT_VERSION):
        raise ShardReportError(
            f"--merge {name}",
            f"is a shard report of version {document.get('version')!r}; this verifier reads version "
            f"{CHAIN_SHARD_REPORT_VERSION} and {SHARD_REPORT_VERSION}: merge with the verifier that wrote it",
        )
    try:
        settings = dict(document["settings"])
        settings["pinned_key_ids"] = tuple(settings["pinned_key_ids"])
        shard = document["shard"]
        return ShardReport(
            archive=str(document["archive"]),
            shard=ShardSpec(int(shard["index"]), int(shard["count"]), str(shard.get("by", "chain"))),
            settings=ShardSettings(**settings),
            chains_listed=tuple(str(c) for c in document["chains_listed"]),
            archive_findings=tuple(_finding_from_json(f) for f in document["archive_findings"]),
            chains=tuple(_part_from_json(part) for part in document["chains"]),
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
