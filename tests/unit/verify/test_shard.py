"""verify --shard / --merge: a merge of N shard reports equals a single run, on clean and tampered
archives of several chains; reports that do not make one audit are refused, naming the file."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable

import pytest

from collector_ext.errors import ConfigurationError
from collector_ext.pb import archive_pb2
from collector_ext.seal.chain import genesis_payload
from collector_ext.seal.entry import ENTRY_HEADER_SIZE
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.merge import merge_shard_reports
from collector_ext.verify.run import VerifyOptions, check_archive, check_archive_with_state
from collector_ext.verify.shard import (
    ShardReport,
    ShardReportError,
    ShardSpec,
    decode_shard_report,
    encode_shard_report,
    parse_shard,
)
from tests.archive_builder import BuiltArchive, build_archive
from tests.fakes import InMemoryArchive

NOW = 1_800_000_000_000_000_000


def chain_id(n: int) -> bytes:
    return hashlib.sha256(bytes([n])).digest()[:16]


OLD, NEW = chain_id(100), chain_id(101)


def several_chains(
    signer: Ed25519Signer, archive_id: str = "", per_segment: int = 5, segments: int = 3
) -> tuple[dict[str, bytes], list[BuiltArchive]]:
    """Four independent chains, plus an old chain cut off after a crash and the chain that superseded it;
    each genesis names ``archive_id``."""
    first = genesis_payload(signer.public_key, writer="test", reason="test", archive_id=archive_id)
    chains = [
        build_archive(signer, chain_id=chain_id(n), segments=segments, per_segment=per_segment, genesis=first)
        for n in range(4)
    ]
    old = build_archive(
        signer, chain_id=OLD, segments=3, per_segment=per_segment, checkpointed_segments=2, genesis=first
    )
    genesis = genesis_payload(
        signer.public_key,
        writer="collector-ext/test",
        reason="local state missing",
        writer_id="pod-0",
        supersedes_chain_id=OLD,
        superseded_last_sequence=3 * per_segment - 1,
        superseded_covered_until=2 * per_segment - 1,
        superseded_head_sha256=old.entry_hash_at(3 * per_segment - 1),
        superseded_checkpoint_number=1,
        superseded_checkpoint_sha256=old.checkpoint_hash_at(1),
        archive_id=archive_id,
    )
    new = build_archive(signer, chain_id=NEW, genesis=genesis, segments=2, per_segment=5)
    objects: dict[str, bytes] = {}
    for built in [*chains, old, new]:
        objects |= built.objects
    return objects, [*chains, old, new]


def _modify_record(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    target = built[1]
    records = target.segment_records(1)
    entry = bytearray(records[2].entry)
    entry[ENTRY_HEADER_SIZE + 3] ^= 0x01
    records[2] = archive_pb2.SealedRecord(entry=bytes(entry), signature=records[2].signature)
    target.rewrite_segment(1, records)
    objects[target.segment_keys[1]] = target.objects[target.segment_keys[1]]


def _delete_segment(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    del objects[built[2].segment_keys[1]]


def _truncate_chain(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    del objects[built[3].segment_keys[-1]]


def _remove_superseded_chain(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    for key in built[4].objects:
        del objects[key]


def _cut_superseded_chain(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    # The old chain loses the segment its successor vouched for: a relation between two chains.
    del objects[built[4].segment_keys[-1]]


def _stray_object(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    objects["readme.txt"] = b"not an archive object"


def _forged_checkpoint(objects: dict[str, bytes], built: list[BuiltArchive]) -> None:
    key = built[0].checkpoint_keys[1]
    data = bytearray(objects[key])
    data[-1] ^= 0x01
    objects[key] = bytes(data)


TAMPERINGS: dict[str, Callable[[dict[str, bytes], list[BuiltArchive]], None]] = {
    "clean": lambda objects, built: None,
    "modified-record": _modify_record,
    "deleted-segment": _delete_segment,
    "truncated-chain": _truncate_chain,
    "superseded-chain-removed": _remove_superseded_chain,
    "superseded-chain-cut": _cut_superseded_chain,
    "stray-object": _stray_object,
    "forged-checkpoint": _forged_checkpoint,
}


def _store(objects: dict[str, bytes]) -> InMemoryArchive:
    store = InMemoryArchive()
    store.objects = dict(objects)
    return store


def _options(**settings: object) -> VerifyOptions:
    return dataclasses.replace(VerifyOptions(now_unix_nano=NOW, stale_after_seconds=3600.0), **settings)


def single(objects: dict[str, bytes], signer: Ed25519Signer, **settings: object) -> VerificationReport:
    return asyncio.run(check_archive(_store(objects), {signer.key_id: signer.public_key}, _options(**settings)))


def shard_reports(
    objects: dict[str, bytes], signer: Ed25519Signer, count: int, **settings: object
) -> list[tuple[str, ShardReport]]:
    """Each shard run alone, its report written as JSON and read back, as ``verify --merge`` reads it."""
    reports = []
    for index in range(count):
        options = _options(shard=ShardSpec(index, count), **settings)
        checked = asyncio.run(
            check_archive_with_state(_store(objects), {signer.key_id: signer.public_key}, None, options)
        )
        assert checked.shard is not None
        name = f"shard-{index}.json"
        reports.append((name, decode_shard_report(encode_shard_report(checked.shard), name)))
    return reports


@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_merged_verdict_equals_a_single_run(signer: Ed25519Signer, tampering: str, count: int) -> None:
    objects, built = several_chains(signer)
    TAMPERINGS[tampering](objects, built)
    expected = single(objects, signer)
    merged = merge_shard_reports(shard_reports(objects, signer, count))
    assert merged == expected
    assert expected.clean == (tampering in ("clean", "stray-object"))
    if tampering == "clean":
        # Open chains older than --stale-after: warnings that relate the chains to the clock.
        kinds = {f.kind.value for f in expected.findings}
        assert kinds == {"uncovered-tail", "superseded-chain", "stale-chain"}


def test_merged_verdict_with_all_signatures(signer: Ed25519Signer) -> None:
    objects, built = several_chains(signer)
    _modify_record(objects, built)
    expected = single(objects, signer, check_all_signatures=True)
    assert merge_shard_reports(shard_reports(objects, signer, 2, check_all_signatures=True)) == expected
    assert expected.signatures_checked > expected.records_checked


def test_shards_split_the_chains_and_the_work(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    reports = shard_reports(objects, signer, 3)
    checked = [[part.summary.chain_id for part in report.chains] for _, report in reports]
    assert sorted(c for chains in checked for c in chains) == sorted(reports[0][1].chains_listed)
    assert [len(chains) for chains in checked] == [2, 2, 2]
    assert sum(report.records_checked for _, report in reports) == single(objects, signer).records_checked


def test_a_missing_shard_is_an_error(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    reports = shard_reports(objects, signer, 3)
    with pytest.raises(ShardReportError, match=r"shard report\(s\) 1/3 missing"):
        merge_shard_reports([reports[0], reports[2]])


def test_a_shard_given_twice_is_an_error_naming_both_files(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    reports = shard_reports(objects, signer, 2)
    again = ("copy-of-shard-0.json", reports[0][1])
    with pytest.raises(
        ShardReportError, match=r"--merge copy-of-shard-0.json: is shard 0/2 again \(also shard-0.json\)"
    ):
        merge_shard_reports([*reports, again])


def test_reports_of_different_shard_counts_are_refused(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    two = shard_reports(objects, signer, 2)
    three = shard_reports(objects, signer, 3)
    with pytest.raises(ShardReportError, match=r"--merge shard-1.json: is shard 1/3; shard-0.json is one of 2"):
        merge_shard_reports([two[0], three[1]])


def test_a_report_of_another_archive_is_refused(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    reports = shard_reports(objects, signer, 2)
    foreign = ("other.json", dataclasses.replace(reports[1][1], archive="s3://other-bucket"))
    with pytest.raises(ShardReportError, match=r"--merge other.json: is a report of s3://other-bucket"):
        merge_shard_reports([reports[0], foreign])


def test_a_report_run_with_other_settings_is_refused(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    fast = shard_reports(objects, signer, 2)
    thorough = shard_reports(objects, signer, 2, check_all_signatures=True)
    with pytest.raises(ShardReportError, match=r"--merge shard-1.json: was verified with other settings"):
        merge_shard_reports([fast[0], thorough[1]])


def test_reports_over_different_listings_are_refused(signer: Ed25519Signer) -> None:
    objects, built = several_chains(signer)
    before = shard_reports(objects, signer, 2)
    _remove_superseded_chain(objects, built)
    after = shard_reports(objects, signer, 2)
    with pytest.raises(ShardReportError, match=r"--merge shard-1.json: saw 5 chains in the archive where shard-0.json"):
        merge_shard_reports([before[0], after[1]])


def test_a_report_missing_a_chain_of_its_shard_is_refused(signer: Ed25519Signer) -> None:
    objects, _ = several_chains(signer)
    reports = shard_reports(objects, signer, 2)
    name, report = reports[1]
    short = (name, dataclasses.replace(report, chains=report.chains[1:]))
    with pytest.raises(ShardReportError, match=r"--merge shard-1.json: does not hold the chains shard 1/2 checks"):
        merge_shard_reports([reports[0], short])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "is not JSON"),
        (b"[]", "is not a shard report"),
        (b'{"format": "collector-ext-verify-shard", "version": 9}', "is a shard report of version 9"),
        (b'{"format": "collector-ext-verify-shard", "version": 1}', "is a damaged shard report"),
    ],
)
def test_unreadable_reports_name_the_file(data: bytes, problem: str) -> None:
    with pytest.raises(ShardReportError, match=f"--merge r.json: {problem}"):
        decode_shard_report(data, "r.json")


def test_a_report_round_trips_through_json(signer: Ed25519Signer) -> None:
    objects, built = several_chains(signer)
    _modify_record(objects, built)
    for _name, report in shard_reports(objects, signer, 2):
        assert decode_shard_report(encode_shard_report(report), "x") == report


@pytest.mark.parametrize(
    ("text", "spec"), [("0/1", ShardSpec(0, 1)), ("3/4", ShardSpec(3, 4)), (" 2 / 5", ShardSpec(2, 5))]
)
def test_parse_shard(text: str, spec: ShardSpec) -> None:
    assert parse_shard(text) == spec


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/3", "0/0", "1/2/3"])
def test_bad_shard_names_the_option(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--shard"):
        parse_shard(text)


def test_shard_refuses_a_state(signer: Ed25519Signer) -> None:
    from collector_ext.verify.state import VerifierState

    objects, _ = several_chains(signer)
    state = VerifierState(archive="memory", archive_id=None)
    with pytest.raises(ConfigurationError, match="--shard"):
        asyncio.run(
            check_archive_with_state(
                _store(objects), {signer.key_id: signer.public_key}, state, _options(shard=ShardSpec(0, 2))
            )
        )
