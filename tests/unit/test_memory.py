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
