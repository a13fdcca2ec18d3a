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
    """The HTTP sites: `start(address, metrics_address)` binds them (port 0
    picks a free port). Metrics are served at `address` unless
    `metrics_address` names a site of their own; either may be empty."""

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
        self._runners: list[web.AppRunner] = []
        # The ports bound, 0 for a site not served.
        self.port = 0
        self.metrics_port = 0

    async def start(self, address: str, metrics_address: str = "") -> None:
        """Binds the sites; on failure none is left bound."""
        health = [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)]
        scrape = [web.get("/metrics", self._scrape)]
        try:
            if address:
                self.port = await self._site(
                    address, "web.address", health if metrics_address else health + scrape
                )
                self.metrics_port = 0 if metrics_address else self.port
            if metrics_address:
                self.metrics_port = await self._site(metrics_address, "web.metrics_address", scrape)
        except BaseException:
            await self.stop()
            raise

    async def _site(self, address: str, key: str, routes: list) -> int:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        host, _, port = address.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port), reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            raise OSError(f"cannot listen on {address} ({key}): {error.strerror}") from error
        return runner.addresses[0][1]

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

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
