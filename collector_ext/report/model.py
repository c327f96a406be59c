"""What a period report holds: rows, per-chain completeness bounds, summaries and the verdict.

Plain frozen dataclasses, no I/O; renderers (CSV, JSONL, HTML) and the manifest read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collector_ext.verify.findings import Finding


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One log record of the period, as the report shows it."""

    time_unix_nano: int  # the record's time, else its observed time (event time)
    service: str  # resource attribute service.name
    event_name: str
    severity: str  # severity_text, else the name of severity_number
    user: str  # user.id (or enduser.id)
    model: str  # gen_ai.request.model (or gen_ai.response.model)
    operation: str  # gen_ai.operation.name
    input_tokens: int | None  # gen_ai.usage.input_tokens
    output_tokens: int | None  # gen_ai.usage.output_tokens
    body: str  # cut at the report's body length, with an ellipsis mark when cut
    trace_id: str  # hex, "" when absent
    chain_id: str
    sequence: int
    entry_hash: str  # hex SHA-256 entry hash (FORMAT.md 9)
    sealed_unix_nano: int
    sender: str = ""  # the sealed sender: "token:NAME cert:SUBJECT from PEER", "" when not sealed
    status: str = "verified"  # verified | tampered | unverified (a finding of loss or tampering covers it)

    def values(self) -> list[object]:
        """The fields in order (``dataclasses.astuple`` deep-copies: too slow per row)."""
        return [getattr(self, name) for name in ROW_FIELDS]


ROW_FIELDS = tuple(ReportRow.__slots__)


@dataclass(frozen=True, slots=True)
class SealPoint:
    """An entry of a chain by its sequence number and sealing time."""

    sequence: int
    sealed_unix_nano: int


@dataclass(frozen=True, slots=True)
class ChainBounds:
    """How one chain proves the period complete (proto/FORMAT.md; README "Reports").

    Within a chain sealing times do not decrease. Every record whose event time is in [since, until)
    was sealed in [since, until + late) (sealing follows the event, by at most the late allowance),
    so the entries between ``before`` (the last one sealed before ``since``) and ``after`` (the first
    one sealed at or after ``until + late``) hold every such record of this chain; all of them were
    read and verified.
    """

    chain_id: str
    before: SealPoint | None  # None: the chain began inside the window (its genesis bounds it)
    after: SealPoint | None  # None: no entry sealed that late yet
    rows: int  # rows of this chain in the report
    complete: bool
    reason: str  # why complete, or why not (e.g. the chain's newest checkpoint is older than until + late)
    newest_checkpoint_number: int | None = None
    newest_checkpoint_sha256: str = ""
    newest_checkpoint_unix_nano: int | None = None
    sealed_outside: int = 0  # records of the period sealed outside [since, until + late) (clock skew)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class UseSpan:
    """EU AI Act Art. 12 view: one use of the system (a session, else a trace), start to end."""

    key: str  # session.id or trace id
    start_unix_nano: int
    end_unix_nano: int
    records: int
    persons: tuple[str, ...]  # user ids seen in it
    reference_data: tuple[str, ...]  # reference databases / data sources logged in it


@dataclass(frozen=True)
class Summary:
    rows: int = 0
    by_event_name: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)
    by_service: dict[str, int] = field(default_factory=dict)
    by_day: dict[str, int] = field(default_factory=dict)  # YYYY-MM-DD (UTC) of the event time
    failed_logins: int = 0
    access_denied: int = 0
    permission_changes: int = 0
    exceptions: int = 0
    model_usage: dict[str, ModelUsage] = field(default_factory=dict)
    uses: tuple[UseSpan, ...] = ()
    uses_truncated: bool = False  # more uses than the report lists


@dataclass(frozen=True)
class PeriodReport:
    """Everything above the rows: parameters, verdict, bounds and summaries."""

    archive: str
    since_unix_nano: int
    until_unix_nano: int
    late_seconds: float
    filters: tuple[str, ...]  # as given, e.g. "event_name=access.denied", "service=ai-workflow"
    generated_unix_nano: int
    verified: bool  # no tampering or loss anywhere in the archive read
    findings: tuple[Finding, ...]  # every finding of the verification (problems and notes)
    chains: tuple[ChainBounds, ...]
    summary: Summary
    records_read: int
    signatures_checked: int
    body_limit: int
