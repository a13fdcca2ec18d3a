"""The broker's HTTP endpoints (aiohttp), on the gRPC server's event loop:
`/metrics` for Prometheus, `/healthz` (the process serves) and `/readyz`
(its database answers), for load balancers and orchestrators.

Handlers only wait: the scrape's database reads go through the domain
runner and the readiness probe through the probe's own thread, as every
database call does, never on the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from broker.api.metrics import Metrics
from broker.domain.occupancy import Occupancy


class WebEndpoints:
    """The HTTP site: `start(address)` binds it (port 0 picks a free port)."""

    def __init__(
        self,
        metrics: Metrics,
        read_occupancy: Callable[[], Awaitable[Occupancy]],
        watchers: Callable[[], int],
        ready: Callable[[], Awaitable[bool]],
    ):
        self._metrics = metrics
        self._read_occupancy = read_occupancy
        self._watchers = watchers
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self._scrape),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        return app

    async def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port), reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {address} (web.address): {error.strerror}") from error
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        try:
            occupancy = await self._read_occupancy()
        except Exception as error:
            return web.Response(
                status=503, text=f"the database did not answer: {error}\n", charset="utf-8"
            )
        body = await asyncio.to_thread(self._metrics.scrape, occupancy, self._watchers())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if await self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="the database does not answer\n")
