"""Connection caps kept below the open-file limit (collector_ext.receive.descriptors)."""

from __future__ import annotations

import resource

from collector_ext.receive.descriptors import (
    MIN_CONNECTIONS,
    RESERVED_DESCRIPTORS,
    connection_cap,
    raise_open_file_limit,
)


def test_cap_leaves_the_reserve_free_for_both_receivers() -> None:
    assert connection_cap(256, 100_000) == 256
    assert connection_cap(1000, 1024) == (1024 - RESERVED_DESCRIPTORS) // 2
    assert 2 * connection_cap(10_000, 1024) + RESERVED_DESCRIPTORS <= 1024
    assert connection_cap(256, 100) == MIN_CONNECTIONS


def test_raising_the_limit_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        now = raise_open_file_limit()
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
