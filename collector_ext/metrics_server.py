"""The Prometheus scrape endpoint: GET /metrics on its own port (aiohttp, on the sidecar's loop).

Optionally over TLS (``metrics_tls``, client certificates and an allow-list as on the receivers) and
behind bearer tokens (``auth.metrics_tokens``): the same ``Authenticator`` as the OTLP receivers, so
a Prometheus scrape config with ``authorization: {credentials_file: ...}`` and ``tls_config`` works.
"""

from __future__ import annotations

import ssl

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from collector_ext.metrics import Metrics
from collector_ext.receive.auth import (
    AuthenticationError,
    Authenticator,
    ClientNotAllowedError,
    certificate_from_ssl_object,
    format_peer,
)


def split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(
        self,
        metrics: Metrics,
        listen: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._metrics = metrics
        self._listen = listen
        self._ssl_context = ssl_context
        self._authenticator = authenticator
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self._authenticator is None:
            return None
        transport = request.transport
        try:
            self._authenticator.authenticate(
                authorization=request.headers.get(hdrs.AUTHORIZATION),
                certificate=certificate_from_ssl_object(
                    transport.get_extra_info("ssl_object") if transport is not None else None
                ),
                peer=format_peer(transport.get_extra_info("peername") if transport is not None else None),
            )
        except ClientNotAllowedError as exc:
            return web.Response(status=403, text=str(exc) + "\n")
        except AuthenticationError as exc:
            return web.Response(status=401, text=str(exc) + "\n", headers={hdrs.WWW_AUTHENTICATE: "Bearer"})
        return None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self._listen)
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
