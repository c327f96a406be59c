"""The counts a compliance reviewer expects beside the rows, kept in bounded memory.

Counts per event name, user, service and day; the security events (failed logins, access denied,
permission changes, exceptions) by their event names and attributes; model usage (calls and tokens
per model); and the EU AI Act Art. 12 view, periods of use: each session (``session.id``), else each
trace, with its first and last record, the persons involved (user ids) and the reference data logged
(``gen_ai.data_source.id``, ``db.namespace``, ``reference.database``). Each table keeps at most
``MAX_KEYS`` keys and folds the rest into "(other)", so a hostile cardinality costs no memory.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from collector_ext.report.model import ModelUsage, ReportRow, Summary, UseSpan
from collector_ext.report.rows import RecordFields

MAX_KEYS = 10_000
DAY_NS = 86_400 * 1_000_000_000
MAX_USES = 10_000
OTHER = "(other)"
_REFERENCE_KEYS = ("gen_ai.data_source.id", "db.namespace", "reference.database")
_PERSON_KEYS = ("user.id", "enduser.id", "target.user.id", "reviewer.id")


def _count(table: dict[str, int], key: str) -> None:
    if key in table or len(table) < MAX_KEYS:
        table[key] = table.get(key, 0) + 1
    else:
        table[OTHER] = table.get(OTHER, 0) + 1


def is_failed_login(row: ReportRow, fields: RecordFields) -> bool:
    name = row.event_name.lower()
    outcome = fields.attributes.get("event.outcome", "").lower()
    return ("login" in name or "auth" in name) and ("fail" in name or outcome == "failure")


def is_access_denied(row: ReportRow) -> bool:
    name = row.event_name.lower()
    return "denied" in name or "forbidden" in name


def is_permission_change(row: ReportRow) -> bool:
    name = row.event_name.lower()
    return name.startswith(("permission.", "role.", "grant.", "acl.")) or "permission" in name


def is_exception(row: ReportRow, fields: RecordFields) -> bool:
    return row.event_name == "exception" or "exception.type" in fields.attributes


@dataclass
class _Use:
    start: int
    end: int
    records: int = 0
    persons: set[str] = field(default_factory=set)
    references: set[str] = field(default_factory=set)


@dataclass
class SummaryBuilder:
    rows: int = 0
    by_event_name: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)
    by_service: dict[str, int] = field(default_factory=dict)
    by_day: dict[str, int] = field(default_factory=dict)
    failed_logins: int = 0
    access_denied: int = 0
    permission_changes: int = 0
    exceptions: int = 0
    models: dict[str, list[int]] = field(default_factory=dict)
    uses: dict[str, _Use] = field(default_factory=dict)
    uses_truncated: bool = False
    days: dict[int, str] = field(default_factory=dict)

    def _day(self, number: int) -> str:
        name = self.days.get(number)
        if name is None:
            name = dt.datetime.fromtimestamp(number * 86_400, dt.UTC).strftime("%Y-%m-%d")
            if len(self.days) < MAX_KEYS:
                self.days[number] = name
        return name

    def add(self, row: ReportRow, fields: RecordFields) -> None:
        self.rows += 1
        _count(self.by_event_name, row.event_name or "(none)")
        _count(self.by_user, row.user or "(none)")
        _count(self.by_service, row.service or "(none)")
        _count(self.by_day, self._day(row.time_unix_nano // DAY_NS))
        self.failed_logins += is_failed_login(row, fields)
        self.access_denied += is_access_denied(row)
        self.permission_changes += is_permission_change(row)
        self.exceptions += is_exception(row, fields)
        if row.model:
            usage = self.models.get(row.model)
            if usage is None:
                if len(self.models) >= MAX_KEYS:
                    usage = self.models.setdefault(OTHER, [0, 0, 0])
                else:
                    usage = self.models[row.model] = [0, 0, 0]
            usage[0] += 1
            usage[1] += row.input_tokens or 0
            usage[2] += row.output_tokens or 0
        self._add_use(row, fields)

    def _add_use(self, row: ReportRow, fields: RecordFields) -> None:
        key = fields.attributes.get("session.id") or (f"trace {row.trace_id}" if row.trace_id else "")
        if not key:
            return
        use = self.uses.get(key)
        if use is None:
            if len(self.uses) >= MAX_USES:
                self.uses_truncated = True
                return
            use = self.uses[key] = _Use(row.time_unix_nano, row.time_unix_nano)
        use.start = min(use.start, row.time_unix_nano)
        use.end = max(use.end, row.time_unix_nano)
        use.records += 1
        for name in _PERSON_KEYS:
            if name in fields.attributes and len(use.persons) < 100:
                use.persons.add(fields.attributes[name])
        for name in _REFERENCE_KEYS:
            if name in fields.attributes and len(use.references) < 100:
                use.references.add(fields.attributes[name])

    def build(self) -> Summary:
        uses = tuple(
            UseSpan(key, use.start, use.end, use.records, tuple(sorted(use.persons)), tuple(sorted(use.references)))
            for key, use in sorted(self.uses.items(), key=lambda item: (item[1].start, item[0]))
        )
        return Summary(
            rows=self.rows,
            by_event_name=dict(sorted(self.by_event_name.items(), key=lambda kv: (-kv[1], kv[0]))),
            by_user=dict(sorted(self.by_user.items(), key=lambda kv: (-kv[1], kv[0]))),
            by_service=dict(sorted(self.by_service.items(), key=lambda kv: (-kv[1], kv[0]))),
            by_day=dict(sorted(self.by_day.items())),
            failed_logins=self.failed_logins,
            access_denied=self.access_denied,
            permission_changes=self.permission_changes,
            exceptions=self.exceptions,
            model_usage={model: ModelUsage(*usage) for model, usage in sorted(self.models.items())},
            uses=uses,
            uses_truncated=self.uses_truncated,
        )
