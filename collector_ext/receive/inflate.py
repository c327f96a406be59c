"""Inflating gzip and deflate request bodies piece by piece, under a size limit and a memory budget.

Used by both receivers: OTLP/HTTP for Content-Encoding, OTLP/gRPC for compressed messages (grpc core
is told not to inflate them, so the budget sees the bytes before they exist). Pure: bytes in, bytes
out; the caller supplies the request's budget reservation.
"""

from __future__ import annotations

import zlib

from collector_ext.errors import InvalidRequestError, RequestTooLargeError
from collector_ext.receive.admission import Reservation

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# At most this much is inflated per step, so the budget is charged before a large piece exists.
_STEP_BYTES = 1 << 20


class BoundedInflater:
    """Inflates gzip (one or more members) or deflate (zlib format, as HTTP and gRPC define it) chunk
    by chunk, failing as soon as the output passes ``limit``. With a ``reservation``, each piece is
    charged to it before it is produced (the charge may raise to stop)."""

    def __init__(self, limit: int, coding: str = "gzip", reservation: Reservation | None = None) -> None:
        if coding not in _WBITS:
            raise ValueError(f"unknown content coding {coding!r}")
        self._limit = limit
        self._produced = 0
        self._coding = coding
        self._wbits = _WBITS[coding]
        self._inflater = zlib.decompressobj(wbits=self._wbits)
        self._reservation = reservation

    @property
    def produced(self) -> int:
        return self._produced

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"request body inflates to more than max_message_bytes={self._limit} bytes; nothing was sealed"
        )

    def feed(self, data: bytes) -> bytes:
        """The bytes ``data`` inflates to."""
        out = bytearray()
        self.feed_into(data, out)
        return bytes(out)

    def feed_into(self, data: bytes, out: bytearray) -> None:
        """Append what ``data`` inflates to onto ``out`` (no second copy of the output is made)."""
        while data:
            if self._inflater.eof:  # a further gzip member follows the previous one
                if self._coding != "gzip":
                    raise InvalidRequestError("data after the end of the deflate stream; nothing was sealed")
                self._inflater = zlib.decompressobj(wbits=self._wbits)
            # One byte more than the room left: getting it proves the limit is exceeded.
            step = min(_STEP_BYTES, self._limit - self._produced + 1)
            if self._reservation is not None:
                self._reservation.charge(step, "the inflated request body")
            try:
                piece = self._inflater.decompress(data, step)
            except zlib.error as exc:
                raise InvalidRequestError(
                    f"request body is not valid {self._coding} ({exc}); nothing was sealed"
                ) from exc
            if self._reservation is not None:
                self._reservation.refund(step - len(piece))  # what was charged but not produced
            self._produced += len(piece)
            if self._produced > self._limit:
                raise self._too_large()
            out += piece
            del piece
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail

    def finish(self) -> None:
        if not self._inflater.eof:
            raise InvalidRequestError(f"request body is truncated {self._coding}; nothing was sealed")


_FEED_BYTES = 1 << 16


def inflate_whole(data: bytes, coding: str, limit: int, reservation: Reservation | None = None) -> bytes:
    """Inflate a complete compressed body, charging ``reservation`` for the output as it grows, and
    for the moment the output exists twice (grown in place, then copied into immutable bytes).

    Raises:
        InvalidRequestError: not valid, or truncated, in ``coding``.
        RequestTooLargeError: more than ``limit`` bytes once inflated, or beyond the whole budget.
        AdmissionRefusedError: the budget has no room now.
    """
    inflater = BoundedInflater(limit, coding, reservation)
    view = memoryview(data)
    out = bytearray()
    try:
        for start in range(0, len(view), _FEED_BYTES):
            inflater.feed_into(bytes(view[start : start + _FEED_BYTES]), out)
        inflater.finish()
    except BaseException:
        out.clear()  # the traceback keeps this frame: free the buffer itself, not just the name
        raise
    size = len(out)
    if reservation is not None:
        reservation.charge(size, "the inflated request")
    body = bytes(out)
    del out
    if reservation is not None:
        reservation.refund(size)
    return body
