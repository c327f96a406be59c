"""The verifier's peak memory against the largest objects the format allows (README, "The verifier
against hostile archives"): `collector-ext verify` runs in a subprocess on a directory archive and its
peak resident memory (ru_maxrss of the finished child) must stay under 300 MiB.

The archives hold what a hostile writer may put in within the limits of FORMAT.md 4.1: a segment of
the maximum 262,144 records in nearly 64 MiB, not covered by any checkpoint (so every signature is
checked), verified with an unpinned key, with the right key and every signature bad
(``--all-signatures``), clean, and with its records stored in reverse order; several such segments at
once, so that reading ahead holds more than one; and a segment of 64 MiB made of a few entries of nearly 16 MiB. Each test prints its peak as
``PEAK <case> <MiB>`` (run with -s to see them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector_ext.seal.chain import ChainHead, chain_entries, genesis_payload, sign_entry_hashes
from collector_ext.seal.entry import ENTRY_HEADER_SIZE, EntryKind
from collector_ext.seal.framing import MAX_ENTRY_BYTES, MAX_SEGMENT_OBJECT_BYTES, MAX_SEGMENT_RECORDS
from collector_ext.seal.keys import Ed25519Signer, generate_key_pair, load_private_key_pem
from collector_ext.seal.layout import segment_key
from collector_ext.seal.segment import decode_segment, encode_segment

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
RSS_LIMIT = 300 * MIB
CLI = [sys.executable, "-m", "collector_ext.cli"]
BASE_TIME = 1_790_000_000_000_000_000
CHAIN_ID = bytes(range(16))
ARCHIVE_ID = "s3://audit-bucket/memory"
# Per record on the wire: the SealedRecord tag and length (1 + 2), the entry's tag and length (1 + 2)
# and the signature field (66), for entries of 128 to 16,383 bytes.
_RECORD_WIRE_BYTES = 72
_HEADER_ALLOWANCE = 64  # the frame's 16 bytes and the segment header's field


@dataclass(frozen=True)
class Keys:
    signer: Ed25519Signer
    public: Path  # the signer's public key file
    other: Path  # another key's public key file


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    base = tmp_path_factory.mktemp("keys")
    pair, other = generate_key_pair(), generate_key_pair()
    (base / "signing.pub").write_bytes(pair.public_pem)
    (base / "other.pub").write_bytes(other.public_pem)
    return Keys(load_private_key_pem(pair.private_pem, "test"), base / "signing.pub", base / "other.pub")


def _segments(
    signer: Ed25519Signer,
    payloads: Sequence[Sequence[bytes]],
    sign: Callable[[Ed25519Signer, list[bytes]], list[bytes]],
) -> list[tuple[str, bytes]]:
    """Segment objects of one chain from its genesis, one per list of log payloads (the genesis goes
    first in the first), with ``sign(signer, entry hashes)`` as their record signatures."""
    head = ChainHead.new(CHAIN_ID)
    genesis = genesis_payload(signer.public_key, writer="test", reason="memory", archive_id=ARCHIVE_ID)
    objects = []
    for index, run in enumerate(payloads):
        first = head.next_sequence
        entries: list[bytes] = []
        hashes: list[bytes] = []
        if first == 0:
            batch = chain_entries(head, EntryKind.GENESIS, [genesis], signer.key_id, BASE_TIME)
            head, entries, hashes = batch.head, batch.entries, batch.hashes
            run = run[1:]
        batch = chain_entries(head, EntryKind.LOG_RECORD, run, signer.key_id, BASE_TIME + index)
        head = batch.head
        entries += batch.entries
        hashes += batch.hashes
        data = encode_segment(
            chain_id=CHAIN_ID,
            first_sequence=first,
            created_unix_nano=BASE_TIME,
            entries=entries,
            signatures=sign(signer, hashes),
        )
        assert len(data) <= MAX_SEGMENT_OBJECT_BYTES
        objects.append((segment_key("", CHAIN_ID, first, first + len(entries) - 1, BASE_TIME), data))
    return objects


def _bad_signatures(_signer: Ed25519Signer, hashes: list[bytes]) -> list[bytes]:
    return [bytes(64)] * len(hashes)


def _good_signatures(signer: Ed25519Signer, hashes: list[bytes]) -> list[bytes]:
    return sign_entry_hashes(signer, hashes)


def _most_records(segments: int = 1) -> list[list[bytes]]:
    """``segments`` lists of 262,144 log payloads, each list filling a segment of nearly 64 MiB."""
    entry_bytes = (MAX_SEGMENT_OBJECT_BYTES - _HEADER_ALLOWANCE) // MAX_SEGMENT_RECORDS - _RECORD_WIRE_BYTES
    size = entry_bytes - ENTRY_HEADER_SIZE
    return [[f"s{s} r{i:08d} ".encode().ljust(size, b"x") for i in range(MAX_SEGMENT_RECORDS)] for s in range(segments)]


def _largest_entries() -> list[list[bytes]]:
    """One segment of nearly 64 MiB: four entries of nearly 16 MiB (the genesis first)."""
    size = (MAX_SEGMENT_OBJECT_BYTES - 4096) // 4 - ENTRY_HEADER_SIZE
    assert size + ENTRY_HEADER_SIZE <= MAX_ENTRY_BYTES
    return [[b"", *(bytes([65 + i]) * size for i in range(4))]]


def _write(root: Path, objects: Sequence[tuple[str, bytes]]) -> None:
    for key, data in objects:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# Runs the CLI and, as it exits, writes its peak RSS (VmHWM, of this process image only: a child's
# ru_maxrss would include the parent's RSS at fork) to the file named by its first argument.
_MEASURED_CLI = """
import atexit, runpy, sys
def _peak(path=sys.argv[1]):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(_peak)
sys.argv = ["collector-ext", *sys.argv[2:]]
runpy.run_module("collector_ext.cli", run_name="__main__")
"""


def _verify_peak(root: Path, public_key: Path, *extra: str) -> tuple[int, dict[str, object]]:
    """Run `collector-ext verify --json` on ``root``: its peak RSS in bytes and its report."""
    peak_path = root.with_suffix(".peak")
    command = [sys.executable, "-c", _MEASURED_CLI, str(peak_path), "verify", "--archive", str(root)]
    command += ["--archive-id", ARCHIVE_ID, "--public-key", str(public_key), "--json", *extra]
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    report: dict[str, object] = json.loads(done.stdout)
    return int(peak_path.read_text()) * 1024, report


def _peak_under_limit(case: str, root: Path, public_key: Path, *extra: str) -> dict[str, object]:
    peak, report = _verify_peak(root, public_key, *extra)
    print(f"\nPEAK {case} {peak / MIB:.0f} MiB", flush=True)
    assert peak < RSS_LIMIT, f"{case}: peak RSS {peak / MIB:.0f} MiB"
    return report


def _kinds(report: dict[str, object]) -> set[str]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {finding["kind"] for finding in findings}


@pytest.fixture(scope="module")
def most_records_bad(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("most-records-bad") / "archive"
    _write(root, _segments(keys.signer, _most_records(), _bad_signatures))
    return root


def test_most_records_with_an_unpinned_key(most_records_bad: Path, keys: Keys) -> None:
    report = _peak_under_limit("most-records-unpinned", most_records_bad, keys.other)
    assert _kinds(report) == {"unknown-key"}


def test_most_records_with_every_signature_bad(most_records_bad: Path, keys: Keys) -> None:
    report = _peak_under_limit("most-records-all-bad", most_records_bad, keys.public, "--all-signatures")
    assert _kinds(report) == {"modified-record"}


def test_most_records_clean(keys: Keys, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    _write(root, _segments(keys.signer, _most_records(), _good_signatures))
    report = _peak_under_limit("most-records-clean", root, keys.public)
    assert _kinds(report) == {"uncovered-tail"}


def test_largest_entries(keys: Keys, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    _write(root, _segments(keys.signer, _largest_entries(), _good_signatures))
    report = _peak_under_limit("largest-entries", root, keys.public, "--all-signatures")
    assert _kinds(report) == {"uncovered-tail"}


def test_several_segments_of_most_records_read_ahead(keys: Keys, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    _write(root, _segments(keys.signer, _most_records(2), _bad_signatures))
    report = _peak_under_limit("two-segments-unpinned", root, keys.other)
    assert _kinds(report) == {"unknown-key"}


def test_most_records_stored_in_reverse_order(keys: Keys, tmp_path: Path) -> None:
    # Every record out of place: the walk puts them in order of sequence number and parses each one
    # on its own from its offset; 262,143 reordered-record findings, of which 10,000 are listed.
    ((key, data),) = _segments(keys.signer, _most_records(), _good_signatures)
    decoded = decode_segment(data)
    records = list(decoded.records)
    root = tmp_path / "archive"
    _write(
        root,
        [
            (
                key,
                encode_segment(
                    chain_id=CHAIN_ID,
                    first_sequence=decoded.first_sequence,
                    created_unix_nano=decoded.created_unix_nano,
                    entries=[record.entry for record in reversed(records)],
                    signatures=[record.signature for record in reversed(records)],
                ),
            )
        ],
    )
    del records, decoded, data
    report = _peak_under_limit("most-records-reversed", root, keys.public)
    assert _kinds(report) == {"reordered-record", "uncovered-tail"}
    findings = report["findings"]
    assert isinstance(findings, list)
    assert sum(finding["count"] for finding in findings if finding["kind"] == "reordered-record") == (
        MAX_SEGMENT_RECORDS - 1
    )
