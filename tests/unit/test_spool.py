"""The spool directory on a real filesystem: atomic appends, what a crash leaves, trimming, locking,
and a full disk (injected at the write, the only place it can strike)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from collector_ext.errors import ConfigurationError
from collector_ext.seal.chain import ChainHead, chain_entries
from collector_ext.seal.entry import EntryKind
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.seal.segment import encode_segment
from collector_ext.spool import (
    SEGMENTS,
    Spool,
    SpoolError,
    SpoolFullError,
    list_segment_files,
    read_loki_cursor,
    write_loki_cursor,
)

CHAIN = bytes(range(16))


def _segment(signer: Ed25519Signer, head: ChainHead, count: int) -> tuple[bytes, ChainHead]:
    kind = EntryKind.GENESIS if head.next_sequence == 0 else EntryKind.LOG_RECORD
    batch = chain_entries(head, kind, [b"p%d" % i for i in range(count)], signer.key_id, 1_700_000_000_000_000_000)
    data = encode_segment(
        chain_id=head.chain_id,
        first_sequence=batch.first_sequence,
        created_unix_nano=1_700_000_000_000_000_000,
        entries=batch.entries,
        signatures=[bytes(64)] * count,
    )
    return data, batch.head


def _fill(spool: Spool, signer: Ed25519Signer, sizes: list[int]) -> ChainHead:
    head = ChainHead.new(CHAIN)
    for count in sizes:
        data, after = _segment(signer, head, count)
        spool.append(CHAIN, head.next_sequence, after.next_sequence - 1, 1_700_000_000_000_000_000, data)
        head = after
    return head


def test_reopen_finds_the_head_and_every_file(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    assert spool.open().head is None
    head = _fill(spool, signer, [1, 3, 5])
    spool.close()

    contents = Spool(tmp_path).open()
    assert contents.head == head
    assert contents.key_id == signer.key_id
    assert [(s.first_sequence, s.last_sequence) for s in contents.segments] == [(0, 0), (1, 3), (4, 8)]
    assert not contents.previous_run_clean


def test_clean_shutdown_marker_is_read_once(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    _fill(spool, signer, [1])
    spool.mark_clean_shutdown()
    spool.close()
    first = Spool(tmp_path)
    assert first.open().previous_run_clean
    first.close()
    assert not Spool(tmp_path).open().previous_run_clean


def test_a_crash_mid_write_leaves_only_a_temporary_file_that_is_removed(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    head = _fill(spool, signer, [1, 2])
    spool.close()
    torn = tmp_path / SEGMENTS / ".half-written.cxseg.tmp"
    torn.write_bytes(b"CXSEG\0v1 partial")
    contents = Spool(tmp_path).open()
    assert contents.head == head
    assert not torn.exists()


def test_a_missing_file_in_the_middle_is_refused_by_name(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    _fill(spool, signer, [1, 2, 2])
    middle = spool.segments[1].path
    spool.close()
    middle.unlink()
    with pytest.raises(SpoolError, match="skips from sequence 0"):
        Spool(tmp_path).open()


def test_a_damaged_newest_file_is_refused_by_name(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    _fill(spool, signer, [1, 2])
    newest = spool.segments[-1].path
    spool.close()
    os.chmod(newest, 0o644)
    newest.write_bytes(newest.read_bytes()[:-10])
    with pytest.raises(SpoolError, match=newest.name):
        Spool(tmp_path).open()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(ConfigurationError, match="in use by another collector-ext process"):
        Spool(tmp_path).open()
    first.close()
    Spool(tmp_path).open()


def test_trim_keeps_the_newest_file(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    _fill(spool, signer, [1, 2, 2])
    before = spool.used_bytes
    assert spool.trim(through_sequence=1) == 1  # only 0..0 lies wholly at or before 1
    assert spool.trim(through_sequence=100) == 1  # 1..2 goes, 3..4 is the newest and stays
    assert [(s.first_sequence, s.last_sequence) for s in spool.segments] == [(3, 4)]
    assert spool.used_bytes == spool.segments[0].size < before
    spool.close()
    assert Spool(tmp_path).open().head is not None


def test_disk_full_adds_nothing_and_harms_nothing(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.open()
    head = _fill(spool, signer, [1, 2])
    kept = {s.path: s.path.read_bytes() for s in spool.segments}
    data, after = _segment(signer, head, 4)
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SpoolFullError, match="no space left"):
        spool.append(CHAIN, head.next_sequence, after.next_sequence - 1, 1, data)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {s.path: s.path.read_bytes() for s in spool.segments} == kept
    assert not list((tmp_path / SEGMENTS).glob(".*"))
    # Space is back: the same segment goes in.
    spool.append(CHAIN, head.next_sequence, after.next_sequence - 1, 1, data)
    spool.close()
    assert Spool(tmp_path).open().head == after


def test_appends_must_follow_the_head(tmp_path: Path, signer: Ed25519Signer) -> None:
    spool = Spool(tmp_path)
    spool.open()
    head = _fill(spool, signer, [1])
    data, _ = _segment(signer, head, 1)
    with pytest.raises(SpoolError, match="does not follow"):
        spool.append(CHAIN, head.next_sequence + 1, head.next_sequence + 1, 1, data)


def test_loki_cursor_belongs_to_one_chain(tmp_path: Path) -> None:
    assert read_loki_cursor(tmp_path, CHAIN) == -1
    write_loki_cursor(tmp_path, CHAIN, 41)
    assert read_loki_cursor(tmp_path, CHAIN) == 41
    assert read_loki_cursor(tmp_path, bytes(16)) == -1


def test_listing_survives_a_file_trimmed_while_it_looks(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Loki sender lists the spool while the sidecar trims it: a file that vanishes between the
    directory read and its stat is skipped, not an error (an error stopped the sender's reader)."""
    spool = Spool(tmp_path)
    spool.open()
    _fill(spool, signer, [1, 2, 2])
    vanishing = spool.segments[0].path
    real_scandir = os.scandir

    class Trimmed:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._entry = entry
            self.path = entry.path

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            if self.path == str(vanishing):
                raise FileNotFoundError(self.path)
            return self._entry.stat(follow_symlinks=follow_symlinks)

    class Listing:
        def __init__(self, path: Path) -> None:
            self._inner = real_scandir(path)

        def __enter__(self) -> list[Trimmed]:
            return [Trimmed(entry) for entry in self._inner]

        def __exit__(self, *exc: object) -> None:
            self._inner.close()

    monkeypatch.setattr(os, "scandir", Listing)
    listed = list_segment_files(tmp_path)
    assert [s.first_sequence for s in listed] == [1, 3]
