"""The one retry loop: exponential backoff with jitter, server hints, a deadline, and shutdown.

Modelled on the OpenTelemetry OTLP exporter's export loop. ``backoff_delay`` is pure so its numbers
are unit-tested; ``retry_async`` is the only place in the sidecar that waits and tries again.
Adapters say what is retryable by raising ``DeliveryError`` (optionally with a ``retry_after`` hint)
and what is not by raising anything else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from collector_ext.errors import DeliveryError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.2  # +/- this fraction of the delay


def backoff_delay(attempt: int, policy: RetryPolicy, random_fraction: float, hint: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    Args:
        random_fraction: a number in [0, 1) that places the delay inside the jitter band.
        hint: the server's own delay (gRPC RetryInfo, HTTP Retry-After); honoured when given, never
            shortened by jitter and capped at ten times ``max_delay``.
    """
    if hint is not None and hint > 0:
        return min(hint, policy.max_delay * 10)
    base = min(policy.max_delay, policy.initial_delay * policy.multiplier**attempt)
    return base * (1 - policy.jitter + 2 * policy.jitter * random_fraction)


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    stop: asyncio.Event | None = None,
    deadline: float | None = None,
    on_retry: Callable[[DeliveryError, int, float], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, raises a non-``DeliveryError``, or time runs out.

    Args:
        stop: when set, waiting ends early and the last ``DeliveryError`` is raised.
        deadline: a ``time.monotonic()`` instant after which the last error is raised.
        on_retry: called with (error, attempt, delay) before each wait, e.g. to log or count.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except DeliveryError as exc:
            hint = getattr(exc, "retry_after", None)
            delay = backoff_delay(attempt, policy, random.random(), hint)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            if stop is not None and stop.is_set():
                raise
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            attempt += 1
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                else:
                    raise
