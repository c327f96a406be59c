"""The JSON report (render.report_as_json) matches the published schema, proto/verify-report.schema.json.

Real reports from the real verifier: a clean archive, a tampered one (findings with and without
sequence numbers and object keys, a foreign key), and one with notes and a superseded chain. The
schema is strict (no extra or missing properties), so a change to the report that the schema does
not describe fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from collector_ext.seal.chain import genesis_payload
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.findings import FindingKind, Severity, VerificationReport
from collector_ext.verify.render import render_json, report_as_json
from tests.archive_builder import build_archive, restart_mark, verify_objects

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "proto" / "verify-report.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _document(report: VerificationReport) -> Any:
    # Through the real text form, so what is validated is what a tool reads.
    return json.loads(render_json(report, "archive under test"))


def test_schema_lists_every_finding_kind_and_severity() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    finding = schema["$defs"]["finding"]["properties"]
    assert finding["kind"]["enum"] == [k.value for k in FindingKind]
    assert finding["severity"]["enum"] == [s.value for s in Severity]


def test_clean_report(validator: jsonschema.Draft202012Validator, signer: Ed25519Signer) -> None:
    report = verify_objects(build_archive(signer).objects, [signer.public_key])
    assert report.clean and not report.findings
    validator.validate(_document(report))


def test_tampered_report(
    validator: jsonschema.Draft202012Validator, signer: Ed25519Signer, other_signer: Ed25519Signer
) -> None:
    built = build_archive(signer)
    records = built.segment_records(1)
    records[2].entry = records[2].entry[:-1] + b"X"
    built.rewrite_segment(1, records)
    del built.objects[built.segment_keys[2]]
    built.objects["junk/not-an-archive-object.txt"] = b"hello"
    foreign = build_archive(other_signer, chain_id=bytes(range(16, 32)), segments=1)
    built.objects.update(foreign.objects)
    report = verify_objects(built.objects, [signer.public_key])
    assert not report.clean
    kinds = {f.kind for f in report.findings}
    assert {FindingKind.MODIFIED_RECORD, FindingKind.UNRECOGNISED_OBJECT, FindingKind.UNKNOWN_KEY} <= kinds
    document = _document(report)
    validator.validate(document)
    assert document["verified"] is False
    # A finding without a chain or sequence range carries nulls, not empty strings.
    unrecognised = next(f for f in document["findings"] if f["kind"] == "unrecognised-object")
    assert unrecognised["chain_id"] is None and unrecognised["first_sequence"] is None


def test_report_with_notes_and_supersession(validator: jsonschema.Draft202012Validator, signer: Ed25519Signer) -> None:
    old = build_archive(signer, segments=2, chain_id=bytes(16), special={12: restart_mark()})
    successor = build_archive(
        signer,
        segments=1,
        chain_id=bytes([1]) * 16,
        genesis=genesis_payload(
            signer.public_key,
            writer="test",
            reason="local state missing",
            writer_id="pod-0",
            supersedes_chain_id=bytes(16),
            superseded_last_sequence=19,
            superseded_covered_until=19,
            superseded_head_sha256=old.entry_hash_at(19),
            superseded_checkpoint_sha256=old.checkpoint_hash_at(1),
            superseded_checkpoint_number=1,
        ),
    )
    report = verify_objects({**old.objects, **successor.objects}, [signer.public_key])
    assert report.clean, report.findings
    assert {FindingKind.RESTART, FindingKind.SUPERSEDED_CHAIN} <= {f.kind for f in report.notes}
    document = _document(report)
    validator.validate(document)
    assert any(c["supersedes"] is not None for c in document["chains"])


def test_schema_rejects_a_report_it_does_not_describe(
    validator: jsonschema.Draft202012Validator, signer: Ed25519Signer
) -> None:
    document = report_as_json(verify_objects(build_archive(signer).objects, [signer.public_key]), "a")
    document["chains"][0]["unexpected"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)
