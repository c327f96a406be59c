"""verify --shard I/N --shard-by range: one long chain cut into ranges at checkpoint seams, each range
checked alone and the reports merged. The merged verdict equals a single run's on a clean chain and on
tamperings inside a range and at its seams; ranges are planned from the listing alone; a merge of
ranges that do not fit together is refused, naming the file; a seam that does not hold is a finding."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import genesis_payload
from collector_ext.seal.entry import ENTRY_HEADER_SIZE
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.layout import parse_segment_key
from collector_ext.verify.findings import FindingKind, VerificationReport
from collector_ext.verify.merge import merge_shard_reports
from collector_ext.verify.run import VerifyOptions, check_archive, check_archive_with_state
from collector_ext.verify.shard import (
    ListedSegmentKey,
    SeamState,
    ShardReport,
    ShardReportError,
    ShardSpec,
    decode_shard_report,
    encode_shard_report,
    parse_shard,
    plan_ranges,
)
from tests.archive_builder import BuiltArchive, build_archive
from tests.fakes import InMemoryArchive
from tests.unit.verify.test_shard import TAMPERINGS, several_chains

NOW = 1_800_000_000_000_000_000
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "sharded-audit"
SEGMENTS = 12


def _options(**settings: object) -> VerifyOptions:
    return dataclasses.replace(VerifyOptions(now_unix_nano=NOW, stale_after_seconds=3600.0), **settings)


def _store(objects: dict[str, bytes]) -> InMemoryArchive:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return store


def single(objects: dict[str, bytes], keys: dict[bytes, object]) -> VerificationReport:
    return asyncio.run(check_archive(_store(objects), keys, _options()))  # type: ignore[arg-type]


def range_reports(objects: dict[str, bytes], keys: dict[bytes, object], count: int) -> list[tuple[str, ShardReport]]:
    reports = []
    for index in range(count):
        options = _options(shard=ShardSpec(index, count, "range"))
        checked = asyncio.run(check_archive_with_state(_store(objects), keys, None, options))  # type: ignore[arg-type]
        assert checked.shard is not None
        name = f"range-{index}.json"
        reports.append((name, decode_shard_report(encode_shard_report(checked.shard), name)))
    return reports


def long_chain(signer: Ed25519Signer, archive_id: str = "") -> BuiltArchive:
    """One chain of 12 segments of 5 records, a checkpoint after each; its genesis names ``archive_id``."""
    genesis = genesis_payload(signer.public_key, writer="test", reason="test", archive_id=archive_id)
    return build_archive(signer, segments=SEGMENTS, per_segment=5, genesis=genesis)


def _modify(built: BuiltArchive, index: int, position: int) -> None:
    records = built.segment_records(index)
    entry = bytearray(records[position].entry)
    entry[ENTRY_HEADER_SIZE + 3] ^= 0x01
    records[position] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[position].signature)
    built.rewrite_segment(index, records)


def _replace(built: BuiltArchive, key: str, data: bytes) -> None:
    built.objects[key] = data


# With two ranges of 12 equal segments the seam is after segment 5 (checkpoint 5); with three, after
# segments 3 and 7.
SEAM_TAMPERINGS: dict[str, Callable[[BuiltArchive], None]] = {
    "clean": lambda built: None,
    "record modified inside a range": lambda built: _modify(built, 7, 2),
    "first record after a seam modified": lambda built: _modify(built, 6, 0),
    "last record before a seam modified": lambda built: _modify(built, 5, 4),
    "first segment after a seam deleted": lambda built: built.objects.pop(built.segment_keys[6]) and None,
    "last segment before a seam deleted": lambda built: built.objects.pop(built.segment_keys[5]) and None,
    "last segments deleted": lambda built: [built.objects.pop(key) for key in built.segment_keys[-3:]] and None,
    "seam checkpoint forged": lambda built: _replace(
        built, built.checkpoint_keys[5], built.objects[built.checkpoint_keys[5]][:-1] + b"\x00"
    ),
    "seam checkpoint replaced by the next": lambda built: _replace(
        built, built.checkpoint_keys[5], built.objects[built.checkpoint_keys[6]]
    ),
    "seam checkpoint deleted": lambda built: built.objects.pop(built.checkpoint_keys[5]) and None,
    "records cut before a seam": lambda built: built.rewrite_segment(5, built.segment_records(5)[:3]),
    "records cut after a seam": lambda built: built.rewrite_segment(6, built.segment_records(6)[:3]),
    "seam segments swapped (3 ranges)": lambda built: _swap(built, 3, 4),
}


def _swap(built: BuiltArchive, first: int, second: int) -> None:
    a, b = built.segment_keys[first], built.segment_keys[second]
    built.objects[a], built.objects[b] = built.objects[b], built.objects[a]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("tampering", sorted(SEAM_TAMPERINGS))
def test_merged_ranges_give_the_single_runs_verdict(signer: Ed25519Signer, tampering: str, count: int) -> None:
    built = long_chain(signer)
    SEAM_TAMPERINGS[tampering](built)
    keys: dict[bytes, object] = {signer.key_id: signer.public_key}
    expected = single(built.objects, keys)
    reports = range_reports(built.objects, keys, count)
    if tampering == "seam segments swapped (3 ranges)" and count == 3:
        # Known limit: two segments swapped across a seam are walked by two ranges, so the range before
        # the seam cannot set its misnamed segment aside until the walk reaches its content. The verdict
        # still reports the tampering.
        merged = merge_shard_reports(reports)
        assert not merged.clean and not expected.clean
        assert merged.findings != expected.findings  # if this fails, the limit is gone: drop this branch
        return
    assert merge_shard_reports(reports) == expected
    assert expected.clean == (tampering == "clean")
    if count > 1 and tampering == "clean":
        parts = [part.range for _, report in reports for part in report.chains]
        assert sorted(p.part for p in parts if p is not None) == list(range(count))
        assert all(p.start is not None for p in parts if p is not None and p.part > 0)  # resumed, not replayed


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_ranges_of_many_chains_give_the_single_runs_verdict(signer: Ed25519Signer, tampering: str) -> None:
    objects, built = several_chains(signer, segments=8)
    TAMPERINGS[tampering](objects, built)
    keys: dict[bytes, object] = {signer.key_id: signer.public_key}
    expected = single(objects, keys)
    for count in (2, 3, 7):
        assert merge_shard_reports(range_reports(objects, keys, count)) == expected


def test_an_unpinned_key_is_counted_once_over_the_ranges(signer: Ed25519Signer, other_signer: Ed25519Signer) -> None:
    built = long_chain(signer)
    keys: dict[bytes, object] = {other_signer.key_id: other_signer.public_key}
    expected = single(built.objects, keys)
    assert merge_shard_reports(range_reports(built.objects, keys, 3)) == expected
    assert [f.message.split(" are ")[0] for f in expected.of_kind(FindingKind.UNKNOWN_KEY)] == [
        "60 record(s) and 12 checkpoint(s)"
    ]


def _listed(built: BuiltArchive) -> list[ListedSegmentKey]:
    listed = []
    for key in built.segment_keys:
        parsed = parse_segment_key(key)
        assert parsed is not None
        listed.append(ListedSegmentKey(parsed.first_sequence, parsed.last_sequence, key, len(built.objects[key])))
    return listed


def test_ranges_are_cut_at_checkpoints_into_shares_of_the_bytes() -> None:
    segments = [ListedSegmentKey(10 * i, 10 * i + 9, f"s{i:02d}", 100) for i in range(10)]
    checkpoints = [(i, 10 * i + 9) for i in range(10)]
    plan = plan_ranges(segments, checkpoints, 3)
    assert [(r.first, r.end, r.start_checkpoint, r.end_checkpoint) for r in plan] == [
        (0, 3, None, 2),
        (3, 7, 2, 6),
        (7, 10, 6, None),
    ]
    # Without a checkpoint at a segment's end there is no seam there; an idle checkpoint after the
    # same record (a higher number) is the seam's, so the range before checks both.
    sparse = [(0, 49), (1, 49), (2, 99)]
    assert [(r.first, r.end, r.start_checkpoint) for r in plan_ranges(segments, sparse, 4)] == [
        (0, 5, None),
        (5, 10, 1),
    ]
    # A gap between two segments' keys is no seam: the walk of one range must see it.
    gapped = segments[:4] + segments[5:]
    assert all(r.first != 4 for r in plan_ranges(gapped, checkpoints, 9))
    assert [(r.first, r.end) for r in plan_ranges(segments, checkpoints, 1)] == [(0, 10)]
    assert [(r.first, r.end) for r in plan_ranges([], [], 3)] == [(0, 0)]
    # Bytes, not segment counts: one large segment is a range of its own.
    weighted = [dataclasses.replace(s, size=1000 if i == 0 else 100) for i, s in enumerate(segments)]
    assert [(r.first, r.end) for r in plan_ranges(weighted, checkpoints, 2)] == [(0, 1), (1, 10)]


def test_the_range_of_a_chain_goes_round_robin_from_its_rank() -> None:
    assert [ShardSpec(index, 3, "range").owns_part(1, 0) for index in range(3)] == [False, True, False]
    assert [ShardSpec(index, 3, "range").owns_part(1, 2) for index in range(3)] == [True, False, False]


def test_ranges_that_do_not_fit_together_are_refused_naming_the_file(signer: Ed25519Signer) -> None:
    built = long_chain(signer)
    keys: dict[bytes, object] = {signer.key_id: signer.public_key}
    reports = range_reports(built.objects, keys, 3)
    name, report = reports[1]

    def with_range(**changes: object) -> list[tuple[str, ShardReport]]:
        part = report.chains[0]
        assert part.range is not None
        changed = dataclasses.replace(part, range=dataclasses.replace(part.range, **changes))
        return [reports[0], (name, dataclasses.replace(report, chains=(changed,))), reports[2]]

    with pytest.raises(ShardReportError, match=r"--merge range-1.json: range 1 of chain .* gap or overlap"):
        merge_shard_reports(with_range(first_segment=3))
    with pytest.raises(ShardReportError, match=r"--merge range-1.json: cut chain .* from another listing"):
        merge_shard_reports(with_range(listing_sha256="0" * 64))
    with pytest.raises(ShardReportError, match=r"--merge range-1.json: does not hold range 1 of chain"):
        merge_shard_reports([reports[0], (name, dataclasses.replace(report, chains=())), reports[2]])
    with pytest.raises(ShardReportError, match=r"--merge range-1.json: range 1 of chain .* resumes after"):
        merge_shard_reports(with_range(start_checkpoint_key="elsewhere"))
    by_chain = range_reports(built.objects, keys, 3)[0][1]
    with pytest.raises(ShardReportError, match=r"--merge range-1.json: was split by range, by-chain.json by chain"):
        merge_shard_reports(
            [("by-chain.json", dataclasses.replace(by_chain, shard=ShardSpec(0, 3))), reports[1], reports[2]]
        )


def test_a_seam_that_does_not_hold_is_a_finding(signer: Ed25519Signer) -> None:
    built = long_chain(signer)
    keys: dict[bytes, object] = {signer.key_id: signer.public_key}
    reports = range_reports(built.objects, keys, 2)
    assert merge_shard_reports(reports).clean
    name, report = reports[1]
    part = report.chains[0]
    assert part.range is not None and part.range.start is not None
    # What the second range assumed differs from what the first range's walk reached there (as when
    # the archive answered the two shards differently).
    assumed: SeamState = dataclasses.replace(part.range.start, head_sha256="00" * 32)
    changed = dataclasses.replace(part, range=dataclasses.replace(part.range, start=assumed))
    merged = merge_shard_reports([reports[0], (name, dataclasses.replace(report, chains=(changed,)))])
    [finding] = merged.of_kind(FindingKind.CHECKPOINT_MISMATCH)
    assert not merged.clean
    assert finding.object_key == built.checkpoint_keys[5]
    assert "the walk up to it reached seq 29" in finding.message


def test_the_sharded_audit_job_splits_by_range() -> None:
    job = yaml.safe_load((DEPLOY / "verify-job.yaml").read_text(encoding="utf-8"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    by = command[command.index("--shard-by") + 1]
    shard = command[command.index("--shard") + 1]
    count = job["spec"]["completions"]
    specs = [parse_shard(shard.replace("$(JOB_COMPLETION_INDEX)", str(index)), by) for index in range(count)]
    assert {spec.by for spec in specs} == {"range"}
    # Every range of a chain cut N ways lands on a different pod.
    assert sorted(
        index for index, spec in enumerate(specs) for part in range(count) if spec.owns_part(5, part)
    ) == list(range(count))
