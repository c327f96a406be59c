"""DirectoryArchive as the verifier's reader of a directory it does not trust: listing never follows or
opens anything, ``get`` reads only regular files, bounded, and never hangs."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collector_ext.deliver.archive import ListedObject
from collector_ext.deliver.directory_archive import DirectoryArchive
from collector_ext.errors import ObjectTooLargeError, UnreadableObjectError

CHAIN = "000102030405060708090a0b0c0d0e0f"
SEGMENT = f"{CHAIN}/segments/2026/09/21/00000000000000000000-00000000000000000009.cxseg"
CHECKPOINT = f"{CHAIN}/checkpoints/000000000000-00000000000000000009.cxckpt"
MiB = 1 << 20


def _listing(root: Path, under: str = "", start_after: str = "") -> list[ListedObject]:
    async def collect() -> list[ListedObject]:
        store = DirectoryArchive(root, for_writing=False)
        await store.open()
        return [listed async for listed in store.list_objects(under, start_after)]

    return asyncio.run(collect())


def _get(root: Path, key: str, max_bytes: int | None = None) -> bytes:
    return asyncio.run(DirectoryArchive(root, for_writing=False).get(key, max_bytes))


def _make(root: Path, key: str, data: bytes = b"x") -> Path:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    _make(archive, SEGMENT, b"segment bytes")
    _make(archive, CHECKPOINT, b"checkpoint")
    return archive


def test_regular_files_are_listed_in_key_order_with_their_sizes(root: Path) -> None:
    _make(root, f"{CHAIN}/segments/2026/09/21/.{SEGMENT.rsplit('/', 1)[1]}.tmp", b"half-written")
    _make(root, ".hidden/notes.txt", b"hi")
    assert _listing(root) == [
        ListedObject(".hidden/notes.txt", 2),
        ListedObject(CHECKPOINT, 10),
        ListedObject(SEGMENT, 13),
    ]
    assert _listing(root, under=f"{CHAIN}/segments/") == [ListedObject(SEGMENT, 13)]
    assert _listing(root, start_after=CHECKPOINT) == [ListedObject(SEGMENT, 13)]
    assert _get(root, SEGMENT) == b"segment bytes"


def test_a_fifo_named_like_a_segment_is_listed_with_a_problem_and_never_blocks(root: Path) -> None:
    fifo_key = f"{CHAIN}/segments/2026/09/21/00000000000000000010-00000000000000000019.cxseg"
    os.mkfifo(root / fifo_key)
    started = time.monotonic()
    listed = {item.key: item for item in _listing(root)}
    assert listed[fifo_key] == ListedObject(fifo_key, 0, "is a FIFO, not a regular file")
    with pytest.raises(UnreadableObjectError, match="FIFO") as error:
        _get(root, fifo_key)
    assert error.value.key == fifo_key
    assert time.monotonic() - started < 5


def test_a_fifo_swapped_in_after_the_look_is_opened_without_blocking(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the look before opening cannot close: the entry was a regular file when looked at and
    # is a FIFO when opened. The open must not wait for a writer.
    os.mkfifo(root / "fifo")
    real_stat = os.stat

    def looks_regular(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        info = real_stat(path, *args, **kwargs)
        if path == "fifo":
            return os.stat_result((stat.S_IFREG | 0o444, *tuple(info)[1:]))
        return info

    monkeypatch.setattr(os, "stat", looks_regular)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            _get(root, "fifo")
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # release it before failing
        os.close(os.open(root / "fifo", os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("opening a FIFO blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], UnreadableObjectError), outcome
    assert "FIFO" in str(outcome[0])


def test_a_dangling_symbolic_link_is_a_problem_not_an_abort(root: Path) -> None:
    dangling = f"{CHAIN}/checkpoints/000000000001-00000000000000000019.cxckpt"
    os.symlink("/nonexistent/target", root / dangling)
    listed = {item.key: item for item in _listing(root)}
    assert listed[dangling].problem.startswith("is a dangling symbolic link")
    assert listed[SEGMENT].problem == ""  # the rest of the archive is still listed
    with pytest.raises(UnreadableObjectError, match="symbolic link"):
        _get(root, dangling)


def test_a_symbolic_link_to_a_file_is_never_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"not archive data")
    key = f"{CHAIN}/segments/2026/09/22/00000000000000000010-00000000000000000019.cxseg"
    (root / key).parent.mkdir(parents=True)
    os.symlink(outside, root / key)
    listed = {item.key: item for item in _listing(root)}
    assert listed[key].size == 0
    assert "symbolic link to a file outside the archive" in listed[key].problem
    with pytest.raises(UnreadableObjectError, match="symbolic link"):
        _get(root, key)


def test_a_symbolically_linked_directory_outside_the_archive_is_listed_not_walked(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _make(elsewhere, "segments/2026/09/21/00000000000000000000-00000000000000000009.cxseg", b"foreign")
    other_chain = "ff" * 16
    os.symlink(elsewhere, root / other_chain)
    listing = _listing(root)
    linked = [item for item in listing if item.key.startswith(other_chain)]
    assert len(linked) == 1
    assert linked[0].key == other_chain
    assert "symbolic link to a directory outside the archive" in linked[0].problem
    # Reading through the linked directory is refused too, even for a key it would hold.
    with pytest.raises(UnreadableObjectError, match="symbolic link"):
        _get(root, f"{other_chain}/segments/2026/09/21/00000000000000000000-00000000000000000009.cxseg")


def test_the_archive_root_itself_may_be_a_symbolic_link(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link-to-archive"
    os.symlink(root, link)
    assert [item.key for item in _listing(link)] == [CHECKPOINT, SEGMENT]
    assert _get(link, SEGMENT) == b"segment bytes"


def test_a_directory_that_cannot_be_listed_is_a_problem_not_an_abort(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = root / CHAIN / "segments" / "2026" / "09" / "22"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        # chmod 0 does not stop root, which runs these tests in CI; refuse as the kernel would.
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listed = {item.key: item for item in _listing(root)}
    assert listed[f"{CHAIN}/segments/2026/09/22"] == ListedObject(
        f"{CHAIN}/segments/2026/09/22", 0, "is a directory that cannot be listed: Permission denied"
    )
    assert listed[SEGMENT].problem == ""


def test_a_socket_is_listed_with_a_problem(root: Path) -> None:
    import socket

    path = root / "s"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert _listing(root, under="s") == [ListedObject("s", 0, "is a socket, not a regular file")]
        with pytest.raises(UnreadableObjectError, match="socket"):
            _get(root, "s")


def test_a_name_that_is_not_utf8_is_a_problem(root: Path) -> None:
    name = os.fsdecode(b"bad-\xff-name")
    (root / name).write_bytes(b"x")
    listed = [item for item in _listing(root) if item.key.startswith("bad-")]
    assert listed == [ListedObject(name, 0, "has a name that is not valid UTF-8; it was not read")]


def test_an_object_over_the_limit_is_refused_without_being_read(root: Path) -> None:
    huge = f"{CHAIN}/segments/2026/09/21/00000000000000000010-00000000000000000019.cxseg"
    with open(root / huge, "wb") as handle:
        handle.truncate(100 * MiB)  # sparse: no disk used, but reading it would take 100 MiB
    assert {item.key: item.size for item in _listing(root)}[huge] == 100 * MiB
    started = time.monotonic()
    with pytest.raises(ObjectTooLargeError) as error:
        _get(root, huge, max_bytes=64 * MiB)
    assert time.monotonic() - started < 1
    assert (error.value.key, error.value.size, error.value.limit) == (huge, 100 * MiB, 64 * MiB)
    assert "104857600 bytes" in str(error.value)
    # Within the limit it is read.
    assert _get(root, SEGMENT, max_bytes=13) == b"segment bytes"
    with pytest.raises(ObjectTooLargeError):
        _get(root, SEGMENT, max_bytes=12)


def test_a_file_that_grew_after_it_was_opened_is_a_problem(root: Path) -> None:
    path = root / "growing"
    path.write_bytes(b"a" * 1000)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        with open(path, "ab") as handle:
            handle.write(b"b" * 1000)
        with pytest.raises(UnreadableObjectError, match="grew beyond its 1000 bytes"):
            DirectoryArchive._read_exactly(descriptor, "growing", size)
    finally:
        os.close(descriptor)


def test_a_file_growing_while_it_is_read_does_not_keep_the_reader_busy(root: Path) -> None:
    path = root / "growing"
    path.write_bytes(b"a" * MiB)
    stop = threading.Event()

    def grow() -> None:
        with open(path, "ab") as handle:
            while not stop.is_set() and handle.tell() < 64 * MiB:
                handle.write(b"b" * 65536)
                handle.flush()
                time.sleep(0.0005)

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        started = time.monotonic()
        reasons = []
        for _ in range(20):
            try:
                data = _get(root, "growing", max_bytes=1 << 30)
            except UnreadableObjectError as exc:
                reasons.append(exc.reason)
                continue
            # Read whole only when nothing was added between opening and the end of the read.
            assert data.startswith(b"a" * MiB)
        assert all("changed while it was read" in reason for reason in reasons), reasons
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        writer.join()


def test_a_file_that_shrinks_while_it_is_read_is_a_problem(root: Path) -> None:
    path = root / "shrinking"
    path.write_bytes(b"z" * 1000)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, 10)
        with pytest.raises(UnreadableObjectError, match="ended after 10 of its 1000 bytes"):
            DirectoryArchive._read_exactly(descriptor, "shrinking", 1000)
    finally:
        os.close(descriptor)


def test_a_vanished_object_is_unreadable(root: Path) -> None:
    with pytest.raises(UnreadableObjectError, match="no longer exists"):
        _get(root, f"{CHAIN}/segments/2026/09/21/00000000000000000099-00000000000000000099.cxseg")


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "a//b", ""])
def test_keys_that_leave_the_archive_are_refused(root: Path, key: str) -> None:
    with pytest.raises(UnreadableObjectError, match="not a key inside the archive"):
        _get(root, key)


def test_list_keys_still_lists_every_entry_for_the_writer(root: Path) -> None:
    os.mkfifo(root / "fifo")

    async def keys() -> list[str]:
        return [key async for key in DirectoryArchive(root).list_keys()]

    assert asyncio.run(keys()) == [CHECKPOINT, SEGMENT, "fifo"]
