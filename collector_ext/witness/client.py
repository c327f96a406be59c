"""The HTTP adapter to one tlog-witness: POST ``<url>/add-checkpoint`` and classify the answer.

200 gives the cosignature lines; 409 the size the witness holds (``WitnessConflict``, which the
submitter answers with a proof from that size); other 4xx answers are refusals retrying cannot fix
(``WitnessRefusedError``, a ``DataError``); 5xx, timeouts and connection errors are
``WitnessUnavailableError`` (a ``DeliveryError``, retried with backoff). Messages name the setting
``witnesses[].url``.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from collector_ext.errors import DataError, DeliveryError
from collector_ext.witness.protocol import ADD_CHECKPOINT_PATH, AddCheckpoint

MAX_ANSWER_BYTES = 64 * 1024


class WitnessUnavailableError(DeliveryError):
    """The witness could not be reached or failed (5xx); retried."""


class WitnessRefusedError(DataError):
    """The witness refused the checkpoint (400, 403, 404, 422, ...); ``status`` says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WitnessConflict:
    """A 409: the witness holds ``size`` for the origin, not the old size that was sent."""

    size: int


class WitnessClient:
    """One witness at ``url`` (its submission prefix; ``/add-checkpoint`` is appended)."""

    def __init__(self, name: str, url: str, *, timeout_seconds: float = 10.0) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def add_checkpoint(self, request: AddCheckpoint) -> bytes | WitnessConflict:
        """The cosignature lines the witness returned, or the size it holds (409).

        Raises:
            WitnessUnavailableError: down, timed out, or a 5xx answer.
            WitnessRefusedError: any other answer than 200 and 409.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        where = f"witnesses[{self.name}].url {self.url}"
        try:
            async with self._session.post(
                self.url + ADD_CHECKPOINT_PATH, data=request.encode(), headers={"Content-Type": "text/plain"}
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WitnessUnavailableError(f"{where} cannot be reached ({type(exc).__name__}: {exc})") from exc
        if status == 200:
            return body
        text = body[:200].decode("utf-8", errors="replace").strip()
        if status == 409:
            size_text = body.decode("ascii", errors="replace").strip()
            if not size_text.isdigit():
                raise WitnessRefusedError(f"{where} answered 409 without a size: {text!r}", status)
            return WitnessConflict(int(size_text))
        if status >= 500 or status == 429:
            raise WitnessUnavailableError(f"{where} answered HTTP {status}: {text!r}")
        raise WitnessRefusedError(f"{where} refused the checkpoint with HTTP {status}: {text!r}", status)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
