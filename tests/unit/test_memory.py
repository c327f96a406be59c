"""glibc's mmap threshold can be pinned (the sidecar does it at start-up)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from collector_ext.memory import pin_mmap_threshold


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pinning_the_mmap_threshold_succeeds_on_glibc() -> None:
    assert ctypes.util.find_library("c") is not None
    assert pin_mmap_threshold()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
async def test_heap_trimmer_trims_once_shortly_after_a_large_request() -> None:
    import asyncio

    from collector_ext.memory import HeapTrimmer

    trimmer = HeapTrimmer(threshold_bytes=1000, delay=0.05)
    trimmer.request_ended(999)  # small: nothing scheduled
    trimmer.request_ended(5000)
    trimmer.request_ended(5000)  # the same burst: one trim
    await asyncio.sleep(0.2)
    assert trimmer.trims == 1


def test_settling_the_garbage_collector_freezes_start_up_and_collects_the_young_less_often() -> None:
    import gc

    from collector_ext.memory import YOUNG_GENERATION_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
