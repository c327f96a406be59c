"""The shared memory budget and request count of the receivers (collector_ext.receive.admission)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from collector_ext.errors import DeliveryError, InvalidRequestError, RequestTooLargeError
from collector_ext.receive.admission import (
    JSON_DECODE_FACTOR,
    PROTOBUF_DECODE_FACTOR,
    AdmissionControl,
    AdmissionRefusedError,
    AdmissionSettings,
    decode_cost,
)
from collector_ext.receive.inflate import BoundedInflater


def _control(max_bytes: int = 1000, max_requests: int = 3) -> AdmissionControl:
    return AdmissionControl(AdmissionSettings(max_inflight_bytes=max_bytes, max_requests=max_requests))


def test_charges_add_up_across_requests_and_are_returned_on_close() -> None:
    control = _control()
    first, second = control.admit(), control.admit()
    first.charge(600)
    second.charge(300)
    assert control.snapshot().inflight_bytes == 900
    with pytest.raises(AdmissionRefusedError, match=r"limits\.max_inflight_bytes=1000"):
        second.charge(200)
    assert second.held == 300  # a refused charge holds nothing more
    first.close()
    second.charge(200)
    second.close()
    assert control.snapshot().inflight_bytes == 0
    assert control.snapshot().requests == 0


def test_refusal_is_retryable_but_a_request_larger_than_the_whole_budget_is_not() -> None:
    control = _control()
    with control.admit() as reservation:
        reservation.charge(900)
        with pytest.raises(RequestTooLargeError, match="max_inflight_bytes=1000"):
            reservation.charge(101)
    assert issubclass(AdmissionRefusedError, DeliveryError)
    assert not issubclass(RequestTooLargeError, DeliveryError)
    assert control.snapshot().refused == 1


def test_request_count_is_limited_and_freed_by_close() -> None:
    control = _control(max_requests=2)
    held = [control.admit(), control.admit()]
    with pytest.raises(AdmissionRefusedError, match="max_concurrent_requests"):
        control.admit()
    held[0].close()
    held[0].close()  # closing twice returns nothing twice
    assert control.snapshot().requests == 1
    control.admit().close()


def test_shrink_and_refund_give_back_part() -> None:
    control = _control()
    with control.admit() as reservation:
        reservation.charge(800)
        reservation.shrink_to(100)
        assert control.snapshot().inflight_bytes == 100
        reservation.refund(40)
        assert reservation.held == 60
        reservation.refund(500)
        assert reservation.held == 0
    assert control.snapshot().inflight_bytes == 0


def test_decode_cost_uses_the_measured_factors() -> None:
    assert decode_cost(10, json=False) == 10 * PROTOBUF_DECODE_FACTOR
    assert decode_cost(10, json=True) == 10 * JSON_DECODE_FACTOR


def test_settings_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AdmissionSettings(max_inflight_bytes=0, max_requests=1)


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_inflater_charges_what_it_produces(coding: str, compress: object) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB
    control = _control(max_bytes=10 * 1024 * 1024)
    with control.admit() as reservation:
        inflater = BoundedInflater(len(data), coding, reservation)
        wire = compress(data)  # type: ignore[operator]
        out = b"".join(inflater.feed(wire[i : i + 4096]) for i in range(0, len(wire), 4096))
        inflater.finish()
        assert out == data
        assert reservation.held == len(data)


def test_inflater_stops_a_bomb_at_the_budget_before_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    control = _control(max_bytes=3 * 1024 * 1024)
    with control.admit() as reservation:
        inflater = BoundedInflater(64 * 1024 * 1024, "gzip", reservation)
        with pytest.raises(RequestTooLargeError, match="max_inflight_bytes"):
            inflater.feed(bomb)
        assert reservation.held <= 3 * 1024 * 1024


def test_inflater_refuses_past_its_size_limit_and_broken_streams() -> None:
    with pytest.raises(RequestTooLargeError, match="max_message_bytes=1000"):
        BoundedInflater(1000).feed(gzip.compress(b"x" * 1001))
    assert BoundedInflater(1000).feed(gzip.compress(b"x" * 1000)) == b"x" * 1000
    with pytest.raises(InvalidRequestError, match="not valid gzip"):
        BoundedInflater(1000).feed(b"\x1f\x8b\x08\x00garbage-garbage")
    truncated = BoundedInflater(1000)
    truncated.feed(gzip.compress(b"y" * 500)[:-6])
    with pytest.raises(InvalidRequestError, match="truncated"):
        truncated.finish()
    two_members = gzip.compress(b"a") + gzip.compress(b"b")
    assert BoundedInflater(10).feed(two_members) == b"ab"
    with pytest.raises(InvalidRequestError, match="after the end"):
        BoundedInflater(10, "deflate").feed(zlib.compress(b"a") + b"x")


def test_bodies_still_arriving_hold_at_most_half_the_budget() -> None:
    mib = 1024 * 1024
    control = _control(max_bytes=64 * mib, max_requests=10)
    stalled = [control.admit() for _ in range(3)]
    stalled[0].charge_arriving(20 * mib)  # 19 MiB beyond the allowance
    stalled[1].charge_arriving(10 * mib)  # 9 more: 28 of the 32 MiB half
    with pytest.raises(AdmissionRefusedError, match="still arriving"):
        stalled[2].charge_arriving(6 * mib)
    stalled[2].charge_arriving(mib)  # within its allowance
    complete = control.admit()
    complete.charge_arriving(3 * mib)  # 2 beyond the allowance: 30 of 32
    complete.body_arrived()  # back out of the arriving half, still held
    assert control.snapshot().arriving_bytes == 28 * mib
    complete.charge(30 * mib)  # decoding: the other half is there for it
    assert control.snapshot().inflight_bytes == 64 * mib
    for reservation in [*stalled, complete]:
        reservation.close()
    assert control.snapshot() == control.snapshot().__class__(0, 0, 1, 0)


def test_a_body_larger_than_the_arriving_half_can_never_be_received() -> None:
    mib = 1024 * 1024
    control = _control(max_bytes=16 * mib)
    with control.admit() as reservation:
        for _ in range(8):
            reservation.charge_arriving(mib)  # 1 MiB allowance + 7 of the 8 MiB half
        with pytest.raises(RequestTooLargeError, match="while it arrives"):
            reservation.charge_arriving(2 * mib)


def test_each_request_reports_its_peak_when_it_ends() -> None:
    peaks: list[int] = []
    control = AdmissionControl(AdmissionSettings(max_inflight_bytes=1000, max_requests=2), on_request_end=peaks.append)
    with control.admit() as reservation:
        reservation.charge(700)
        reservation.shrink_to(100)
        reservation.charge(50)
    assert peaks == [700]
