"""``collector-ext witness serve``: a C2SP tlog-witness over HTTP (aiohttp).

``POST <prefix>/add-checkpoint`` is answered by ``protocol.decide`` under one lock, so concurrent
requests for an origin are serialised: the state is read, the verdict computed, the new state
persisted (``state``), and only then is the cosignature sent (tlog-witness's compare-and-swap).
Requests signed by a trusted log that do not extend what was cosigned (a rollback, a fork) are
logged at WARNING as evidence of misbehaviour, with the origin and sizes. ``GET
<prefix>/<hex SHA-256 of origin>/checkpoint`` serves the newest checkpoint cosigned for an origin, so
anyone can compare it with what the log's storage holds; ``GET <prefix>/origins`` lists the origins
held (one per line), so an auditor also finds chains that vanished from the log's storage.

TLS and rate limits are the deployment's (a reverse proxy or a service mesh); see deploy/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from collector_ext.metrics_server import split_host_port
from collector_ext.seal.keys import Signer
from collector_ext.seal.note import add_signatures
from collector_ext.witness.protocol import (
    ADD_CHECKPOINT_PATH,
    MAX_REQUEST_BYTES,
    AddCheckpointError,
    TrustedLog,
    Verdict,
    decide,
    origin_digest,
    parse_add_checkpoint,
)
from collector_ext.witness.state import CosignedCheckpoint, WitnessStateFile

log = logging.getLogger(__name__)

ORIGINS_PATH = "/origins"


class WitnessServer:
    """One witness: its cosigning key and name, the logs it trusts, its state file, its listener."""

    def __init__(
        self,
        *,
        name: str,
        signer: Signer,
        logs: Sequence[TrustedLog],
        state: WitnessStateFile,
        listen: str,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._signer = signer
        self._logs = tuple(logs)
        self._state = state
        self._listen = listen
        self._prefix = prefix.rstrip("/")
        self._clock = clock
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def add_checkpoint(self, body: bytes) -> Verdict:
        """The verdict on one add-checkpoint body, with the state persisted before it is returned."""
        try:
            request = parse_add_checkpoint(body)
        except AddCheckpointError as exc:
            return Verdict(400, f"{exc}\n".encode(), "text/plain; charset=utf-8", str(exc))
        async with self._lock:
            now = int(self._clock())
            verdict = decide(
                request, self._logs, self._state.states(), witness_name=self.name, signer=self._signer, now=now
            )
            if verdict.new_state is not None and verdict.origin is not None:
                held = CosignedCheckpoint(verdict.new_state, add_signatures(request.note, [verdict.body]), now)
                try:
                    await asyncio.to_thread(self._state.store, verdict.origin, held)
                except OSError as exc:
                    log.error("witness state not written; nothing cosigned", extra={"error": str(exc)})
                    return Verdict(503, b"the witness cannot persist its state\n", "text/plain", "state not written")
        return verdict

    async def _handle_add(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return web.Response(status=413, text=f"bodies are at most {MAX_REQUEST_BYTES} bytes\n")
        body = await request.read()
        verdict = await self.add_checkpoint(body)
        fields = {"status": verdict.status, "origin": verdict.origin, "reason": verdict.reason, "peer": request.remote}
        if verdict.evidence:
            log.warning("checkpoint refused: it does not extend the tree this witness cosigned", extra=fields)
        elif verdict.status == 200:
            log.info("checkpoint cosigned", extra=fields)
        else:
            log.info("checkpoint refused", extra=fields)
        return web.Response(status=verdict.status, body=verdict.body, headers={"Content-Type": verdict.content_type})

    async def _handle_checkpoint(self, request: web.Request) -> web.Response:
        digest = request.match_info["origin"]
        for origin, held in self._state.origins.items():
            if origin_digest(origin) == digest:
                return web.Response(body=held.note, headers={"Content-Type": "text/plain; charset=utf-8"})
        return web.Response(status=404, text="no checkpoint cosigned for this origin\n")

    async def _handle_origins(self, request: web.Request) -> web.Response:
        # Not part of tlog-witness: lets an auditor find every origin this witness holds (a chain that
        # vanished from an archive included), then fetch each one's checkpoint.
        body = "".join(origin + "\n" for origin in sorted(self._state.origins))
        return web.Response(text=body, headers={"Content-Type": "text/plain; charset=utf-8"})

    async def start(self) -> int:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(self._prefix + ADD_CHECKPOINT_PATH, self._handle_add)
        app.router.add_get(self._prefix + ORIGINS_PATH, self._handle_origins)
        app.router.add_get(self._prefix + "/{origin:[0-9a-f]{64}}/checkpoint", self._handle_checkpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self._listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
