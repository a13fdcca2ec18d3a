"""Building and running the broker's gRPC server.

The server is `grpc.aio`: one event loop serves every call, so a waiting
acquire or an open session stream costs no thread. The loop runs in a thread
of its own behind `BrokerServer`, whose `start()` / `stop()` are plain calls,
for `serve_forever` (the `broker serve` command) and for tests alike.
`build_server` wires configuration, database, domain and servicers; the
server binds at once (port 0 picks a free port) and serves after `start()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import typing
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import peewee
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker.api import memory
from broker.api.access_servicer import AccessServicer
from broker.api.auth import Authenticator
from broker.api.contract import METHOD_PATHS, SERVICE_NAMES
from broker.api.errors import ErrorInterceptor
from broker.api.event_feed import EventFeed
from broker.api.event_servicer import EventServicer
from broker.api.exposure import check_exposure
from broker.api.inventory_servicer import InventoryServicer
from broker.api.lease_servicer import LeaseServicer
from broker.api.live_source import LiveSource
from broker.api.metrics import Metrics, MetricsInterceptor
from broker.api.oidc import OidcVerifier
from broker.api.runner import (
    GroupCommitRunner,
    Runner,
    ThreadRunner,
    TimedRunner,
    renew_connections,
)
from broker.api.waits import WaitBoard
from broker.config import Config, ConfigError, TlsConfig, load_config, with_database_url
from broker.domain.events import EventLog
from broker.domain.inventory import Inventory
from broker.domain.kinds import KindDeclarationError, KindRegistry
from broker.domain.leasing import Leases
from broker.domain.occupancy import occupancy
from broker.domain.quotas import Quotas
from broker.domain.retention import Ages, Retention
from broker.domain.sessions import Sessions
from broker.domain.tokens import Tokens
from broker.models import event as event_model
from broker.models.backend import backend_of
from broker.models.database import DatabaseURLError, bind, close_database, open_database
from broker.models.notify import QUEUE_CHANNEL, GrantListener
from broker.models.probe import probe_for
from broker.models.schema import SchemaVersionError, create_tables
from broker.v1 import (
    access_service_pb2_grpc,
    event_service_pb2_grpc,
    inventory_service_pb2_grpc,
    lease_service_pb2_grpc,
)
from broker.web.console.app import Console
from broker.web.gateway import Gateway
from broker.web.site import WebEndpoints

log = logging.getLogger("broker")

# Worker threads for domain calls on a networked database (one pooled
# connection each).
DATABASE_WORKERS = 16
# SQLite reads run beside its one writer (WAL); a few threads are enough.
SQLITE_READERS = 4

SERVER_OPTIONS = (
    # Ping idle clients every 20 s and drop them if no answer comes in 5 s, so
    # a connection to a vanished client is noticed.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client keep-alive pings as often as every 5 s, idle or not (the
    # SDK pings every 10 s), instead of answering them with GOAWAY.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A second broker on the same port must fail to start, not share it.
    ("grpc.so_reuseport", 0),
    # A request is decoded on the event loop: at most 1 MiB of it (a server
    # limit: RESOURCE_EXHAUSTED from gRPC). What it holds has limits of its
    # own, refused as INVALID_ARGUMENT (`broker.api.validation`).
    ("grpc.max_receive_message_length", 1 << 20),
)


# The channel HTTP callers' calls take: answers as large as any page.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 16 << 20),)


class BrokerServer:
    """A wired broker on its own event loop thread: `start()`, then `stop()`."""

    def __init__(self, config: Config, address: str):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="broker-loop", daemon=True
        )
        self._thread.start()
        self._sweeper: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._trimmer: asyncio.Task | None = None
        self._pruner: asyncio.Task | None = None
        self._stop_feed: Callable[[], None] = lambda: None
        self._stop_counting: Callable[[], None] = lambda: None
        self.web: WebEndpoints | None = None
        self.console: Console | None = None
        self._own: grpc.aio.Channel | None = None
        self._socket_dir = ""
        # The health probe's own thread: never queued behind domain calls.
        self._probe_thread = ThreadPoolExecutor(1, thread_name_prefix="db-probe")
        try:
            self.port = self._call(self._build(address))
        except BaseException:
            self._close_loop()
            raise
        self.host = address.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def web_address(self) -> str:
        """HOST:PORT of `/healthz` and `/readyz` once started; empty without."""
        return _bound(self.config.web.address, self.web.port if self.web else 0)

    @property
    def metrics_address(self) -> str:
        """HOST:PORT of `/metrics` once started; empty without."""
        address = self.config.web.metrics_address or self.config.web.address
        return _bound(address, self.web.metrics_port if self.web else 0)

    def start(self) -> None:
        self._call(self._start())

    def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets calls in flight finish for `grace` seconds,
        stops the expiry sweep and closes the database."""
        try:
            self._call(self._stop(grace))
        finally:
            self._close_loop()
            self.probe.close()

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Runs a domain call as the servicers do (through the runner), from
        any thread; the future holds its outcome."""
        return asyncio.run_coroutine_threadsafe(self.run(function, *args), self._loop)

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._probe_thread.shutdown(wait=True)

    async def _build(self, address: str) -> int:
        config = self.config
        kinds = KindRegistry(config.kind_models())
        self.database: peewee.Database = open_database(
            config.database.url,
            base_dir=config.base_dir,
            stall_timeout=config.database.stall_timeout,
        )
        self.probe = probe_for(self.database, config.database.stall_timeout)
        bind(self.database)
        create_tables(kinds.models)
        self.metrics = Metrics(
            [kind.name for kind in kinds],
            list(METHOD_PATHS),
        )
        runner = runner_for(self.database)
        if isinstance(runner, GroupCommitRunner):
            self.metrics.watch_groups(lambda: runner.stats)
        self.run = TimedRunner(runner, self.metrics.observe_call)
        self.events = EventLog()
        retention = config.retention
        self.retention = Retention(
            self.events,
            Ages(retention.events, retention.leases, retention.waiters, retention.sessions),
        )
        self.feed = EventFeed(
            asyncio.get_running_loop(),
            self.events,
            self.run,
            buffer=config.events.watch_buffer,
            poll=config.events.poll_interval,
        )
        self.leases = Leases(
            kinds,
            default_ttl=config.leases.default_ttl,
            max_ttl=config.leases.max_ttl,
            max_wait=config.queue.max_wait,
            max_lifetime=config.leases.max_lifetime,
            quotas=Quotas(config.quotas.max_resources, config.quotas.principals),
            quarantine_after=config.quarantine.after_failures,
        )
        self.board = WaitBoard(asyncio.get_running_loop(), self.leases, self.run)
        self.leases.on_granted = self.board.notify
        self.leases.on_queue_changed = self.board.queue_changed
        self.listener = (
            GrantListener(
                typing.cast(peewee.PostgresqlDatabase, self.database),
                self.board.announce,
                {
                    event_model.CHANNEL: self.feed.announce,
                    QUEUE_CHANNEL: self.board.queue_changed,
                },
            )
            if backend_of(self.database).notifies
            else None
        )
        sessions = Sessions(
            self.leases,
            keepalive_timeout=config.sessions.keepalive_timeout,
            max_keepalive_timeout=config.sessions.max_keepalive_timeout,
        )
        self.authenticator = authenticator_for(config)
        self.interceptor = ErrorInterceptor(
            max_calls=config.server.max_concurrent_rpcs,
            gate=None if self.authenticator is None else self.authenticator.admit,
        )
        self.server = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics), self.interceptor],
            options=(*SERVER_OPTIONS, *backlog_options(config.server.max_concurrent_rpcs)),
            # A backstop above the broker's own limit, which health and
            # reflection calls do not count against.
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs + PROBE_CALLS,
        )
        inventory = Inventory(kinds, on_change=self.leases.dispatch)
        inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(
            InventoryServicer(inventory, self.run), self.server
        )
        self.lease_servicer = LeaseServicer(self.leases, sessions, self.board, self.run)
        lease_service_pb2_grpc.add_LeaseServiceServicer_to_server(self.lease_servicer, self.server)
        self.event_servicer = EventServicer(self.events, self.feed, self.run)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(self.event_servicer, self.server)
        access_service_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessServicer(config.auth.enabled), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        try:
            credentials = server_credentials(config.server.tls)
            if credentials is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        if config.web.address or config.web.metrics_address:
            own = self._own_channel() if config.web.address else None
            if own is not None:
                source = LiveSource(
                    self.feed, self.events, inventory, self.leases, self.board, self.run
                )
                self.console = Console(own, source, authentication_enabled=config.auth.enabled)
            self.web = WebEndpoints(
                self.metrics,
                lambda: self.run(occupancy, kinds),
                self.feed.watching,
                self._ready,
                None if own is None else Gateway(own, loopback_only=not config.auth.enabled),
                self.console,
            )
        return port

    def _own_channel(self) -> grpc.aio.Channel:
        """A channel to this broker through a Unix socket in a directory
        only this process's user may enter: what HTTP callers send reaches
        the servicers through the same interceptors as any gRPC call."""
        self._socket_dir = tempfile.mkdtemp(prefix="broker-")
        target = f"unix:{os.path.join(self._socket_dir, 'grpc.sock')}"
        if self.server.add_insecure_port(target) == 0:
            raise OSError(f"cannot listen on {target}")
        self._own = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        return self._own

    async def _start(self) -> None:
        if self.web is not None:
            await self.web.start(self.config.web.address, self.config.web.metrics_address)
        self._stop_counting = event_model.on_commit_types(self.metrics.count_events)
        self._stop_feed = event_model.on_commit(self.feed.wake)
        self.feed.start()
        if self.listener is not None:
            self.listener.start()
        await self.server.start()
        self._sweeper = asyncio.create_task(self._sweep_expired())
        self._watcher = asyncio.create_task(self._watch_database())
        self._trimmer = asyncio.create_task(self._return_memory())
        self._pruner = asyncio.create_task(self._retain())
        await self._set_health(True)

    async def _stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        # What ended calls left to finish (sessions closing, requests leaving
        # the queue) finishes before the database closes.
        await self.lease_servicer.drain(DRAIN_SECONDS)
        await self.board.drain(DRAIN_SECONDS)
        self._stop_feed()
        self._stop_counting()
        if self.web is not None:
            await self.web.stop()
        if self._own is not None:
            await self._own.close()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        await self.feed.close()
        for task in (self._sweeper, self._watcher, self._trimmer, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.listener is not None:
            self.listener.stop()
        self.run.close()
        self.interceptor.close()
        if self.authenticator is not None:
            self.authenticator.close()
        close_database(self.database)

    async def _sweep_expired(self) -> None:
        """Ends leases whose TTL ran out and sessions whose keep-alives
        stopped, and makes a queue pass (waits that ended, lock-delays that
        passed), so that nothing waits for the next acquire. A sweep that
        fails (the database unreachable, or the write lock not had within
        the lock timeout) is retried at the next interval; health is not
        its business (`_watch_database`)."""
        interval = self.config.leases.expiry_interval
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.run(self.leases.expire_due)
                if expired:
                    log.info("expired %d lease(s) whose TTL ran out", expired)
            except (peewee.OperationalError, peewee.InterfaceError) as error:
                log.warning("lease expiry sweep failed on the database: %s", error)
            except Exception:
                log.exception("lease expiry sweep failed; retrying in %.1f s", interval)

    async def _retain(self) -> None:
        """Deletes what is older than `retention.*` (events, ended leases,
        waits and sessions), a bounded number of small transactions per
        table and sweep, every `retention.sweep_interval`."""
        while True:
            await asyncio.sleep(self.config.retention.sweep_interval)
            try:
                deleted = await self.run(self.retention.sweep, RETENTION_BATCHES)
                if any(deleted.values()):
                    log.info(
                        "retention deleted %s",
                        ", ".join(f"{count} {name}" for name, count in deleted.items() if count),
                    )
            except Exception as error:
                log.warning("retention sweep failed (%s); retrying at the next", error)

    async def _return_memory(self) -> None:
        """Gives the heap freed by ended calls back to the system, now and
        then (`broker.api.memory`), off the event loop."""
        while True:
            await asyncio.sleep(memory.TRIM_INTERVAL)
            await asyncio.to_thread(memory.trim)

    async def _watch_database(self) -> None:
        """Health tells this broker's own access to the database: the probe
        (`broker.models.probe`) runs on a thread of its own; a probe that
        fails, or has not answered within its bound, makes the broker
        NOT_SERVING, and the next that answers makes it SERVING again.
        Waiting for another broker's lock plays no part: the probe takes
        none."""
        loop = asyncio.get_running_loop()
        probe = self.probe
        serving = True
        pending: asyncio.Future | None = None
        while True:
            await asyncio.sleep(probe.interval)
            if pending is None or pending.done():
                pending = loop.run_in_executor(self._probe_thread, probe.check)
            try:
                reachable = bool(await asyncio.wait_for(asyncio.shield(pending), probe.timeout))
            except TimeoutError:
                reachable = False  # the check overran its own deadline
            except Exception:
                log.exception("the database probe failed")
                reachable = False
            if not reachable:
                # Every worker's connection may be dead: the next call of
                # each opens a fresh one.
                renew_connections()
            if reachable != serving:
                serving = reachable
                if serving:
                    log.info("the database answers again")
                else:
                    log.warning(
                        "the database did not answer this broker's probe within %.1f s: "
                        "NOT_SERVING",
                        probe.timeout,
                    )
                await self._set_health(serving)

    async def _ready(self) -> bool:
        """Whether the database answers the probe now, within its bound."""
        loop = asyncio.get_running_loop()
        check = loop.run_in_executor(self._probe_thread, self.probe.check)
        try:
            return bool(await asyncio.wait_for(check, self.probe.timeout))
        except Exception:
            return False

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


# Transactions of `events.PRUNE_BATCH` deletions one retention sweep makes at
# most, per table.
RETENTION_BATCHES = 10

# How long, at shutdown, the work that ended calls left may still take.
DRAIN_SECONDS = 5.0

# Calls beyond the broker's limit kept for health checks and reflection.
PROBE_CALLS = 64


def _bound(address: str, port: int) -> str:
    """`address` with the port it was bound to; empty if it was not."""
    return f"{address.rpartition(':')[0]}:{port}" if address and port else ""


def backlog_options(max_calls: int) -> tuple[tuple[str, int], ...]:
    """gRPC's own backlog of calls that arrived before the server picked
    them up: by default it cancels calls at random past 1,000 of them, so a
    burst of waiting acquires or session opens lost one call in ten as
    CANCELLED. It is made as deep as the broker's own limit of calls at
    once, which refuses with RESOURCE_EXHAUSTED instead."""
    depth = max(max_calls + PROBE_CALLS, 1000)
    return (
        ("grpc.server.max_pending_requests", depth),
        ("grpc.server.max_pending_requests_hard_limit", depth),
    )


def authenticator_for(config: Config) -> Authenticator | None:
    """The gate of a broker with authentication on: API tokens, OIDC tokens
    with `auth.oidc`, client certificates with `server.tls.client_ca_file`."""
    if not config.auth.enabled:
        return None
    oidc = None if config.auth.oidc is None else OidcVerifier(config.auth.oidc)
    mtls = config.auth.mtls if config.server.tls.mutual else None
    return Authenticator(Tokens(), config.auth.cache_seconds, oidc=oidc, mtls=mtls)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ConfigError(key, f"cannot read {path}: {error.strerror}") from error


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """TLS with the configured certificate and key (None: plain TCP); with a
    client CA, every client must show a certificate it signed."""
    if not tls.enabled:
        return None
    client_ca = _read("server.tls.client_ca_file", tls.client_ca_file) if tls.mutual else None
    key = _read("server.tls.key_file", tls.key_file)
    credentials = grpc.ssl_server_credentials(
        [(key, _read("server.tls.cert_file", tls.cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    log.info(
        "TLS is on (%s)%s",
        tls.cert_file,
        f"; mutual TLS: clients need a certificate of {tls.client_ca_file}" if tls.mutual else "",
    )
    return credentials


def runner_for(database: peewee.Database) -> Runner:
    """On SQLite one writer that commits writes in groups, and a few reader
    threads; worker threads for a database across the network."""
    if backend_of(database).group_commit:
        return GroupCommitRunner(SQLITE_READERS)
    return ThreadRunner(DATABASE_WORKERS)


def build_server(config: Config, address: str | None = None) -> BrokerServer:
    """Wires a broker for `config`, bound to `address` (default
    `server.address`; port 0 picks a free port), once `check_exposure`
    allows that address."""
    address = address or config.server.address
    check_exposure(config, address)
    return BrokerServer(config, address)


def serve_forever(
    config_path: str | None, address: str | None = None, database_url: str | None = None
) -> int:
    """Runs a broker until SIGTERM or SIGINT; returns the exit status."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path)
        if database_url:
            config = with_database_url(config, database_url)
        broker = build_server(config, address)
    except (ConfigError, DatabaseURLError, KindDeclarationError, SchemaVersionError) as error:
        print(f"broker: configuration error: {error}", file=sys.stderr)
        return 2
    except peewee.DatabaseError as error:
        detail = " ".join(str(error).split())
        print(f"broker: database.url: cannot set up the database: {detail}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"broker: {error}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        broker.start()
    except OSError as error:
        broker.stop(0)
        print(f"broker: {error}", file=sys.stderr)
        return 1
    print(f"broker listening on {broker.address}", flush=True)
    if broker.web_address:
        print(f"console on http://{broker.web_address}/", flush=True)
    if broker.web_address and broker.web_address == broker.metrics_address:
        print(f"metrics and health on http://{broker.web_address}/metrics", flush=True)
    else:
        if broker.web_address:
            print(f"health on http://{broker.web_address}/healthz", flush=True)
        if broker.metrics_address:
            print(f"metrics on http://{broker.metrics_address}/metrics", flush=True)
    stopping.wait()
    log.info("stopping: finishing calls in flight (up to %.1f s)", config.server.grace_seconds)
    broker.stop(config.server.grace_seconds)
    return 0
