"""A chain's report lists its first findings one by one and counts the rest (verify.findings
MAX_LISTED_FINDINGS): a hostile archive that makes a finding of every record must not make the
verifier's memory grow with it, and the verdict must stay the same."""

from __future__ import annotations

import functools

import pytest

from collector_ext.pb import archive_pb2
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify import links
from collector_ext.verify.findings import Finding, FindingKind, FoldedFindings, Severity
from collector_ext.verify.render import render_json
from tests.archive_builder import build_archive, verify_objects


def _with_bad_signatures(signer: Ed25519Signer, bad_from: int) -> dict[str, bytes]:
    """One chain of 3 segments of 10 entries; every record from position ``bad_from`` of the last
    segment on has a signature of zeros."""
    archive = build_archive(signer, segments=3, per_segment=10, checkpoints=False)
    records = archive.segment_records(2)
    for record in records[bad_from:]:
        record.signature = bytes(64)
    archive.rewrite_segment(2, [archive_pb2.SealedRecord(entry=r.entry, signature=r.signature) for r in records])
    return archive.objects


def test_findings_past_the_limit_are_counted_in_one_finding(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _with_bad_signatures(signer, bad_from=2)  # seq 22-29: eight modified records
    whole = verify_objects(objects, [signer.public_key])
    modified = whole.of_kind(FindingKind.MODIFIED_RECORD)
    assert [f.first_sequence for f in modified] == list(range(22, 30))

    monkeypatch.setattr(links, "FoldedFindings", functools.partial(FoldedFindings, limit=3))
    capped = verify_objects(objects, [signer.public_key])
    assert capped.clean is False
    # The first three as listed before, then one finding per kind and severity in order of first
    # appearance: the five other modified records counted in one, the uncovered tail as it was.
    *listed, summary, tail = capped.findings
    assert listed == list(whole.findings[:3])
    folded = whole.findings[3:-1]
    assert {(f.kind, f.severity) for f in folded} == {(FindingKind.MODIFIED_RECORD, Severity.TAMPERING)}
    assert tail == whole.findings[-1] and tail.kind is FindingKind.UNCOVERED_TAIL
    assert (summary.kind, summary.severity, summary.count) == (FindingKind.MODIFIED_RECORD, Severity.TAMPERING, 5)
    assert (summary.first_sequence, summary.last_sequence) == (25, 29)
    assert summary.object_key == folded[0].object_key
    assert "5 more finding(s) of this kind in seq 25-29 are not listed" in summary.message
    assert '"count": 5' in render_json(capped, "archive")


def test_an_unpinned_key_past_the_limit_is_still_reported(
    signer: Ed25519Signer, other_signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _with_bad_signatures(signer, bad_from=0)
    monkeypatch.setattr(links, "FoldedFindings", functools.partial(FoldedFindings, limit=0))
    report = verify_objects(objects, [other_signer.public_key])
    assert not report.clean
    assert {f.kind for f in report.findings} == {FindingKind.UNKNOWN_KEY}
    assert all(f.count >= 1 for f in report.findings)


def test_folds_keep_kind_severity_span_and_first_example() -> None:
    folds = FoldedFindings(limit=0)
    example = Finding(FindingKind.DELETED_RECORDS, Severity.LOSS, "gap", "c", 7, 9, "a")
    folds.add(example)
    folds.add(Finding(FindingKind.DELETED_RECORDS, Severity.TAMPERING, "gap", "c", 3, None, "b"))
    folds.add(Finding(FindingKind.DELETED_RECORDS, Severity.LOSS, "gap", "c", 20, 25, "c", count=4))
    loss, tampering = folds.summaries()
    assert (loss.severity, loss.count, loss.first_sequence, loss.last_sequence, loss.object_key) == (
        Severity.LOSS,
        5,
        7,
        25,
        "a",
    )
    assert tampering == Finding(FindingKind.DELETED_RECORDS, Severity.TAMPERING, "gap", "c", 3, None, "b")


def test_findings_past_the_limit_still_count_for_the_object_they_name(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoint-listed segments whose records were modified: the walk of each knows it found
    # tampering in it (and adds no replaced-segment of its own) whether its findings are listed or not.
    archive = build_archive(signer, segments=4, per_segment=10)
    for index in range(1, 4):
        records = archive.segment_records(index)
        for record in records:
            record.signature = bytes(64)
        archive.rewrite_segment(index, records)
    whole = verify_objects(archive.objects, [signer.public_key])
    assert FindingKind.REPLACED_SEGMENT not in {f.kind for f in whole.findings}
    monkeypatch.setattr(links, "FoldedFindings", functools.partial(FoldedFindings, limit=2))
    capped = verify_objects(archive.objects, [signer.public_key])
    assert {(f.kind, f.severity) for f in capped.findings} == {(f.kind, f.severity) for f in whole.findings}
    assert sum(f.count for f in capped.findings) == len(whole.findings)
