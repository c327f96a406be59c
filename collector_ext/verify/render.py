"""Turns a VerificationReport into the human summary or JSON for tools.

In the text form, INFO findings (restart marks, superseded chains, resent records) are listed under
"notes", apart from the findings that may need action: a reader scanning for problems should not
have to skip the history of a healthy archive, and must not mistake it for a problem. JSON lists
every finding with its severity; tools filter on that.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from collector_ext.verify.findings import Finding, Severity, Supersession, VerificationReport


def _time(unix_nano: int | None) -> str:
    if unix_nano is None:
        return "never"
    return dt.datetime.fromtimestamp(unix_nano / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(finding: Finding) -> str:
    return f"  {finding.severity.value.upper():9} {finding.kind.value:24} {finding.location()}: {finding.message}"


def render_text(report: VerificationReport, archive: str) -> str:
    lines = [f"archive: {archive}"]
    for chain in report.chains:
        span = f"seq 0-{chain.last_sequence}" if chain.last_sequence is not None else "no records"
        covered = f"checkpointed to seq {chain.covered_until}" if chain.covered_until is not None else "no checkpoint"
        history = ""
        if chain.restart_marks:
            history += f", restart marks: {chain.restart_marks}"
        if chain.supersedes is not None:
            history += f", supersedes chain {chain.supersedes.chain_id}"
        lines.append(
            f"chain {chain.chain_id}: {chain.records} entries ({span}), {chain.segments} segments, "
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
    lines.append("verdict: VERIFIED" if report.clean else "verdict: NOT VERIFIED (tampering or loss found)")
    return "\n".join(lines)


def report_as_json(report: VerificationReport, archive: str) -> dict[str, Any]:
    return {
        "archive": archive,
        "verified": report.clean,
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
            }
            for c in report.chains
        ],
        "findings": [
            {
                "kind": f.kind.value,
                "severity": f.severity.value,
                "chain_id": f.chain_id or None,
                "first_sequence": f.first_sequence,
                "last_sequence": f.last_sequence if f.last_sequence is not None else f.first_sequence,
                "object_key": f.object_key or None,
                "message": f.message,
            }
            for f in report.findings
        ],
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
    return json.dumps(report_as_json(report, archive), indent=2)
