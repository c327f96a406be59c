"""What the verifier can find, and the report that lists every finding.

Severities decide the exit code: TAMPERING and LOSS make a report unclean (exit 1); WARNING and INFO
are shown but leave it clean. LOSS is used where the archive cannot tell a crash from a deletion
(records missing where no checkpoint vouched for them yet); TAMPERING where a signed statement or a
signature proves the archive was changed after the fact. INFO findings are notes about a valid
archive that an auditor wants to see (a writer restarted, a chain replaced another, a batch was
sealed twice), so that a clean verdict does not hide how the archive came to be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    TAMPERING = "tampering"
    LOSS = "loss"
    WARNING = "warning"
    INFO = "info"


class FindingKind(StrEnum):
    MODIFIED_RECORD = "modified-record"
    DELETED_RECORDS = "deleted-records"
    INSERTED_RECORD = "inserted-record"
    REORDERED_RECORD = "reordered-record"
    FORKED_CHAIN = "forked-chain"
    MISSING_SEGMENT = "missing-segment"
    REPLACED_SEGMENT = "replaced-segment"
    APPENDED_BYTES = "appended-bytes"
    MALFORMED_OBJECT = "malformed-object"
    UNKNOWN_KEY = "unknown-key"
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"
    FORGED_CHECKPOINT = "forged-checkpoint"
    MISSING_CHECKPOINT = "missing-checkpoint"
    TRUNCATED_CHAIN = "truncated-chain"
    UNCOVERED_TAIL = "uncovered-tail"
    UNRECOGNISED_OBJECT = "unrecognised-object"
    RESTART = "restart"
    SUPERSEDED_CHAIN = "superseded-chain"
    WRITTEN_AFTER_SUPERSEDED = "written-after-superseded"
    SUPERSEDED_CHAIN_MISSING = "superseded-chain-missing"
    RESENT_RECORDS = "resent-records"
    # Keys (FORMAT.md 10.2): a pinned key signed where the chain is bound to another key, or outside
    # the keyring's validity window or writer ids for it.
    WRONG_KEY = "wrong-key"
    KEY_OUTSIDE_VALIDITY = "key-outside-validity"
    KEY_ROTATION = "key-rotation"
    # Run keys (FORMAT.md 7.7 and 10.3): a certified per-run record key; one used where its
    # certification does not reach; a certification not signed by a pinned key; a checkpoint
    # signed by a run key.
    RUN_KEY = "run-key"
    RUN_KEY_OUTSIDE_RUN = "run-key-outside-run"
    UNCERTIFIED_RUN_KEY = "uncertified-run-key"
    RUN_KEY_CHECKPOINT = "run-key-checkpoint"
    # Archive binding (FORMAT.md 13.6a): a chain whose genesis names another archive.
    FOREIGN_CHAIN = "foreign-chain"
    # A successor's signed claims about the chain it superseded do not hold (FORMAT.md 13.6).
    SUPERSEDED_CHAIN_CUT = "superseded-chain-cut"
    # Against what an earlier run remembered (--state, FORMAT.md 13.9).
    ROLLBACK = "rollback"
    VANISHED_CHAIN = "vanished-chain"
    STALE_CHAIN = "stale-chain"
    # A checkpoint note signed by a pinned key whose tree is not the tree of the stored entries, or a
    # newer note whose tree does not extend a remembered one (FORMAT.md 16.6, 13.9).
    TREE_MISMATCH = "tree-mismatch"
    # Outside evidence beside checkpoint notes (FORMAT.md 19.4): a pinned witness's cosignature or the
    # pinned TSA's token that does not hold; the newest note not within a tree cosigned by the required
    # number of pinned witnesses, or without a token when one is required; and the notes saying they are.
    BAD_COSIGNATURE = "bad-cosignature"
    BAD_TIMESTAMP = "bad-timestamp"
    UNWITNESSED_CHECKPOINT = "unwitnessed-checkpoint"
    MISSING_TIMESTAMP = "missing-timestamp"
    WITNESSED = "witnessed"
    TIMESTAMPED = "timestamped"
    # A tree a pinned witness cosigned for a chain of this archive is not in it (FORMAT.md 19.4 step 5).
    WITNESS_ROLLBACK = "witness-rollback"
    # An object the verifier could not read as an archive object (not a regular file, too large).
    UNREADABLE_OBJECT = "unreadable-object"
    # A chain written in format version 1: what it cannot prove.
    FORMAT_V1 = "format-v1"
    LOKI_MISSING = "loki-missing"
    LOKI_ALTERED = "loki-altered"
    LOKI_NOT_IN_ARCHIVE = "loki-not-in-archive"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem or note, with where it is: chain, sequence range and object key (each when known)."""

    kind: FindingKind
    severity: Severity
    message: str
    chain_id: str = ""
    first_sequence: int | None = None
    last_sequence: int | None = None
    object_key: str = ""
    # How many findings this one stands for: more than one for the summary of a chain's findings of
    # one kind beyond the ones its report lists one by one (``FoldedFindings``).
    count: int = 1

    def location(self) -> str:
        parts = []
        if self.chain_id:
            parts.append(f"chain {self.chain_id}")
        if self.first_sequence is not None:
            if self.last_sequence is None or self.last_sequence == self.first_sequence:
                parts.append(f"seq {self.first_sequence}")
            else:
                parts.append(f"seq {self.first_sequence}-{self.last_sequence}")
        if self.object_key:
            parts.append(f"object {self.object_key}")
        return ", ".join(parts)


# A chain's report lists at most this many findings one by one; the ones after are counted, per kind
# and severity, in one finding each. A hostile archive can make a finding of every record (262,144 in
# a segment): listed, they would cost the verifier hundreds of MiB, and no reader reads them one by one.
MAX_LISTED_FINDINGS = 10_000


@dataclass(slots=True)
class _Fold:
    count: int
    first: int | None
    last: int | None
    example: Finding


class FoldedFindings:
    """The findings of a chain past ``MAX_LISTED_FINDINGS``: per kind and severity, how many, their span
    of sequence numbers, and the first as an example."""

    __slots__ = ("_folds", "limit")

    def __init__(self, limit: int = MAX_LISTED_FINDINGS) -> None:
        self.limit = limit
        self._folds: dict[tuple[FindingKind, Severity], _Fold] = {}

    def add(self, finding: Finding) -> None:
        fold = self._folds.get((finding.kind, finding.severity))
        first, last = finding.first_sequence, finding.last_sequence
        if last is None:
            last = first
        if fold is None:
            self._folds[(finding.kind, finding.severity)] = _Fold(finding.count, first, last, finding)
            return
        fold.count += finding.count
        if first is not None:
            fold.first = first if fold.first is None else min(fold.first, first)
        if last is not None:
            fold.last = last if fold.last is None else max(fold.last, last)

    def summaries(self) -> list[Finding]:
        """One finding per kind and severity (in order of first appearance), with its count (a single
        finding as it was)."""
        out = []
        for fold in self._folds.values():
            example = fold.example
            if fold.count == example.count:
                out.append(example)
                continue
            span = f" in seq {fold.first}-{fold.last}" if fold.first is not None else ""
            out.append(
                Finding(
                    example.kind,
                    example.severity,
                    f"{fold.count:,} more finding(s) of this kind{span} are not listed one by one (a chain's report "
                    f"lists its first {self.limit:,} findings); the first of them, at {example.location()}: "
                    f"{example.message}",
                    example.chain_id,
                    fold.first,
                    fold.last,
                    example.object_key,
                    fold.count,
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Supersession:
    """What a chain's genesis says about the chain it replaces (the writer lost its local state).

    The numbers are the new writer's view of the old chain when it took over; the verifier compares
    them with what the archive holds of the old chain.
    """

    chain_id: str  # the superseded chain, hex
    last_sequence: int  # where the old chain was seen to end
    covered_until: int  # how far the old chain's newest checkpoint reached
    reason: str
    writer_id: str
    # Version 2: the old chain's entry hash at last_sequence, its newest checkpoint's hash and number
    # (hex; "" when not stated).
    head_sha256: str = ""
    checkpoint_sha256: str = ""
    checkpoint_number: int = 0
    format_version: int = 1


@dataclass(frozen=True, slots=True)
class ChainSummary:
    chain_id: str
    records: int
    last_sequence: int | None
    covered_until: int | None
    segments: int
    checkpoints: int
    newest_checkpoint_unix_nano: int | None
    key_ids: tuple[str, ...]
    supersedes: Supersession | None = None
    restart_marks: int = 0
    format_version: int = 0  # 0: unknown (no readable entry)
    head_sha256: str = ""  # entry hash of last_sequence, hex
    newest_checkpoint_number: int | None = None
    newest_checkpoint_sha256: str = ""
    final: bool = False  # the newest checkpoint was stored at a clean shutdown
    archive_id: str | None = None  # what the genesis names (version 2)
    writer_id: str = ""
    signing_key_id: str = ""  # the key the chain is bound to after its last entry, hex
    newest_segment_key: str = ""
    resumed_from: int | None = None  # --state: the checkpoint number checking resumed after


@dataclass(frozen=True)
class VerificationReport:
    """Every finding of one verification run, with totals."""

    findings: tuple[Finding, ...]
    chains: tuple[ChainSummary, ...]
    objects_read: int
    records_checked: int
    signatures_checked: int
    counts: dict[str, int] = field(default_factory=dict)
    pinned_key_ids: tuple[str, ...] = ()
    incremental: bool = False  # resumed from a remembered state: only what is new was read

    @property
    def clean(self) -> bool:
        """True when no finding shows tampering or loss."""
        return not any(f.severity in (Severity.TAMPERING, Severity.LOSS) for f in self.findings)

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def problems(self) -> list[Finding]:
        """Findings that may need action (tampering, loss, warning), in report order."""
        return [f for f in self.findings if f.severity is not Severity.INFO]

    @property
    def notes(self) -> list[Finding]:
        """INFO findings: how a valid archive came to be, shown apart from the problems."""
        return [f for f in self.findings if f.severity is Severity.INFO]
