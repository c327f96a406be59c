"""Keeping the sidecar's resident memory close to what it actually holds.

Segments pass through the process as buffers of hundreds of kilobytes to megabytes, allocated on
worker threads (spool reads) and freed on the event loop. glibc raises its mmap threshold each time
such a buffer is freed, after which buffers of that size come from the heap instead, and a heap
fragmented by them is not given back: under a long overload the process keeps tens of MiB it no
longer uses. Pinning the threshold at glibc's default (128 KiB) keeps every large buffer in its own
mapping, returned to the system when freed. Elsewhere (another libc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where that is not possible."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done
