"""How ``verify-proof`` shows its verdict and the proven records (text for people, JSON for tools).

Record content comes from a file someone handed over: control characters are escaped before they
reach a terminal, as everywhere the verifier prints archive data.
"""

from __future__ import annotations

import datetime
from typing import Any

from collector_ext.prove.proof_file import ProofReport, RecordProof
from collector_ext.report.rows import read_fields
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind, decode_entry_header
from collector_ext.verify.render import escape_controls


def _iso(unix_nano: int) -> str:
    moment = datetime.datetime.fromtimestamp(unix_nano / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _record_fields(record: RecordProof) -> dict[str, Any]:
    if len(record.entry) < ENTRY_HEADER_SIZE:
        return {"sequence": record.index}
    header = decode_entry_header(record.entry)
    fields: dict[str, Any] = {
        "chain_id": header.chain_id.hex(),
        "sequence": header.sequence,
        "kind": EntryKind(header.kind).name.lower() if header.kind in EntryKind._value2member_map_ else header.kind,
        "sealed": _iso(header.sealed_unix_nano),
        "key_id": header.key_id.hex(),
    }
    if record.certification is not None:
        fields["run_key_certified_at"] = record.certification.index
    parsed = read_fields(record.entry, 0)
    if parsed is not None:
        fields.update(
            service=parsed.service,
            event_name=parsed.event_name,
            severity=parsed.severity,
            body=parsed.body,
            trace_id=parsed.trace_id,
            attributes=parsed.attributes,
        )
        if parsed.sender:
            fields["sender"] = parsed.sender
    return fields


def render_proof_json(report: ProofReport, source: str) -> dict[str, Any]:
    """The verdict, the tree head checked against, every problem and (when it holds) the records."""
    return {
        "proof": source,
        "verified": report.ok,
        "tree": None
        if report.tree is None
        else {"origin": report.tree.origin, "size": report.tree.size, "root": report.tree.root.hex()},
        "problems": [{"check": p.check, "index": p.index, "message": p.message} for p in report.problems],
        "cosignatures": [{"witness": c.name, "time": c.timestamp} for c in report.cosignatures],
        "records": [_record_fields(r) for r in report.records] if report.ok else [],
    }


def render_proof_text(report: ProofReport, source: str) -> str:
    lines = []
    if not report.ok:
        lines.append(f"NOT VERIFIED: {escape_controls(source)}")
        for problem in report.problems:
            where = f" (record {problem.index})" if problem.index is not None else ""
            lines.append(f"  check failed: {problem.check}{where}: {escape_controls(problem.message)}")
        return "\n".join(lines)
    assert report.tree is not None
    count = len(report.records)
    lines.append(
        f"VERIFIED: {count} record{'s' if count != 1 else ''} included in the tree of {report.tree.size} records "
        f"of {escape_controls(report.tree.origin)} (root {report.tree.root.hex()}), checkpoint note and record "
        "signatures valid"
    )
    for cosignature in report.cosignatures:
        moment = datetime.datetime.fromtimestamp(cosignature.timestamp, datetime.UTC).isoformat().replace("+00:00", "Z")
        lines.append(f"cosigned by witness {escape_controls(cosignature.name)} at {moment}")
    for record in report.records:
        fields = _record_fields(record)
        attributes = fields.pop("attributes", {})
        lines.append(f"record {fields.pop('sequence')}:")
        for name, value in fields.items():
            lines.append(f"  {name}: {escape_controls(str(value))}")
        for name, value in sorted(attributes.items()):
            lines.append(f"  attribute {escape_controls(name)}: {escape_controls(value)}")
    return "\n".join(lines)
