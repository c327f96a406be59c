"""Admission of OTLP requests: one memory budget and one request count shared by both receivers.

Every request in flight, on either receiver, holds a ``Reservation`` against the same
``AdmissionControl``. The receivers charge it *before* the memory is spent: the body's bytes on the
wire as they are read (an HTTP Content-Length up front), the inflated bytes as gzip or deflate
produce them, and, before a body is parsed, an estimate of what the parsed objects will take
(``receive.wire_cost``). A charge that does not fit the room left raises ``AdmissionRefusedError``: a
``DeliveryError``, answered UNAVAILABLE with RetryInfo / 503 with Retry-After, which the collector
retries. A request that could not fit even into an empty budget is refused for good with
``RequestTooLargeError`` (RESOURCE_EXHAUSTED / 413) naming the setting to raise, because retrying it
would never succeed.

Bodies still arriving are the cheap way to hold memory: a client sends most of a body and stops. So
what a request holds of a body still arriving, beyond a small allowance (``ARRIVING_ALLOWANCE``), comes
out of at most half the budget; the other half stays for bodies that have arrived whole and are being
inflated or decoded, so a slow or stalled client cannot starve the others. Compressed bodies are
inflated only once they have arrived whole, so a stalled compression bomb holds only its compressed
bytes.

This module is arithmetic only: no sockets, no clocks, no asyncio. The receivers (otlp_grpc,
otlp_http) are the adapters that call it. It does not measure memory; the parse factors below are
measurements of this code base's protobuf runtime, refreshed with the command in their comment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from collector_ext.errors import DeliveryError, RequestTooLargeError
from collector_ext.receive.validate import DEFAULT_REQUEST_LIMITS, RequestLimits

# What decoding costs beyond the decoded body, per byte of it. Measured with the upb protobuf runtime
# and CPython's json (RSS growth while parsing, over the body's size): a protobuf batch of typical
# records (8 attributes, a short body) took 4.2x, one record with a million attributes 14.7x;
# OTLP/JSON took 8.8x (typical) to 12.8x (a million attributes) in json.loads before the protobuf
# objects were built. Costs per record, per protobuf element and per JSON object come on top
# (receive.wire_cost), so bodies of many tiny elements are priced by what they hold, not by their
# size; the protobuf factor is what strings cost (parsed, the record re-encoded, its payload).
PROTOBUF_DECODE_FACTOR = 3
JSON_DECODE_FACTOR = 12
# What a body still arriving may hold outside the arriving half of the budget (a typical request's
# body arrives whole within it).
ARRIVING_ALLOWANCE = 1024 * 1024


class AdmissionRefusedError(DeliveryError):
    """The budget or the request count is used up now; the request may be retried later."""


def decode_cost(body_bytes: int, *, json: bool) -> int:
    """The per-byte part of what parsing a body of ``body_bytes`` costs (protobuf or OTLP/JSON)."""
    return body_bytes * (JSON_DECODE_FACTOR if json else PROTOBUF_DECODE_FACTOR)


@dataclass(frozen=True)
class AdmissionSettings:
    """``max_inflight_bytes``: the budget; ``max_requests``: requests in flight on both receivers."""

    max_inflight_bytes: int
    max_requests: int

    def __post_init__(self) -> None:
        if self.max_inflight_bytes < 1 or self.max_requests < 1:
            raise ValueError("max_inflight_bytes and max_requests must be positive")


@dataclass(frozen=True)
class ReceiverLimits:
    """The limits each receiver applies to its own connections (the composition root fills them in
    from the ``limits:`` settings; the defaults are those settings' defaults)."""

    max_connections: int = 256
    idle_timeout: float = 30.0
    body_timeout: float = 10.0
    request: RequestLimits = DEFAULT_REQUEST_LIMITS  # what one request may hold (checked after decoding)

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.idle_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("max_connections and the timeouts must be positive")


DEFAULT_ADMISSION = AdmissionSettings(max_inflight_bytes=128 * 1024 * 1024, max_requests=64)


@dataclass(frozen=True)
class AdmissionSnapshot:
    inflight_bytes: int
    requests: int
    refused: int
    arriving_bytes: int


class AdmissionControl:
    """The shared budget. Thread-safe: large bodies are inflated and decoded in worker threads."""

    def __init__(self, settings: AdmissionSettings, on_request_end: Callable[[int], None] | None = None) -> None:
        """``on_request_end(peak)`` is told the most each request held, when it ends (from the
        thread that closes the reservation)."""
        self.settings = settings
        self._on_request_end = on_request_end
        self._in_use = 0
        self._requests = 0
        self._refused = 0
        self._arriving = 0
        self._lock = threading.Lock()

    def snapshot(self) -> AdmissionSnapshot:
        return AdmissionSnapshot(self._in_use, self._requests, self._refused, self._arriving)

    def admit(self) -> Reservation:
        """A reservation for one new request, holding nothing yet.

        Raises:
            AdmissionRefusedError: ``max_requests`` requests are already in flight.
        """
        with self._lock:
            if self._requests >= self.settings.max_requests:
                self._refused += 1
                raise AdmissionRefusedError(
                    f"{self._requests} requests are in flight, the most limits.max_concurrent_requests allows"
                )
            self._requests += 1
        return Reservation(self)

    def _take(self, nbytes: int, held: int, what: str, arriving: int = 0, arriving_held: int = 0) -> None:
        with self._lock:
            self._take_locked(nbytes, held, what, arriving, arriving_held)
            self._arriving += arriving

    def _take_locked(self, nbytes: int, held: int, what: str, arriving: int, arriving_held: int) -> None:
        capacity = self.settings.max_inflight_bytes
        if arriving and arriving_held + arriving > capacity // 2:
            self._refused += 1
            raise RequestTooLargeError(
                f"{what} is larger than a body may be while it arrives: half of "
                f"limits.max_inflight_bytes={capacity} (plus {ARRIVING_ALLOWANCE}); send smaller batches; "
                "nothing was sealed"
            )
        if arriving and self._arriving + arriving > capacity // 2:
            self._refused += 1
            raise AdmissionRefusedError(
                f"bodies still arriving hold half the receivers' memory budget (limits.max_inflight_bytes={capacity})"
            )
        if held + nbytes > capacity:
            self._refused += 1
            raise RequestTooLargeError(
                f"{what} needs {held + nbytes} bytes of memory to receive and decode, more than "
                f"limits.max_inflight_bytes={capacity} allows for all requests together; send smaller "
                "batches; nothing was sealed"
            )
        if self._in_use + nbytes > capacity:
            self._refused += 1
            raise AdmissionRefusedError(
                f"the receivers' memory budget (limits.max_inflight_bytes={capacity}) is in use by other requests"
            )
        self._in_use += nbytes

    def _give_back(self, nbytes: int, arriving: int = 0) -> None:
        with self._lock:
            self._in_use -= nbytes
            self._arriving -= arriving

    def _end(self, held: int, arriving: int, peak: int) -> None:
        with self._lock:
            self._in_use -= held
            self._arriving -= arriving
            self._requests -= 1
        if self._on_request_end is not None:
            self._on_request_end(peak)


class Reservation:
    """What one request holds of the budget; ``close`` (or leaving the ``with`` block) returns it all."""

    def __init__(self, control: AdmissionControl) -> None:
        self._control = control
        self._held = 0
        self._peak = 0
        self._received = 0  # bytes of a body still arriving
        self._closed = False

    @property
    def held(self) -> int:
        return self._held

    @property
    def room_alone(self) -> int:
        """The most this request could still take if it had the budget to itself."""
        return self._control.settings.max_inflight_bytes - self._held

    def charge(self, nbytes: int, what: str = "the request") -> None:
        """Hold ``nbytes`` more.

        Raises:
            AdmissionRefusedError: the budget has no room now (retry later).
            RequestTooLargeError: the request alone would exceed the whole budget.
        """
        if self._closed:
            raise RuntimeError("reservation already closed")
        if nbytes <= 0:
            return
        self._control._take(nbytes, self._held, what)
        self._held += nbytes
        self._peak = max(self._peak, self._held)

    def _arriving_part(self, received: int) -> int:
        return max(0, received - ARRIVING_ALLOWANCE)

    def charge_arriving(self, nbytes: int, what: str = "the request body") -> None:
        """Hold ``nbytes`` more of a body that is still arriving (see the module docstring).

        Raises:
            AdmissionRefusedError: the budget, or its half for arriving bodies, has no room now.
            RequestTooLargeError: the body alone would exceed that half.
        """
        if self._closed:
            raise RuntimeError("reservation already closed")
        if nbytes <= 0:
            return
        before = self._arriving_part(self._received)
        extra = self._arriving_part(self._received + nbytes) - before
        self._control._take(nbytes, self._held, what, extra, before)
        self._held += nbytes
        self._peak = max(self._peak, self._held)
        self._received += nbytes

    def body_arrived(self) -> None:
        """The body is complete: what it holds no longer counts against the arriving half."""
        if not self._closed and self._received:
            self._control._give_back(0, self._arriving_part(self._received))
            self._received = 0

    def refund(self, nbytes: int) -> None:
        """Give back ``nbytes`` of what is held (at most all of it)."""
        self.shrink_to(self._held - nbytes)

    def shrink_to(self, nbytes: int) -> None:
        """Keep only ``nbytes`` (no-op if holding less): the rest goes back to the budget."""
        if nbytes < self._held and not self._closed:
            self._control._give_back(self._held - max(nbytes, 0))
            self._held = max(nbytes, 0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._control._end(self._held, self._arriving_part(self._received), self._peak)
            self._held = 0
            self._received = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
