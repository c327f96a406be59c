"""The HTTP adapter to a time-stamping authority (RFC 3161 section 3.4).

POSTs a ``TimeStampReq`` with ``Content-Type: application/timestamp-query`` and returns the reply's
bytes once ``timestamp.check_reply_answers`` accepts them. Every failure becomes
``TsaUnavailableError`` (a ``DeliveryError``: the submitter retries it with backoff), naming the
setting ``checkpoint.tsa_url``; nothing here blocks sealing.
"""

from __future__ import annotations

import aiohttp

from collector_ext.errors import DeliveryError
from collector_ext.witness.timestamp import MAX_REPLY_BYTES, check_reply_answers, timestamp_request


class TsaUnavailableError(DeliveryError):
    """The TSA could not be reached, failed, or answered with something that is not a token for
    the request."""


class TsaClient:
    """One time-stamping authority at ``url``."""

    def __init__(self, url: str, *, timeout_seconds: float = 10.0) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def timestamp(self, data: bytes) -> bytes:
        """A granted reply (DER ``TimeStampResp``) whose token is for SHA-256 of ``data``.

        Raises:
            TsaUnavailableError: the TSA is down, refused, or answered wrongly.
        """
        request = timestamp_request(data)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                self.url, data=request.der, headers={"Content-Type": "application/timestamp-query"}
            ) as response:
                if response.status != 200:
                    raise TsaUnavailableError(f"checkpoint.tsa_url: {self.url} answered HTTP {response.status}")
                reply = await response.content.read(MAX_REPLY_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TsaUnavailableError(
                f"checkpoint.tsa_url: {self.url} cannot be reached ({type(exc).__name__}: {exc})"
            ) from exc
        report = check_reply_answers(reply, request)
        if not report.ok:
            raise TsaUnavailableError(f"checkpoint.tsa_url: {self.url}: {report.problem}")
        return reply

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
