"""Restart marks, superseded chains and resent records: valid archives with a history to report.

Each of these is a note (INFO) or at most a warning: the archive stays verified. The tests assert the
exact findings, and that a restart mark costs the fast path nothing but its own segment.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import genesis_payload, sign_entry_hashes
from collector_ext.seal.entry import EntryKind, entry_hash
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.findings import Finding, FindingKind, Severity, VerificationReport
from collector_ext.verify.render import render_json, render_text
from collector_ext.verify.resends import ResendTracker
from collector_ext.verify.supersede import relate_chains
from tests.archive_builder import BuiltArchive, build_archive, log_payload, restart_mark, verify_objects

OLD = bytes.fromhex("0a" * 16)
NEW = bytes.fromhex("0b" * 16)

Row = tuple[str, str, int | None, int | None, str]


def findings(report: VerificationReport) -> list[Row]:
    """(kind, severity, first, last, object key) of every finding, in report order."""
    return [(f.kind.value, f.severity.value, f.first_sequence, f.last_sequence, f.object_key) for f in report.findings]


# -- restart marks --------------------------------------------------------------------------------


@pytest.mark.parametrize("all_signatures", [False, True])
def test_restart_mark_in_a_covered_segment_is_one_note_and_keeps_the_fast_path(
    signer: Ed25519Signer, all_signatures: bool
) -> None:
    archive = build_archive(signer, special={15: restart_mark()})
    report = verify_objects(archive.objects, [signer.public_key], all_signatures=all_signatures)
    assert findings(report) == [("restart", "info", 15, None, archive.segment_keys[1])]
    assert report.clean
    assert report.records_checked == 30
    (chain,) = report.chains
    assert (chain.last_sequence, chain.covered_until, chain.restart_marks) == (29, 29, 1)
    # The checkpoint digests still prove every segment, the one with the mark included: only the
    # three checkpoint signatures are checked.
    assert report.signatures_checked == (33 if all_signatures else 3)
    message = report.findings[0].message
    assert "pod-0" in message
    assert "did not end cleanly" in message
    assert "restarted after a crash" in message


@pytest.mark.parametrize("sequence", [1, 10, 19, 29])
def test_restart_mark_anywhere_after_genesis(signer: Ed25519Signer, sequence: int) -> None:
    archive = build_archive(signer, special={sequence: restart_mark(previous_run_clean=True, reason="upgrade")})
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("restart", "info", sequence, None, archive.segment_keys[sequence // 10])]
    assert "ended cleanly; reason: upgrade" in report.findings[0].message


def test_restart_mark_in_the_uncovered_tail(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, special={25: restart_mark()}, checkpointed_segments=2)
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("restart", "info", 25, None, archive.segment_keys[2]),
        ("uncovered-tail", "warning", 20, 29, archive.segment_keys[2]),
    ]
    assert report.signatures_checked == 2 + 10


def test_two_restart_marks(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, special={12: restart_mark(), 13: restart_mark(previous_run_clean=True)})
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("restart", "info", 12, None, archive.segment_keys[1]),
        ("restart", "info", 13, None, archive.segment_keys[1]),
    ]
    assert report.chains[0].restart_marks == 2


@pytest.mark.parametrize("payload", [b"\x0a\xff", b"\x0a\x02\xff\xfe"], ids=["truncated", "bad utf-8"])
def test_restart_payload_that_does_not_parse_is_malformed(signer: Ed25519Signer, payload: bytes) -> None:
    # Sealed and signed so by a faulty writer: the signature holds, the payload is no RestartPayload.
    archive = build_archive(signer, special={15: (EntryKind.RESTART, payload)})
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("malformed-object", "tampering", 15, None, archive.segment_keys[1])]
    assert "restart payload does not parse" in report.findings[0].message


def _resign(signer: Ed25519Signer, archive: BuiltArchive, segment: int, position: int, entry: bytearray) -> None:
    records = archive.segment_records(segment)
    (signature,) = sign_entry_hashes(signer, [entry_hash(bytes(entry))])
    records[position] = archive_pb2.SealedRecord(entry=bytes(entry), signature=signature)
    archive.rewrite_segment(segment, records)


def test_entry_0_cannot_be_a_restart_mark(signer: Ed25519Signer) -> None:
    archive = build_archive(signer)
    entry = bytearray(archive.segment_records(0)[0].entry)
    entry[2] = EntryKind.RESTART
    _resign(signer, archive, 0, 0, entry)
    report = verify_objects(archive.objects, [signer.public_key])
    assert ("malformed-object", "tampering", 0, None, archive.segment_keys[0]) in findings(report)
    assert not report.of_kind(FindingKind.RESTART)


def test_a_modified_restart_mark_is_a_modified_record_not_a_note(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, special={15: restart_mark()})
    records = archive.segment_records(1)
    entry = bytearray(records[5].entry)
    entry[-1] ^= 0x01
    records[5] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[5].signature)
    archive.rewrite_segment(1, records)
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("modified-record", "tampering", 15, None, archive.segment_keys[1])]


# -- superseded chains ----------------------------------------------------------------------------


def _successor(
    signer: Ed25519Signer,
    *,
    last: int,
    covered: int,
    old: bytes = OLD,
    predecessor: BuiltArchive | None = None,
    checkpoint_number: int | None = None,
) -> BuiltArchive:
    """A chain whose genesis supersedes ``old``; with ``predecessor`` (the old chain as built), the
    genesis names its head at ``last`` and its checkpoint ``checkpoint_number`` as a writer does."""
    head = predecessor.entry_hash_at(last) if predecessor is not None else bytes(range(32))
    number = checkpoint_number if checkpoint_number is not None else 0
    genesis = genesis_payload(
        signer.public_key,
        writer="collector-ext/test",
        reason="local state missing",
        writer_id="pod-0",
        supersedes_chain_id=old,
        superseded_last_sequence=last,
        superseded_covered_until=covered,
        superseded_head_sha256=head,
        superseded_checkpoint_number=number,
        superseded_checkpoint_sha256=(
            predecessor.checkpoint_hash_at(number) if predecessor is not None and checkpoint_number is not None else b""
        ),
    )
    return build_archive(signer, chain_id=NEW, genesis=genesis, segments=1)


def test_superseding_chain_pair_verifies_clean(signer: Ed25519Signer) -> None:
    # The old writer crashed after segment 2 was archived but before its checkpoint; its successor
    # lost the local state and started a new chain naming the old one.
    old = build_archive(signer, chain_id=OLD, checkpointed_segments=2)
    new = _successor(signer, last=29, covered=19, predecessor=old, checkpoint_number=1)
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("uncovered-tail", "info", 20, 29, old.segment_keys[2]),
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
    ]
    assert report.clean
    tail, superseded = report.findings
    assert "not covered by a checkpoint" in tail.message
    assert "names the hash of seq 29, which matches" in tail.message
    assert f"superseded by chain {NEW.hex()}" in tail.message
    assert superseded.chain_id == NEW.hex()
    assert superseded.message == (
        f"chain {NEW.hex()} supersedes chain {OLD.hex()} (writer id pod-0): local state missing; "
        f"{OLD.hex()} was seen up to seq 29, checkpoint-covered up to 19"
    )
    summary = {c.chain_id: c for c in report.chains}[NEW.hex()]
    assert summary.supersedes is not None
    assert (summary.supersedes.chain_id, summary.supersedes.last_sequence) == (OLD.hex(), 29)


def test_old_chain_written_after_it_was_superseded_is_a_warning(signer: Ed25519Signer) -> None:
    old = build_archive(signer, chain_id=OLD, checkpointed_segments=2)
    new = _successor(signer, last=24, covered=19, predecessor=old, checkpoint_number=1)
    report = verify_objects(old.objects | new.objects, [signer.public_key])
    assert findings(report) == [
        ("uncovered-tail", "info", 20, 29, old.segment_keys[2]),
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("written-after-superseded", "warning", 25, 29, ""),
    ]
    assert report.findings[2].chain_id == OLD.hex()
    assert report.clean


def test_superseding_a_chain_that_is_not_in_the_archive_is_tampering(signer: Ed25519Signer) -> None:
    # A version 2 writer looks for the chain it supersedes in its own archive: it was there.
    new = _successor(signer, last=29, covered=19)
    report = verify_objects(new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("superseded-chain-missing", "tampering", 0, None, ""),
    ]
    assert report.findings[1].chain_id == NEW.hex()
    assert not report.clean


def test_superseding_a_v1_chain_that_is_not_in_the_archive_is_a_warning(signer: Ed25519Signer) -> None:
    genesis = genesis_payload(
        signer.public_key,
        writer="collector-ext/test",
        reason="local state missing",
        writer_id="pod-0",
        supersedes_chain_id=OLD,
        superseded_last_sequence=29,
        superseded_covered_until=19,
    )
    new = build_archive(signer, chain_id=NEW, genesis=genesis, segments=1, format_version=1)
    report = verify_objects(new.objects, [signer.public_key])
    assert findings(report) == [
        ("superseded-chain", "info", 0, None, new.segment_keys[0]),
        ("format-v1", "info", None, None, ""),
        ("superseded-chain-missing", "warning", 0, None, ""),
    ]
    assert report.clean


def test_missing_superseded_chain_is_not_reported_when_not_every_chain_was_listed(signer: Ed25519Signer) -> None:
    new = _successor(signer, last=29, covered=19)
    report = verify_objects(new.objects, [signer.public_key])
    partial = relate_chains(
        report.chains,
        [f for f in report.findings if f.kind is not FindingKind.SUPERSEDED_CHAIN_MISSING],
        all_chains_listed=False,
    )
    assert [f.kind for f in partial] == [FindingKind.SUPERSEDED_CHAIN]


def test_uncovered_tail_of_a_chain_nothing_supersedes_stays_a_warning(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, checkpointed_segments=2)
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [("uncovered-tail", "warning", 20, 29, archive.segment_keys[2])]
    assert "not yet covered by a checkpoint" in report.findings[0].message


def test_superseded_chain_id_of_the_wrong_size_is_malformed(signer: Ed25519Signer) -> None:
    new = _successor(signer, last=29, covered=19, old=b"\x0a" * 15)
    report = verify_objects(new.objects, [signer.public_key])
    assert findings(report) == [("malformed-object", "tampering", 0, None, new.segment_keys[0])]


# -- resent records -------------------------------------------------------------------------------


def _resending(resent: dict[int, int]) -> Callable[[int], bytes]:
    """Log payloads where ``resent`` maps a sequence number to the earlier one whose payload it repeats."""

    def payloads(sequence: int) -> bytes:
        return log_payload(resent.get(sequence, sequence))

    return payloads


def test_records_resent_after_a_restart_are_counted(signer: Ed25519Signer) -> None:
    # Crash after seq 29; the collector resends the unacknowledged batch 25-29 to the restarted run.
    resent = {31 + i: 25 + i for i in range(5)}
    archive = build_archive(signer, segments=6, special={30: restart_mark()}, payloads=_resending(resent))
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("restart", "info", 30, None, archive.segment_keys[3]),
        ("resent-records", "info", 31, 35, archive.segment_keys[3]),
    ]
    message = report.findings[1].message
    assert message.startswith("5 log record(s) sealed within 50,000 entries after the restart mark at seq 30")
    assert "e.g. seq 31 repeats seq 25" in message
    assert report.clean
    assert report.signatures_checked == 6


def test_resends_across_segments_and_not_before_the_mark(signer: Ed25519Signer) -> None:
    # A duplicate before the mark is not a resend around it, nor is a copy of a record sealed after
    # the mark; copies of records from segments well before the mark's are found.
    resent = {8: 3, 45: 4, 46: 15, 47: 40}
    archive = build_archive(signer, segments=6, special={38: restart_mark()}, payloads=_resending(resent))
    report = verify_objects(archive.objects, [signer.public_key])
    assert findings(report) == [
        ("restart", "info", 38, None, archive.segment_keys[3]),
        ("resent-records", "info", 45, 46, archive.segment_keys[4]),
    ]
    assert report.findings[1].message.startswith("2 log record(s)")


def test_no_resent_records_no_note(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, segments=6, special={30: restart_mark()})
    report = verify_objects(archive.objects, [signer.public_key])
    assert [f.kind for f in report.findings] == [FindingKind.RESTART]


@pytest.mark.parametrize("fast_path", [False, True])
def test_resend_window_bounds(signer: Ed25519Signer, fast_path: bool) -> None:
    # With a window of 5: only the 5 log records before the mark at 20 count as originals, and
    # only the 5 entries after it are looked at. ``fast_path``: segment 1 is handed over as the
    # checker's fast path accepted it (its records are then read without header checks).
    resent = {21: 14, 22: 15, 24: 19, 26: 18}
    archive = build_archive(signer, special={20: restart_mark()}, payloads=_resending(resent))
    reported: list[Finding] = []
    tracker = ResendTracker(archive.chain_id.hex(), reported.append, window=5)
    for index in range(3):
        clean_from = 10 if fast_path and index == 1 else None
        marks = [20] if index == 2 else []
        entries = [record.entry for record in archive.segment_records(index)]
        tracker.add_segment(archive.segment_keys[index], entries, marks, clean_from=clean_from)
    tracker.finish()
    (finding,) = reported
    assert (finding.kind, finding.severity, finding.chain_id) == (
        FindingKind.RESENT_RECORDS,
        Severity.INFO,
        archive.chain_id.hex(),
    )
    assert (finding.first_sequence, finding.last_sequence, finding.object_key) == (22, 24, archive.segment_keys[2])
    assert finding.message.startswith("2 log record(s) sealed within 5 entries")
    assert "e.g. seq 22 repeats seq 15" in finding.message


def test_report_resends_finds_duplicates_anywhere(signer: Ed25519Signer) -> None:
    resent = {15: 5, 16: 6, 17: 7, 25: 2}
    archive = build_archive(signer, payloads=_resending(resent))
    assert verify_objects(archive.objects, [signer.public_key]).findings == ()
    report = verify_objects(archive.objects, [signer.public_key], report_resends=True)
    assert findings(report) == [
        ("resent-records", "info", 15, 17, archive.segment_keys[1]),
        ("resent-records", "info", 25, 25, archive.segment_keys[2]),
    ]
    assert report.findings[0].message.startswith("3 consecutive log record(s)")
    assert "e.g. seq 15 repeats seq 5" in report.findings[0].message
    assert report.clean


def test_report_resends_does_not_repeat_what_a_restart_note_counts(signer: Ed25519Signer) -> None:
    resent = {31: 25, 32: 26, 41: 36}
    archive = build_archive(signer, segments=6, special={30: restart_mark()}, payloads=_resending(resent))
    report = verify_objects(archive.objects, [signer.public_key], report_resends=True)
    assert findings(report) == [
        ("restart", "info", 30, None, archive.segment_keys[3]),
        ("resent-records", "info", 41, 41, archive.segment_keys[4]),
        ("resent-records", "info", 31, 32, archive.segment_keys[3]),
    ]
    assert "after the restart mark at seq 30" in report.findings[2].message
    assert "consecutive" in report.findings[1].message


# -- output ---------------------------------------------------------------------------------------


def test_notes_are_listed_apart_from_problems(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, special={15: restart_mark()}, checkpointed_segments=2)
    report = verify_objects(archive.objects, [signer.public_key])
    text = render_text(report, "archive")
    lines = text.splitlines()
    problems, notes = lines.index("findings (1):"), lines.index("notes (1, not problems):")
    assert problems < notes
    assert lines[problems + 1].split()[:2] == ["WARNING", "uncovered-tail"]
    assert lines[notes + 1].split()[:2] == ["INFO", "restart"]
    assert lines[2].endswith(", restart marks: 1")
    assert lines[-1] == "verdict: VERIFIED"
    document = json.loads(render_json(report, "archive"))
    assert [(f["kind"], f["severity"]) for f in document["findings"]] == [
        ("restart", "info"),
        ("uncovered-tail", "warning"),
    ]
    assert document["chains"][0]["restart_marks"] == 1
    assert document["chains"][0]["supersedes"] is None
    assert document["totals"]["findings"]["info"] == 1


def test_clean_archive_without_notes_prints_no_notes_heading(signer: Ed25519Signer) -> None:
    text = render_text(verify_objects(build_archive(signer).objects, [signer.public_key]), "archive")
    assert "notes" not in text
    assert "findings (" not in text


def test_superseded_chain_in_json(signer: Ed25519Signer) -> None:
    new = _successor(signer, last=29, covered=19)
    document = json.loads(render_json(verify_objects(new.objects, [signer.public_key]), "archive"))
    assert document["chains"][0]["supersedes"] == {
        "chain_id": OLD.hex(),
        "last_sequence": 29,
        "checkpointed_to": 19,
        "reason": "local state missing",
        "writer_id": "pod-0",
    }
