"""A report's period and filters, and the per-chain bounds that prove the period complete.

Records are selected by their own time (the record's time, else its observed time), which is how
auditors think; completeness is proven in seal order. Within a chain sealing times never decrease,
and a record is sealed after its event, by at most the late allowance. So every record of a chain
whose event time is in [since, until) was sealed in [since, until + late): the entries from the one
after the last entry sealed before ``since`` to the one before the first entry sealed at or after
``until + late`` hold them all, and the report read and verified each of those entries. Pure.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from collector_ext.errors import ConfigurationError
from collector_ext.report.model import ChainBounds, SealPoint
from collector_ext.report.rows import RecordFields

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(text: str, option: str) -> int:
    """A date (midnight UTC) or an ISO 8601 time with ``Z`` or an offset, in ns since the epoch.

    Raises:
        ConfigurationError: names ``option``.
    """
    value = text.strip()
    try:
        if _DATE.match(value):
            moment = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise ConfigurationError(
            option, f"{text!r} is not a date (2026-01-31) or an ISO 8601 time (2026-01-31T12:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        raise ConfigurationError(option, f"{text!r} has no time zone: end it with Z or an offset such as +01:00")
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@dataclass(frozen=True, slots=True)
class Filter:
    """``key=value``: the record's event_name, severity or service, else an attribute (log attributes
    first, then resource ones)."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str, option: str = "--where") -> Filter:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(option, f"{text!r} is not KEY=VALUE (e.g. event_name=access.denied)")
        return cls(key.strip(), value)

    def value_of(self, record: RecordFields) -> str | None:
        if self.key == "event_name":
            return record.event_name
        if self.key == "severity":
            return record.severity
        if self.key in ("service", "service.name"):
            return record.service
        return record.attributes.get(self.key)

    def matches(self, record: RecordFields) -> bool:
        return self.value_of(record) == self.value

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class Period:
    since_unix_nano: int
    until_unix_nano: int
    late_nanos: int
    filters: tuple[Filter, ...] = ()

    def __post_init__(self) -> None:
        if self.until_unix_nano <= self.since_unix_nano:
            raise ConfigurationError("--until", "must be after --since (the period is [since, until))")
        if self.late_nanos < 0:
            raise ConfigurationError("--late", "must not be negative")

    def contains(self, event_time: int) -> bool:
        return self.since_unix_nano <= event_time < self.until_unix_nano

    def selects(self, record: RecordFields) -> bool:
        return all(f.matches(record) for f in self.filters)

    def may_hold(self, sealed_unix_nano: int) -> bool:
        """Whether an entry sealed then may be a record of the period: sealed at most ``late`` after
        its event, and at most ``late`` before it (a writer clock behind the application's). Entries
        sealed further away are not parsed: a report reads the time of only the records near it."""
        return self.since_unix_nano - self.late_nanos <= sealed_unix_nano < self.seal_end

    @property
    def seal_end(self) -> int:
        """Records of the period are sealed before this (the late allowance)."""
        return self.until_unix_nano + self.late_nanos


@dataclass
class _ChainSeal:
    # (sequence, sealed time) of the last entry sealed before since and the first at or after the
    # seal end; -1 when none. Plain ints: this runs for every entry of the archive.
    before_sequence: int = -1
    before_sealed: int = 0
    after_sequence: int = -1
    after_sealed: int = 0
    rows: int = 0
    sealed_outside: int = 0


@dataclass
class BoundsTracker:
    """Fed every entry of every chain (chain id bytes, sequence and sealing time): where each chain's
    period starts and ends in seal order."""

    period: Period
    chains: dict[bytes, _ChainSeal] = field(default_factory=dict)

    def see(self, chain_id: bytes, sequence: int, sealed_unix_nano: int) -> None:
        chain = self.chains.get(chain_id)
        if chain is None:
            chain = self.chains[chain_id] = _ChainSeal()
        if sealed_unix_nano < self.period.since_unix_nano:
            if sequence > chain.before_sequence:
                chain.before_sequence, chain.before_sealed = sequence, sealed_unix_nano
        elif sealed_unix_nano >= self.period.seal_end and (chain.after_sequence < 0 or sequence < chain.after_sequence):
            chain.after_sequence, chain.after_sealed = sequence, sealed_unix_nano

    def row(self, chain_id: bytes, sealed_unix_nano: int) -> None:
        chain = self.chains.get(chain_id)
        if chain is None:
            chain = self.chains[chain_id] = _ChainSeal()
        chain.rows += 1
        if not self.period.since_unix_nano <= sealed_unix_nano < self.period.seal_end:
            chain.sealed_outside += 1

    def bounds(
        self,
        chain_id: str,
        *,
        final: bool,
        superseded_by: Sequence[str],
        verified: bool,
        newest_checkpoint: tuple[int, str, int] | None,
    ) -> ChainBounds:
        """The chain's bounds and whether they prove it complete for the period."""
        chain = self.chains.get(bytes.fromhex(chain_id), _ChainSeal())
        before = SealPoint(chain.before_sequence, chain.before_sealed) if chain.before_sequence >= 0 else None
        after = SealPoint(chain.after_sequence, chain.after_sealed) if chain.after_sequence >= 0 else None
        if not verified:
            complete, reason = False, "the chain has findings of tampering or loss: its records are not all proven"
        elif after is not None:
            complete = True
            reason = f"every entry up to seq {after.sequence}, the first sealed at or after until + late, was read"
        elif final:
            complete, reason = True, "the chain ended with a final checkpoint (clean shutdown) and was read to its end"
        elif superseded_by:
            complete, reason = (
                True,
                (f"the chain ended: chain {', '.join(superseded_by)} superseded it, and it was read to its end"),
            )
        else:
            complete, reason = (
                False,
                (
                    "no entry of the chain is sealed at or after until + late yet, and the chain is open: records of "
                    "the period may still be sealed (report again later, or with a larger --late if the writer stopped)"
                ),
            )
        if before is None and complete:
            reason += "; it began after since (its genesis is the lower bound)"
        number, sha256, time = newest_checkpoint if newest_checkpoint is not None else (None, "", None)
        return ChainBounds(
            chain_id=chain_id,
            before=before,
            after=after,
            rows=chain.rows,
            complete=complete,
            reason=reason,
            newest_checkpoint_number=number,
            newest_checkpoint_sha256=sha256,
            newest_checkpoint_unix_nano=time,
            sealed_outside=chain.sealed_outside,
        )
