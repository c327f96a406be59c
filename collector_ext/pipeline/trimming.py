"""Trimming: spool files dropped once a stored checkpoint covers them and Loki has them.

Takes the sequence number the newest stored checkpoint covers (``covered_through``) and the Loki
sender's cursor, once a second and at shutdown. Produces nothing but free disk space.

Guarantees: a spool file is removed only when both its records are covered by a checkpoint stored
in the archive and the Loki sender (when there is one) has delivered them; a failed removal is
logged and tried again next time, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from collector_ext.spool import Spool

log = logging.getLogger("collector_ext.pipeline")

TRIM_INTERVAL = 1.0


class SpoolTrimmer:
    """Trims the spool up to what is checkpointed and delivered to Loki; see the module docstring."""

    def __init__(
        self,
        spool: Spool,
        *,
        covered_through: Callable[[], int],
        loki_cursor: Callable[[bytes], int] | None,
        chain_id: Callable[[], bytes],
        stopping: asyncio.Event,
    ) -> None:
        self._spool = spool
        self._covered_through = covered_through
        self._loki_cursor = loki_cursor
        self._chain_id = chain_id
        self._stopping = stopping

    async def run(self) -> None:
        """Trim once a second: a stored checkpoint or the Loki sender's cursor may have moved."""
        while not self._stopping.is_set():
            await asyncio.sleep(TRIM_INTERVAL)
            await self.trim()

    async def trim(self) -> None:
        """Drop spool files that a stored checkpoint covers and the Loki sender has delivered."""
        through = self._covered_through()
        if self._loki_cursor is not None:
            through = min(through, self._loki_cursor(self._chain_id()))
        try:
            await asyncio.to_thread(self._spool.trim, through)
        except OSError as exc:
            log.warning("spool files not removed", extra={"error": str(exc)})
