"""The log filters: library records lose their arguments, exception text and traceback (they may
quote request bytes); identical records are limited per minute with a count of those held back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from collector_ext.logging_setup import JsonFormatter, RepeatLimiter, WithholdRequestBytes

SECRET = "s3cr3t-body-bytes"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, Clock]]:
    stream = io.StringIO()
    clock = Clock()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(WithholdRequestBytes())
    handler.addFilter(RepeatLimiter(3, clock=clock))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    try:
        yield stream, clock
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("name", ["aiohttp.server", "aiohttp.access", "aiohttp.web", "grpc._cython.cygrpc", "asyncio"])
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.ERROR])
def test_library_records_keep_their_template_and_error_type_only(
    captured: tuple[io.StringIO, Clock], name: str, level: int
) -> None:
    stream, _ = captured
    try:
        raise ValueError(f"Invalid method encountered: b'{SECRET}'")
    except ValueError:
        logging.getLogger(name).log(
            level, "Error handling request from %s: %r", "127.0.0.1", SECRET.encode(), exc_info=True
        )
    text = stream.getvalue()
    assert SECRET not in text
    [line] = lines(stream)
    assert line["message"] == "Error handling request from <withheld>: <withheld>"
    assert line["error_type"] == "ValueError"
    assert "exception" not in line


def test_a_library_message_with_a_percent_sign_and_no_arguments_is_kept() -> None:
    record = logging.LogRecord("aiohttp.server", logging.WARNING, "", 0, "100% of %s", None, None)
    assert WithholdRequestBytes().filter(record)
    assert record.getMessage() == "100% of %s"


def test_the_sidecars_own_records_pass_unchanged(captured: tuple[io.StringIO, Clock]) -> None:
    stream, _ = captured
    logging.getLogger("collector_ext.service").info("archive %s ready", "s3://bucket/prefix", extra={"records": 3})
    [line] = lines(stream)
    assert line["message"] == "archive s3://bucket/prefix ready"
    assert line["records"] == 3


def test_repeated_records_are_limited_per_minute_and_the_held_back_counted(captured: tuple[io.StringIO, Clock]) -> None:
    stream, clock = captured
    log = logging.getLogger("collector_ext.receive")
    for _ in range(10):
        log.error("archive write failed")
    log.error("another message")  # another kind: its own allowance
    assert [line["message"] for line in lines(stream)].count("archive write failed") == 3
    clock.now += 61
    log.error("archive write failed")
    last = lines(stream)[-1]
    assert last["message"] == "archive write failed"
    assert last["suppressed_similar"] == 7
    clock.now += 61
    log.error("archive write failed")
    assert "suppressed_similar" not in lines(stream)[-1]


def test_records_differing_only_in_arguments_are_one_kind(captured: tuple[io.StringIO, Clock]) -> None:
    stream, _ = captured
    log = logging.getLogger("aiohttp.server")
    for index in range(6):
        log.error("Error handling request %s", index)
    assert len(lines(stream)) == 3


def test_the_limiter_tracks_a_bounded_number_of_kinds() -> None:
    clock = Clock()
    limiter = RepeatLimiter(1, max_kinds=4, clock=clock)
    records = [logging.LogRecord("x", logging.ERROR, "", 0, f"message {i}", None, None) for i in range(10)]
    assert all(limiter.filter(record) for record in records)  # new kinds beyond the table pass
    assert not limiter.filter(records[0])  # a tracked kind is still limited


def test_a_library_exception_logged_under_another_name_is_withheld(captured: tuple[io.StringIO, Clock]) -> None:
    stream, _ = captured
    from aiohttp.http_exceptions import BadHttpMessage

    try:
        raise BadHttpMessage(f"Invalid header token: b'{SECRET}'")
    except BadHttpMessage:
        logging.getLogger("collector_ext.receive.otlp_http.server").error("Error handling request", exc_info=True)
    assert SECRET not in stream.getvalue()
    [line] = lines(stream)
    assert line["error_type"] == "BadHttpMessage"
