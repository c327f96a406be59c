"""Prechecked segments: a clean segment is accepted from its summary without the per-record check,
and any archive gives the same report through worker processes, through the summary route on
threads, and through the plain per-record route."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from collector_ext.pb import archive_pb2
from collector_ext.seal.entry import ENTRY_HEADER_SIZE
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.check import ChainChecker
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.precheck import precheck_segment
from collector_ext.verify.run import VerifyOptions, check_archive
from tests.archive_builder import BuiltArchive, build_archive
from tests.fakes import InMemoryArchive


def _check(objects: dict[str, bytes], signer: Ed25519Signer, **options: Any) -> VerificationReport:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return asyncio.run(check_archive(store, {signer.key_id: signer.public_key}, VerifyOptions(**options)))


def _same(report: VerificationReport) -> tuple[object, ...]:
    return (report.findings, report.chains, report.records_checked, report.signatures_checked)


def _tampered(signer: Ed25519Signer) -> BuiltArchive:
    archive = build_archive(signer, segments=6, per_segment=20, checkpointed_segments=4)
    records = archive.segment_records(2)
    entry = bytearray(records[3].entry)
    entry[ENTRY_HEADER_SIZE + 5] ^= 0x01
    records[3] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[3].signature)
    archive.rewrite_segment(2, records)
    return archive


def test_without_prechecks_every_segment_is_checked_in_full(
    signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = build_archive(signer, segments=3, per_segment=5)
    full_checks: list[str] = []
    original = ChainChecker.add_segment

    def counting(self: ChainChecker, key: Any, data: bytes) -> None:
        full_checks.append(key.key)
        original(self, key, data)

    monkeypatch.setattr(ChainChecker, "add_segment", counting)
    assert _check(archive.objects, signer, prechecks=False).clean
    assert full_checks == archive.segment_keys


def test_a_clean_segment_is_accepted_from_its_summary(signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = build_archive(signer, segments=5, per_segment=50)
    full_checks: list[str] = []
    original = ChainChecker.add_segment

    def counting(self: ChainChecker, key: Any, data: bytes) -> None:
        full_checks.append(key.key)
        original(self, key, data)

    monkeypatch.setattr(ChainChecker, "add_segment", counting)
    report = _check(archive.objects, signer)
    assert report.clean
    assert report.records_checked == 250
    # Segment 0 starts with the genesis entry, which is not a plain log record: checked in full.
    assert full_checks == [archive.segment_keys[0]]


@pytest.mark.parametrize("archive_kind", ["clean", "tampered", "uncovered tail"])
def test_every_route_gives_the_same_report(signer: Ed25519Signer, archive_kind: str) -> None:
    if archive_kind == "clean":
        archive = build_archive(signer, segments=6, per_segment=20)
    elif archive_kind == "tampered":
        archive = _tampered(signer)
    else:
        archive = build_archive(signer, segments=6, per_segment=20, checkpointed_segments=3)
    processes = _check(archive.objects, signer, precheck_min_segments=1, precheck_processes=2)
    threads = _check(archive.objects, signer)
    every_record = _check(archive.objects, signer, prechecks=False)
    assert _same(processes) == _same(threads) == _same(every_record)
    assert processes.clean == (archive_kind != "tampered")


def test_a_summary_for_bytes_that_do_not_parse_is_none() -> None:
    assert precheck_segment(b"CXSEG\x00v1 not a segment") is None


def test_the_summary_names_hashes_only_where_asked(signer: Ed25519Signer) -> None:
    archive = build_archive(signer, segments=2, per_segment=10)
    summary = precheck_segment(archive.objects[archive.segment_keys[1]], claimed_sequences=[12, 19, 40])
    assert summary is not None
    assert summary.plain_run
    assert (summary.first_sequence, summary.record_count) == (10, 10)
    assert sorted(summary.claimed_hashes) == [12, 19]
    assert summary.claimed_hashes[19] == summary.last_hash
