"""The spool is private and follows no links: modes whatever the umask, wider modes tightened at
start, and a link anywhere in the spool refused instead of written or read through."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_ext.errors import ConfigurationError
from collector_ext.files import write_atomically
from collector_ext.seal.keys import Ed25519Signer
from collector_ext.spool import (
    CLEAN_SHUTDOWN,
    LOCK,
    LOKI_CURSOR,
    SEGMENTS,
    Spool,
    SpoolError,
    list_segment_files,
    read_loki_cursor,
    segment_file_name,
    write_loki_cursor,
)
from tests.unit.test_spool import CHAIN, _fill


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask000", "umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_every_directory_is_0700_and_every_file_0600_whatever_the_umask(
    tmp_path: Path, signer: Ed25519Signer, umask: int
) -> None:
    directory = tmp_path / "deep" / "spool"
    spool = Spool(directory)
    spool.open()
    _fill(spool, signer, [1, 2])
    spool.mark_clean_shutdown()
    spool.close()

    assert _mode(directory) == 0o700
    assert _mode(directory / SEGMENTS) == 0o700
    for name in (LOCK, LOKI_CURSOR, CLEAN_SHUTDOWN):
        assert _mode(directory / name) == 0o600, name
    segment_files = list((directory / SEGMENTS).iterdir())
    assert len(segment_files) == 2
    assert {_mode(path) for path in segment_files} == {0o600}


def test_a_spool_with_wider_modes_is_tightened_at_start_and_that_is_logged(
    tmp_path: Path, signer: Ed25519Signer, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    _fill(spool, signer, [1])
    spool.close()
    segment = next((tmp_path / "spool" / SEGMENTS).iterdir())
    os.chmod(tmp_path / "spool", 0o755)
    os.chmod(segment, 0o644)
    os.chmod(tmp_path / "spool" / LOKI_CURSOR, 0o666)

    with caplog.at_level(logging.WARNING, logger="collector_ext.spool"):
        Spool(tmp_path / "spool").open()

    assert _mode(tmp_path / "spool") == 0o700
    assert _mode(segment) == 0o600
    assert _mode(tmp_path / "spool" / LOKI_CURSOR) == 0o600
    [record] = [r for r in caplog.records if "tightened" in r.getMessage()]
    assert record.tightened == 3  # type: ignore[attr-defined]
    assert any(str(segment) in example and "0644" in example for example in record.examples)  # type: ignore[attr-defined]


def test_a_spool_directory_that_is_a_link_is_a_configuration_error(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "spool").symlink_to(real)
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ConfigurationError) as caught:
        spool.open()
    assert caught.value.setting == "spool.directory"
    assert "symbolic link" in str(caught.value)
    spool.mark_clean_shutdown()  # the sidecar's stop after a failed start writes nothing either
    spool.close()
    assert list(real.iterdir()) == []


def test_a_segments_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / SEGMENTS).symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="segments is a symbolic link"):
        Spool(tmp_path / "spool").open()


def test_a_spool_directory_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "spool").write_bytes(b"")
    with pytest.raises(ConfigurationError) as caught:
        Spool(tmp_path / "spool").open()
    assert caught.value.setting == "spool.directory"
    assert "not a directory" in str(caught.value)


@pytest.mark.parametrize("name", [LOKI_CURSOR, LOCK, CLEAN_SHUTDOWN])
def test_a_dangling_link_in_the_spool_creates_nothing_outside_it(tmp_path: Path, name: str) -> None:
    spool_directory = tmp_path / "spool"
    spool_directory.mkdir()
    outside = tmp_path / "outside" / "planted"
    outside.parent.mkdir()
    (spool_directory / name).symlink_to(outside)

    with pytest.raises(ConfigurationError) as caught:
        Spool(spool_directory).open()

    assert caught.value.setting == "spool.directory"
    assert name in str(caught.value)
    assert not outside.exists()


def test_the_loki_cursor_is_never_written_or_read_through_a_link(tmp_path: Path) -> None:
    """The Loki process writes the cursor while the sidecar runs: a link planted meanwhile is refused."""
    outside = tmp_path / "outside"
    (tmp_path / LOKI_CURSOR).symlink_to(outside)
    with pytest.raises(SpoolError, match="symbolic link"):
        write_loki_cursor(tmp_path, CHAIN, 7)
    assert not outside.exists()

    outside.write_text(f"{CHAIN.hex()} 9")
    with pytest.raises(SpoolError, match="symbolic link"):
        read_loki_cursor(tmp_path, CHAIN)


def test_a_link_among_the_segment_files_is_refused_at_open_and_skipped_by_listings(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    _fill(spool, signer, [1, 1])
    spool.close()
    real = sorted((tmp_path / "spool" / SEGMENTS).iterdir())[-1]
    link = real.with_name(segment_file_name(CHAIN, 2, 2, 1_700_000_000_000_000_000))
    link.symlink_to(real)

    assert [s.path for s in list_segment_files(tmp_path / "spool")] == sorted(
        (tmp_path / "spool" / SEGMENTS).iterdir()
    )[:2]
    with pytest.raises(ConfigurationError, match="symbolic link"):
        Spool(tmp_path / "spool").open()


def test_an_atomic_write_replaces_links_and_never_writes_through_them(tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.write_bytes(b"untouched")
    (tmp_path / ".state.tmp").symlink_to(target)  # a planted temporary name
    (tmp_path / "state").symlink_to(target)

    write_atomically(tmp_path / "state", b"new")

    assert target.read_bytes() == b"untouched"
    assert not (tmp_path / "state").is_symlink()
    assert (tmp_path / "state").read_bytes() == b"new"
    assert _mode(tmp_path / "state") == 0o600


def test_a_spool_directory_another_user_owns_is_refused_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root of a Kubernetes volume belongs to root (mode 2777 with fsGroup): the sidecar cannot
    make it private, so the message says to use a subdirectory, which it creates itself."""
    (tmp_path / "volume").mkdir(mode=0o777)
    os.chmod(tmp_path / "volume", 0o2777)

    def not_owner(path: Path, mode: int, *, directory: bool) -> int | None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr("collector_ext.spool.tighten_mode", not_owner)
    with pytest.raises(ConfigurationError) as caught:
        Spool(tmp_path / "volume").open()
    assert caught.value.setting == "spool.directory"
    assert "mode 2777, owned by uid" in caught.value.problem
    assert "subdirectory" in caught.value.problem
    monkeypatch.undo()

    spool = Spool(tmp_path / "volume" / "spool")
    spool.open()
    spool.close()
    assert _mode(tmp_path / "volume" / "spool") == 0o700
