from __future__ import annotations

import asyncio

import pytest

from collector_ext.errors import ArchiveUnavailableError, PermanentArchiveError
from collector_ext.retry import RetryPolicy, backoff_delay, retry_async

POLICY = RetryPolicy(initial_delay=0.1, multiplier=2.0, max_delay=1.0, jitter=0.2)


def test_backoff_grows_exponentially_then_caps() -> None:
    assert [round(backoff_delay(a, POLICY, 0.5), 3) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_stays_inside_its_band() -> None:
    assert backoff_delay(2, POLICY, 0.0) == pytest.approx(0.4 * 0.8)
    assert backoff_delay(2, POLICY, 0.999999) == pytest.approx(0.4 * 1.2, rel=1e-5)


def test_server_hint_wins_and_is_capped() -> None:
    assert backoff_delay(0, POLICY, 0.5, hint=3.0) == 3.0
    assert backoff_delay(0, POLICY, 0.5, hint=999.0) == 10.0
    assert backoff_delay(0, POLICY, 0.5, hint=0.0) == pytest.approx(0.1)


def test_retries_delivery_errors_until_success() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ArchiveUnavailableError("down")
        return "ok"

    seen: list[int] = []
    result = asyncio.run(
        retry_async(flaky, policy=RetryPolicy(initial_delay=0.001), on_retry=lambda e, a, d: seen.append(a))
    )
    assert result == "ok"
    assert seen == [0, 1]


def test_does_not_retry_other_errors() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise PermanentArchiveError("AccessDenied")

    with pytest.raises(PermanentArchiveError):
        asyncio.run(retry_async(refused, policy=POLICY))
    assert len(calls) == 1


def test_stop_event_interrupts_the_wait() -> None:
    async def run() -> float:
        stop = asyncio.Event()

        async def down() -> None:
            raise ArchiveUnavailableError("down")

        loop = asyncio.get_running_loop()
        loop.call_later(0.05, stop.set)
        started = loop.time()
        with pytest.raises(ArchiveUnavailableError):
            await retry_async(down, policy=RetryPolicy(initial_delay=10, max_delay=10), stop=stop)
        return loop.time() - started

    assert asyncio.run(run()) < 1.0
