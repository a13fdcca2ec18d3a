"""The broker's HTTP site (aiohttp), on the gRPC server's event loop:
`/metrics` for Prometheus, `/healthz` (the process serves) and `/readyz`
(its database answers), for load balancers and orchestrators, and the
contract over HTTP/JSON under `/v1/` (`broker.web.gateway`), and the web
console for people at `/` (`broker.web.console`).

Handlers only wait: the scrape's database reads go through the domain
runner and the readiness probe through the probe's own thread, as every
database call does, never on the loop."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.rpc import code_pb2
from prometheus_client import CONTENT_TYPE_LATEST

from broker.api.metrics import Metrics
from broker.domain.occupancy import Occupancy
from broker.web.console.app import Console
from broker.web.gateway import Gateway, error_response

log = logging.getLogger(__name__)

API_PREFIX = "/v1/"
# The largest body taken, as gRPC's largest request.
MAX_BODY_BYTES = 1 << 20


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
        gateway: Gateway | None = None,
        console: Console | None = None,
    ):
        self._metrics = metrics
        self._read_occupancy = read_occupancy
        self._watchers = watchers
        self._ready = ready
        self._gateway = gateway
        self._console = console
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
                    address,
                    "web.address",
                    health if metrics_address else health + scrape,
                    self._gateway,
                    self._console,
                )
                self.metrics_port = 0 if metrics_address else self.port
            if metrics_address:
                self.metrics_port = await self._site(metrics_address, "web.metrics_address", scrape)
        except BaseException:
            await self.stop()
            raise

    async def _site(
        self,
        address: str,
        key: str,
        routes: list,
        gateway: Gateway | None = None,
        console: Console | None = None,
    ) -> int:
        app = web.Application(middlewares=[api_errors], client_max_size=MAX_BODY_BYTES)
        app.add_routes(routes)
        if gateway is not None:
            gateway.add_to(app)
        if console is not None:
            console.add_to(app)
        # A caller that goes away cancels its handler, and so its call: an
        # abandoned acquire leaves the queue.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
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
        if self._console is not None:
            await self._console.hub.stop()
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
        pages = self._console.hub.pages if self._console is not None else 0
        body = await asyncio.to_thread(self._metrics.scrape, occupancy, self._watchers(), pages)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if await self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="the database does not answer\n")


@web.middleware
async def api_errors(request: web.Request, handler) -> web.StreamResponse:
    """Under `/v1/`, what aiohttp itself refuses (no such route, a wrong
    verb, a body too big) and anything unexpected answer a
    `google.rpc.Status`, as the methods' own errors do."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(
            code_pb2.NOT_FOUND,
            f"no such route: {request.method} {request.path} "
            "(the routes are the google.api.http rules of the contract)",
        )
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        return error_response(
            code_pb2.UNIMPLEMENTED,
            f"{request.path} does not take {request.method}: it takes {allowed}",
            405,
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            code_pb2.RESOURCE_EXHAUSTED,
            f"the body is larger than the limit of {MAX_BODY_BYTES} bytes",
            413,
        )
    except web.HTTPException:
        raise
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("HTTP %s %s failed (error id %s)", request.method, request.path, error_id)
        return error_response(
            code_pb2.INTERNAL, f"internal error (error id {error_id}; the broker logged it)"
        )
