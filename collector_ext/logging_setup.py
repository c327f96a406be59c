"""The sidecar's own structured logs: one JSON object per line on stderr, with no request bytes in them.

Fields passed with ``extra=`` become JSON keys. Two filters sit on the one handler, so they see every
record, the libraries' included:

- ``WithholdRequestBytes`` rewrites what the HTTP and gRPC libraries (aiohttp, grpc, asyncio, h2)
  log, and any record carrying one of their exceptions, at every level: the message template is
  kept, but the arguments, the exception's text and the traceback are dropped (aiohttp quotes the
  bytes it could not parse, for instance a body longer than its Content-Length; asyncio and grpc
  print exceptions raised while handling a connection). The exception's type stays, as
  ``error_type``.
- ``RepeatLimiter`` lets at most ``per_minute`` records of one kind (logger, level, message template,
  exception type) through per minute; the first one let through after a quiet spell carries
  ``suppressed_similar``, the number held back, so a flood of identical errors costs a line a
  minute, not the disk.

The sidecar's own messages never carry record contents or key material: requests are refused with
messages naming fields and positions only, and key files are parsed in ``seal.keys``, whose errors
name the file only. This module does not decide log levels beyond quietening chatty libraries.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
# Loggers of libraries that handle request bytes and may quote them.
LIBRARY_LOGGERS = ("aiohttp", "grpc", "asyncio", "h2", "hpack")
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[diouxXeEfFgGcrsa]")
WITHHELD = "<withheld>"


def _from_library(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in LIBRARY_LOGGERS)


class WithholdRequestBytes(logging.Filter):
    """Keeps a library record's template and exception type; drops its arguments, exception text and
    traceback (see the module docstring). Records of other loggers pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # A library's exception may be logged under another logger's name (aiohttp's server errors
        # go to whatever logger the application hands it).
        if not _from_library(record.name) and not (error is not None and _from_library(type(error).__module__)):
            return True
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        if record.args:
            template = _PLACEHOLDER.sub(WITHHELD, template)
        record.msg = template  # with no arguments, logging prints the template as it is
        record.args = None
        if error is not None:
            record.error_type = type(error).__name__
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.request_bytes_withheld = True
        return True


@dataclass
class _Window:
    started: float
    passed: int
    held_back: int


class RepeatLimiter(logging.Filter):
    """At most ``per_minute`` records of one kind per ``window`` seconds (see the module docstring).

    ``clock`` is injectable for tests; kinds are forgotten once their window has passed quietly, and
    at most ``max_kinds`` are tracked (beyond that, new kinds pass unlimited rather than grow memory).
    """

    def __init__(
        self,
        per_minute: int = 10,
        *,
        window: float = 60.0,
        max_kinds: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._limit = per_minute
        self._window = window
        self._max_kinds = max_kinds
        self._clock = clock
        self._windows: dict[tuple[str, int, str, str], _Window] = {}

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[str, int, str, str]:
        error = record.exc_info[1] if record.exc_info else None
        error_type = type(error).__name__ if error is not None else str(getattr(record, "error_type", ""))
        return record.name, record.levelno, str(record.msg), error_type

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        kind = self._kind(record)
        window = self._windows.get(kind)
        if window is None or now - window.started >= self._window:
            held_back = window.held_back if window is not None else 0
            if window is None and len(self._windows) >= self._max_kinds:
                self._forget_quiet(now)
                if len(self._windows) >= self._max_kinds:
                    return True
            self._windows[kind] = _Window(now, 1, 0)
            if held_back:
                record.suppressed_similar = held_back
            return True
        if window.passed < self._limit:
            window.passed += 1
            return True
        window.held_back += 1
        return False

    def _forget_quiet(self, now: float) -> None:
        for kind in [k for k, w in self._windows.items() if now - w.started >= self._window and not w.held_back]:
            del self._windows[kind]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: str, *, repeats_per_minute: int = 10) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(WithholdRequestBytes())
    handler.addFilter(RepeatLimiter(repeats_per_minute))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore and grpc are chatty at INFO and may echo request details.
    for noisy in ("botocore", "aiobotocore", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
