"""The verifier on mutated and hostile archives (bounded, for CI; tests/fuzz_verify.py runs long).

Every case must end in a report or a CollectorExtError (the CLI's exit 2), never another exception,
within a time bound; its text output must be safe for a terminal; and an archive whose bytes changed
in a way that matters must never be VERIFIED (``may_verify`` in tests/fuzz_verify.py says which
changes may leave it so). The mutations come from tests/fuzz_verify.py, driven by hypothesis here.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_ext.deliver.archive import ListedObject
from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.errors import CollectorExtError, ObjectTooLargeError
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.render import render_json, render_text
from collector_ext.verify.run import VerifyOptions, check_archive
from tests.fakes import InMemoryArchive
from tests.fuzz_verify import (
    HOSTILE_ENTRIES,
    Base,
    Case,
    CaseFailure,
    Outcome,
    base_archives,
    check_verdict,
    make_case,
    may_verify,
    place_hostile_entry,
    text_is_safe,
    verify_in_process,
    write_case_to_directory,
)

CASE_SECONDS = 5.0
BASES = base_archives()
GiB = 1 << 30


class HypothesisChooser:
    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))

    def data(self, low: int, high: int) -> bytes:
        return self._data.draw(st.binary(min_size=low, max_size=high))


def _judge(case: Case, outcome: Outcome) -> None:
    assert outcome.seconds < CASE_SECONDS, f"{outcome.seconds:.1f} s for {case.mutations}"
    try:
        check_verdict(case, outcome)
    except CaseFailure as exc:
        raise AssertionError(f"{exc}: {case.base.name}: {case.mutations}") from None


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_archives_end_in_a_report_and_never_verify_falsely(data: st.DataObject) -> None:
    case = make_case(BASES, HypothesisChooser(data))
    outcome = verify_in_process(case.objects, case.base.keys, case.options)
    _judge(case, outcome)


def _verify_directory(root: Path, base: Base) -> Outcome:
    async def run() -> VerificationReport:
        store = DirectoryArchive(root, for_writing=False)
        await store.open()
        return await check_archive(store, base.keys, VerifyOptions(signature_threads=1))

    started = time.perf_counter()
    try:
        report = asyncio.run(run())
    except CollectorExtError as exc:
        return Outcome(2, time.perf_counter() - started, error=exc.diagnostics())
    assert text_is_safe(render_text(report, str(root)))
    assert render_json(report, str(root)).isascii()
    return Outcome(0 if report.clean else 1, time.perf_counter() - started, report)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_directory_archives_with_hostile_entries(data: st.DataObject) -> None:
    case = make_case(BASES, HypothesisChooser(data), hostile=True)
    with tempfile.TemporaryDirectory() as temporary:
        root, outside = Path(temporary) / "archive", Path(temporary) / "outside"
        root.mkdir()
        outside.mkdir()
        write_case_to_directory(root, case, outside)
        outcome = _verify_directory(root, case.base)
    _judge(case, outcome)


def test_the_oracle_knows_an_untouched_and_a_rolled_back_archive() -> None:
    base = BASES["covered"]
    assert may_verify(base, base.objects)
    segments = sorted(k for k in base.objects if k.endswith(".cxseg"))
    checkpoints = sorted(k for k in base.objects if k.endswith(".cxckpt"))
    rolled_back = {k: v for k, v in base.objects.items() if k not in (segments[-1], checkpoints[-1])}
    assert may_verify(base, rolled_back)
    without_segment = {k: v for k, v in base.objects.items() if k != segments[-1]}
    assert not may_verify(base, without_segment)
    appended = dict(base.objects)
    appended[segments[0]] += b"\x00"
    assert not may_verify(base, appended)
    tail = BASES["tail"]
    appended_tail = dict(tail.objects)
    appended_tail[sorted(k for k in tail.objects if k.endswith(".cxseg"))[-1]] += b"\x00"
    assert not may_verify(tail, appended_tail)


@pytest.mark.parametrize("base_name", sorted(BASES))
def test_bytes_appended_to_any_object_are_never_verified(base_name: str) -> None:
    base = BASES[base_name]
    for key in base.objects:
        objects = dict(base.objects)
        objects[key] += b"\x00"
        outcome = verify_in_process(objects, base.keys, VerifyOptions())
        assert outcome.exit_code == 1, key


# Hostile entries through check_archive. These depend on run.py listing with ``list_objects`` and
# reading with ``get(key, max_bytes=...)``, turning UnreadableObjectError into a finding: before that,
# check_archive stops with the error (the CLI's exit 2) instead of reporting.


def _directory_report(root: Path) -> VerificationReport:
    base = BASES["covered"]

    async def run() -> VerificationReport:
        store = DirectoryArchive(root, for_writing=False)
        await store.open()
        return await check_archive(store, base.keys, VerifyOptions(signature_threads=1))

    return asyncio.run(asyncio.wait_for(run(), CASE_SECONDS))


@pytest.fixture
def archive_directory(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    for key, data in BASES["covered"].objects.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


@pytest.mark.parametrize("kind", HOSTILE_ENTRIES)
def test_an_entry_named_like_a_segment_that_is_not_a_regular_file_is_a_finding(
    archive_directory: Path, tmp_path: Path, kind: str
) -> None:
    key = sorted(k for k in BASES["covered"].objects if k.endswith(".cxseg"))[1]
    outside = tmp_path / "outside"
    outside.mkdir()
    place_hostile_entry(archive_directory, key, kind, outside)
    started = time.monotonic()
    report = _directory_report(archive_directory)
    assert time.monotonic() - started < CASE_SECONDS
    assert not report.clean
    assert any(f.object_key == key for f in report.findings), report.findings


def test_a_symbolically_linked_directory_and_a_dangling_link_are_reported_not_fatal(
    archive_directory: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    place_hostile_entry(archive_directory, "mirror", "directory-link", outside)
    place_hostile_entry(archive_directory, "stale-link", "dangling-link", outside)
    report = _directory_report(archive_directory)
    assert {"mirror", "stale-link"} <= {f.object_key for f in report.findings}


def test_a_fifo_anywhere_does_not_hang_the_verifier(archive_directory: Path) -> None:
    os.mkfifo(archive_directory / "pipe")
    started = time.monotonic()
    try:
        _directory_report(archive_directory)
    except CollectorExtError:
        pass
    assert time.monotonic() - started < CASE_SECONDS


class _HugeObjectArchive(InMemoryArchive):
    """Says one segment is 3 GiB; fails the test if anything tries to read it without a limit."""

    def __init__(self, huge_key: str) -> None:
        super().__init__()
        self.huge_key = huge_key

    async def list_objects(self, under: str = "", start_after: str = "") -> AsyncIterator[ListedObject]:
        async for listed in super().list_objects(under, start_after):
            yield ListedObject(listed.key, 3 * GiB) if listed.key == self.huge_key else listed

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if key == self.huge_key:
            assert max_bytes is not None and max_bytes < 3 * GiB, "a 3 GiB object was read without a limit"
            raise ObjectTooLargeError(key, 3 * GiB, max_bytes)
        return await super().get(key, max_bytes)


def test_an_object_larger_than_the_format_allows_is_a_finding_without_being_read() -> None:
    base = BASES["covered"]
    key = sorted(k for k in base.objects if k.endswith(".cxseg"))[1]
    store = _HugeObjectArchive(key)
    store.objects = dict(base.objects)
    report = asyncio.run(check_archive(store, base.keys, VerifyOptions()))
    assert not report.clean
    assert any(f.object_key == key and "3221225472" in f.message for f in report.findings), report.findings


def test_keys_with_terminal_sequences_reach_the_report_escaped() -> None:
    base = BASES["covered"]
    objects = dict(base.objects)
    objects["\x1b]0;owned\x07\x1b[2K\rverdict: VERIFIED\u202e.txt"] = b"x"
    outcome = verify_in_process(objects, base.keys, VerifyOptions())
    assert outcome.report is not None
    text = render_text(outcome.report, "memory://archive")
    assert text_is_safe(text)
    assert "\\x1b]0;owned\\x07\\x1b[2K\\rverdict: VERIFIED\\u202e.txt" in text
