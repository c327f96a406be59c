"""Turns a VerificationReport into the human summary or JSON for tools.

In the text form, INFO findings (restart marks, superseded chains, resent records) are listed under
"notes", apart from the findings that may need action: a reader scanning for problems should not
have to skip the history of a healthy archive, and must not mistake it for a problem. JSON lists
every finding with its severity; tools filter on that.

Much of a report comes from the archive, which may be hostile: object keys, chain ids, and messages
that quote payload fields (writer ids, reasons). Text output passes every line through
``escape_controls``, so a control character (an ESC that starts a terminal sequence, a carriage return
that overwrites the verdict, a bidi override that reorders it) is shown as a visible escape and never
reaches the terminal raw. The escapes are for reading, not for parsing back (a backslash is left as it
is); the JSON form carries the exact values, itself in pure ASCII.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from collector_ext.verify.findings import Finding, FindingKind, Severity, Supersession, VerificationReport

_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(character: str) -> str:
    named = _NAMED_ESCAPES.get(character)
    if named is not None:
        return named
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal might act on, rather than show, written as an escape.

    That is every character Python does not call printable: C0 controls (ESC, BEL, CR, LF, TAB...),
    DEL, C1 controls (U+0080-U+009F, which some terminals read as CSI or OSC), format characters
    (bidi overrides and isolates U+202A-U+202E and U+2066-U+2069, marks, zero-width characters), line
    and paragraph separators, spaces other than U+0020, surrogates (a file name that is not UTF-8),
    private-use and unassigned code points. Escapes look like Python's: ``\\x1b``, ``\\r``, ``\\u202e``.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _time(unix_nano: int | None) -> str:
    if unix_nano is None:
        return "never"
    return dt.datetime.fromtimestamp(unix_nano / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(finding: Finding) -> str:
    return f"  {finding.severity.value.upper():9} {finding.kind.value:24} {finding.location()}: {finding.message}"


def _wrong_key_hint(report: VerificationReport) -> str:
    """When nothing in the archive is signed by a pinned key, say so plainly: a wrong --public-key is
    the likeliest cause, and the findings alone read like an attack."""
    problems = [f for f in report.findings if f.severity in (Severity.TAMPERING, Severity.LOSS)]
    unknown = [f for f in problems if f.kind is FindingKind.UNKNOWN_KEY]
    if not unknown or len(unknown) != len(problems) or any(c.key_ids for c in report.chains):
        return ""
    signed_by = sorted({f.message.split("key id ", 1)[1].split(",", 1)[0] for f in unknown if "key id " in f.message})
    pinned = ", ".join(report.pinned_key_ids) or "none"
    return (
        f"none of the pinned keys (key ids {pinned}) signed anything in this archive; it is signed with key id(s) "
        f"{', '.join(signed_by)}: check --public-key / --keyring. Nothing in it was verified."
    )


def render_text(report: VerificationReport, archive: str) -> str:
    lines = [f"archive: {archive}"]
    if report.pinned_key_ids:
        lines.append(f"pinned key ids: {', '.join(report.pinned_key_ids)}")
    if report.incremental:
        lines.append("incremental (--state): each known chain was read after its newest checkpoint verified before")
    for chain in report.chains:
        span = f"seq 0-{chain.last_sequence}" if chain.last_sequence is not None else "no records"
        covered = f"checkpointed to seq {chain.covered_until}" if chain.covered_until is not None else "no checkpoint"
        history = ""
        if chain.restart_marks:
            history += f", restart marks: {chain.restart_marks}"
        if chain.supersedes is not None:
            history += f", supersedes chain {chain.supersedes.chain_id}"
        if chain.resumed_from is not None:
            history += f", resumed after checkpoint {chain.resumed_from}"
        state = "closed cleanly (final checkpoint)" if chain.final else "open"
        archive_name = f", archive {chain.archive_id!r}" if chain.archive_id is not None else ""
        lines.append(
            f"chain {chain.chain_id} (format v{chain.format_version or '?'}, {state}{archive_name}): "
            f"{chain.records} entries ({span}), {chain.segments} segments, "
            f"{chain.checkpoints} checkpoints ({covered}, newest {_time(chain.newest_checkpoint_unix_nano)}), "
            f"key ids {', '.join(chain.key_ids) or '-'}{history}"
        )
    problems, notes = report.problems, report.notes
    if problems:
        lines.append(f"findings ({len(problems)}):")
        lines += map(_line, problems)
    if notes:
        lines.append(f"notes ({len(notes)}, not problems):")
        lines += map(_line, notes)
    totals = ", ".join(f"{report.counts.get(s.value, 0)} {s.value}" for s in Severity)
    lines.append(
        f"totals: {len(report.chains)} chains, {report.objects_read} objects, {report.records_checked} entries, "
        f"{report.signatures_checked} signatures checked; findings: {totals}"
    )
    hint = _wrong_key_hint(report)
    if hint:
        lines.append(hint)
    lines.append("verdict: VERIFIED" if report.clean else "verdict: NOT VERIFIED (tampering or loss found)")
    # Every line, so that no field of the archive's (a key, a chain id, a quoted payload field) gets
    # through raw, whichever line shows it.
    return "\n".join(map(escape_controls, lines))


def report_as_json(report: VerificationReport, archive: str) -> dict[str, Any]:
    return {
        "archive": archive,
        "verified": report.clean,
        "incremental": report.incremental,
        "pinned_key_ids": list(report.pinned_key_ids),
        "totals": {
            "chains": len(report.chains),
            "objects": report.objects_read,
            "entries": report.records_checked,
            "signatures_checked": report.signatures_checked,
            "findings": {s.value: report.counts.get(s.value, 0) for s in Severity},
        },
        "chains": [
            {
                "chain_id": c.chain_id,
                "entries": c.records,
                "last_sequence": c.last_sequence,
                "checkpointed_to": c.covered_until,
                "segments": c.segments,
                "checkpoints": c.checkpoints,
                "newest_checkpoint": _time(c.newest_checkpoint_unix_nano) if c.newest_checkpoint_unix_nano else None,
                "key_ids": list(c.key_ids),
                "restart_marks": c.restart_marks,
                "supersedes": _supersession(c.supersedes),
                "format_version": c.format_version or None,
                "final": c.final,
                "archive_id": c.archive_id,
                "signing_key_id": c.signing_key_id or None,
                "resumed_from_checkpoint": c.resumed_from,
            }
            for c in report.chains
        ],
        "findings": [finding_as_json(f) for f in report.findings],
    }


def finding_as_json(finding: Finding) -> dict[str, Any]:
    """One finding as the JSON report (and the period report) gives it."""
    return {
        "kind": finding.kind.value,
        "severity": finding.severity.value,
        "chain_id": finding.chain_id or None,
        "first_sequence": finding.first_sequence,
        "last_sequence": finding.last_sequence if finding.last_sequence is not None else finding.first_sequence,
        "object_key": finding.object_key or None,
        "message": finding.message,
        "count": finding.count,
    }


def _supersession(old: Supersession | None) -> dict[str, Any] | None:
    if old is None:
        return None
    return {
        "chain_id": old.chain_id,
        "last_sequence": old.last_sequence,
        "checkpointed_to": old.covered_until,
        "reason": old.reason,
        "writer_id": old.writer_id,
    }


def render_json(report: VerificationReport, archive: str) -> str:
    # ensure_ascii: every control and non-ASCII character in a value is written as a \uXXXX escape, so
    # the document is plain ASCII and safe to show on a terminal, while a parser gets the exact value.
    return json.dumps(report_as_json(report, archive), indent=2, ensure_ascii=True)
