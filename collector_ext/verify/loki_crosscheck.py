"""Cross-check of Loki against the archive: is every archived record in Loki, unaltered, with its seal?

The archive is the reference. For each archived log record whose Loki timestamp falls in the
window, the entry Loki should hold is computed with the same mapping the sidecar pushes with
(``deliver.loki.mapping``); Loki's entries of the window are matched to them by seal (chain id and
sequence number). Findings:

- ``loki-missing`` (loss): an archived record has no entry in Loki (never delivered, refused by
  Loki, or deleted from it);
- ``loki-altered`` (tampering): the entry is there but its line, labels, timestamp or a seal field
  differs from what the archive says it must be;
- ``loki-not-in-archive`` (tampering): Loki holds an entry with a seal the archive does not have.

Entries without any seal field are not ours (another source may push to the same streams) and are
only counted. Pure: entries in, findings out; reading Loki is ``deliver.loki.client``'s job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from collector_ext.deliver.loki.client import QueriedEntry
from collector_ext.deliver.loki.mapping import (
    LINE_TRUNCATED,
    SEAL_CHAIN_ID,
    SEAL_FIELDS,
    SEAL_SEQUENCE,
    SENDER,
    EntryMapper,
)
from collector_ext.seal.entry import entry_hash
from collector_ext.seal.segment import SealedRecord
from collector_ext.verify.findings import Finding, FindingKind, Severity

# Compared with the archive like the seal: the seal fields, and the sealed sender when the record has one.
_COMPARED_FIELDS = (*SEAL_FIELDS, SENDER)

# Labels Loki itself may add to what was pushed (reference: loki-push-contract.md section 6.2).
_LOKI_ADDED_LABELS = {"service_name", "detected_level", "level"}


@dataclass(frozen=True, slots=True)
class _Expected:
    timestamp_ns: int
    line_sha256: bytes
    line_length: int
    line: str
    labels: tuple[tuple[str, str], ...]
    seal: tuple[tuple[str, str], ...]
    object_key: str


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class LokiCrossCheck:
    def __init__(self, mapper: EntryMapper, start_ns: int, end_ns: int) -> None:
        self._mapper = mapper
        self._start = start_ns
        self._end = end_ns
        self._expected: dict[tuple[str, int], _Expected] = {}
        self._archived_until: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()
        self._present: set[tuple[int, bytes, tuple[tuple[str, str], ...]]] = set()
        self.findings: list[Finding] = []
        self.loki_entries = 0
        self.unsealed_entries = 0

    def add_segment(self, records: Sequence[SealedRecord], object_key: str) -> None:
        """Every record of an archived segment (the verifier's record observer)."""
        for record in records:
            self.add_archived(record.entry, record.signature, object_key)

    def add_archived(self, entry: bytes, signature: bytes, object_key: str) -> None:
        mapped = self._mapper.map_entry(entry, entry_hash(entry), signature)
        if mapped is None:
            return
        chain, sequence = mapped.chain_id, mapped.sequence
        self._archived_until[chain] = max(self._archived_until.get(chain, -1), sequence)
        if not self._start <= mapped.timestamp_ns < self._end:
            return
        seal = tuple((n, v) for n, v in mapped.metadata if n in _COMPARED_FIELDS)
        if self._mapper.settings.seal_in_line:
            document = json.loads(mapped.line)
            seal = tuple((n, str(document[n])) for n in _COMPARED_FIELDS if n in document)
        self._expected[(chain, sequence)] = _Expected(
            mapped.timestamp_ns,
            _digest(mapped.line),
            len(mapped.line.encode()),
            mapped.line if len(mapped.line) <= 200 else "",
            mapped.labels,
            seal,
            object_key,
        )

    def add_loki(self, queried: QueriedEntry) -> None:
        self.loki_entries += 1
        fields = dict(queried.metadata)
        if self._mapper.settings.seal_in_line:
            try:
                document = json.loads(queried.line)
                fields = {n: str(document[n]) for n in _COMPARED_FIELDS if n in document}
            except (ValueError, TypeError):
                fields = {}
        chain = fields.get(SEAL_CHAIN_ID)
        try:
            sequence = int(fields.get(SEAL_SEQUENCE, ""))
        except ValueError:
            sequence = -1
        if not chain and sequence < 0:
            self.unsealed_entries += 1
            return
        key = (chain or "", sequence)
        where = f"Loki entry at {queried.timestamp_ns} in stream {_render(queried.labels)}"
        expected = self._expected.get(key)
        if expected is None:
            if chain in self._archived_until and 0 <= sequence <= self._archived_until[chain]:
                self._report(
                    FindingKind.LOKI_ALTERED,
                    Severity.TAMPERING,
                    key,
                    f"{where}: its timestamp is outside "
                    "the checked window, but the archived record's is not (timestamp altered in Loki)",
                )
            else:
                self._report(
                    FindingKind.LOKI_NOT_IN_ARCHIVE,
                    Severity.TAMPERING,
                    key,
                    f"{where} carries a seal the archive does not have",
                )
            return
        if key in self._seen:
            return  # the same entry twice (a resend Loki did not de-duplicate): harmless
        self._seen.add(key)
        self._present.add((queried.timestamp_ns, _digest(queried.line), expected.labels))
        problems = []
        truncated = fields.get(LINE_TRUNCATED)
        if truncated is not None and not self._mapper.settings.seal_in_line:
            if str(expected.line_length) != truncated:
                problems.append("line (truncation marker)")
        elif _digest(queried.line) != expected.line_sha256:
            problems.append("line")
        if queried.timestamp_ns != expected.timestamp_ns:
            problems.append("timestamp")
        for name, value in expected.seal:
            if fields.get(name) != value:
                problems.append(name)
        for name, value in expected.labels:
            if queried.labels.get(name, value if name in _LOKI_ADDED_LABELS else None) != value:
                problems.append(f"label {name}")
        if problems:
            self._report(
                FindingKind.LOKI_ALTERED,
                Severity.TAMPERING,
                key,
                f"{where}: {', '.join(problems)} differ from the archived record",
                expected.object_key,
            )

    def finish(self) -> list[Finding]:
        for key, expected in sorted(self._expected.items()):
            if key in self._seen:
                continue
            if (expected.timestamp_ns, expected.line_sha256, expected.labels) in self._present:
                # Loki keeps one entry per stream, timestamp and line: an identical record (a resend,
                # or two events in one nanosecond) is stored once, under the other record's seal.
                self._report(
                    FindingKind.LOKI_MISSING,
                    Severity.WARNING,
                    key,
                    "Loki de-duplicated this record against an identical one (same stream, time and line) "
                    "that it holds under another sequence number",
                    expected.object_key,
                )
                continue
            self._report(
                FindingKind.LOKI_MISSING,
                Severity.LOSS,
                key,
                "archived record has no entry in Loki (not delivered, refused by Loki, or deleted)",
                expected.object_key,
            )
        return self.findings

    def _report(
        self, kind: FindingKind, severity: Severity, key: tuple[str, int], message: str, object_key: str = ""
    ) -> None:
        sequence = key[1] if key[1] >= 0 else None
        self.findings.append(Finding(kind, severity, message, key[0], sequence, sequence, object_key))


def _render(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if not k.startswith("audit_")) + "}"
