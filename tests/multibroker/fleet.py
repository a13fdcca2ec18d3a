"""What the multi-broker tests share: `broker serve` subprocesses on one
PostgreSQL schema, channels to them, the health probe, and readers of the
schema's tables (straight SQL, so no test binds the product's models)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import signal
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import inventory_service_pb2_grpc, lease_service_pb2, lease_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.helpers import (
    BrokerProcess,
    acquire_request,
    requirement,
    wait_until,
    write_config,
)
from tests.integration.test_ownership_under_concurrency import Hold, Recorded

CALCULATOR_KIND = "resources.calculator.data.CalculatorData"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def schema_of(database_url: str) -> str:
    """The `?schema=` of a PostgreSQL URL."""
    return parse_qs(urlparse(database_url).query)["schema"][0]


class Broker:
    """One running `broker serve` subprocess, with a channel and stubs."""

    def __init__(self, process: BrokerProcess, address: str):
        self.process = process
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(self.channel)
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def pid(self) -> int:
        return self.process.pid

    def health_status(self, timeout: float = 2.0) -> int:
        request = health_pb2.HealthCheckRequest(service="")
        return self.health.Check(request, timeout=timeout).status

    def close(self) -> None:
        self.channel.close()


class Fleet:
    """Starts `broker serve` subprocesses with one configuration file (the
    calculator kind, the given `leases` settings and, if given,
    `database.stall_timeout`) on a database URL each (default: the
    fleet's), and SIGKILLs them by pid. `stop_all` is the fixture's
    finalizer: every process started is stopped (a stopped one continued
    first), whatever the test did."""

    def __init__(
        self,
        cwd: Path,
        database_url: str,
        leases: dict | None = None,
        stall_timeout: float | None = None,
    ):
        self.cwd = cwd
        self.database_url = database_url
        document: dict = {
            "kinds": [CALCULATOR_KIND],
            "leases": {"default_ttl": 30.0, **(leases or {})},
        }
        if stall_timeout is not None:
            document["database"] = {"stall_timeout": stall_timeout}
        self.config_path = write_config(cwd / f"broker-{id(self):x}.yml", document)
        self.processes: list[BrokerProcess] = []
        self.brokers: list[Broker] = []

    def args(self, database_url: str | None = None) -> tuple[str, ...]:
        return (
            "--config",
            str(self.config_path),
            "--address",
            "127.0.0.1:0",
            "--database",
            database_url or self.database_url,
        )

    def spawn(self, database_url: str | None = None) -> BrokerProcess:
        """Starts a process without waiting for it."""
        process = BrokerProcess(self.args(database_url), cwd=self.cwd)
        self.processes.append(process)
        return process

    def ready(self, process: BrokerProcess) -> Broker:
        """Waits for a spawned process to listen and to answer SERVING."""
        address = process.wait_listening()
        wait_serving(address)
        broker = Broker(process, address)
        self.brokers.append(broker)
        return broker

    def start(self, database_url: str | None = None) -> Broker:
        return self.ready(self.spawn(database_url))

    def start_many(self, count: int, *, together: bool = False) -> list[Broker]:
        """Starts `count` brokers: the first alone (it lays out the schema),
        then the others at once; with `together`, all at once on whatever
        the schema holds, as a fleet booting together would."""
        first = [] if together else [self.start()]
        processes = [self.spawn() for _ in range(count - len(first))]
        with concurrent.futures.ThreadPoolExecutor(len(processes) or 1) as pool:
            return first + list(pool.map(self.ready, processes))

    def kill(self, broker: Broker) -> None:
        """SIGKILLs a broker by its pid and reaps it."""
        assert broker.process.kill() == -signal.SIGKILL
        broker.close()

    def freeze(self, broker: Broker) -> None:
        """SIGSTOPs a broker by its pid: it keeps its sockets and does nothing."""
        broker.process.signal(signal.SIGSTOP)

    def thaw(self, broker: Broker) -> None:
        broker.process.signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for broker in self.brokers:
            broker.close()
        for process in self.processes:
            process.signal(signal.SIGCONT)
            process.kill()

    def logs(self) -> str:
        """The tail of every broker's stderr, for failure messages."""
        return "\n".join(
            f"--- broker pid {p.pid} ---\n" + "\n".join(p.stderr.splitlines()[-30:])
            for p in self.processes
        )


# ------------------------------------------------------- reading the schema


def recorded_events(admin, database_url: str) -> list[Recorded]:
    """The schema's event table in id (commit) order."""
    with admin.cursor() as cursor:
        cursor.execute(
            f'SELECT "type", "resource", "lease_id", "fencing_token"'
            f' FROM "{schema_of(database_url)}"."event" ORDER BY "id"'
        )
        return [Recorded(*row) for row in cursor.fetchall()]


def wait_health(broker: Broker, status: int, timeout: float) -> float:
    """Waits until the broker's health is `status`; returns how long it took."""
    start = time.monotonic()

    def reached() -> bool:
        try:
            return broker.health_status(timeout=min(RPC_TIMEOUT, 2.0)) == status
        except grpc.RpcError:
            return False

    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    wait_until(reached, timeout, f"health {name}")
    return time.monotonic() - start


# ------------------------------------------------------- load and watching

# Answers after which a call is simply made again: the database or its lock
# was not had in time, or the call's deadline passed.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
LOOP_CALL_TIMEOUT = 10.0
LOOP_JOIN_TIMEOUT = 2 * LOOP_CALL_TIMEOUT + 5.0


@dataclasses.dataclass
class Grant:
    """One grant a loop saw, with when (monotonic) its acquire returned."""

    lease_id: str
    at: float


class GrantLoop:
    """A client thread that acquires one of `names` by name on `broker` and
    releases it, again and again, until stopped: each grant's client-side
    hold is recorded for the history checker. An acquire that finds the
    resource held tries the next name; one answered UNAVAILABLE or past its
    deadline is repeated with the same `request_id` (so a retry never makes
    a second grant), and a release is repeated until it succeeds, so that
    nothing is left held. Any other answer is an error and ends the loop."""

    def __init__(self, broker: Broker, names: list[str], holder: str):
        self.broker = broker
        self.names = names
        self.holder = holder
        self.grants: list[Grant] = []
        self.holds: list[Hold] = []
        self.errors: list[str] = []
        self.retries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grants-{holder}", daemon=True)

    def start(self) -> GrantLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(LOOP_JOIN_TIMEOUT)
        assert not self._thread.is_alive(), f"the grant loop of {self.holder} is stuck"

    def granted_since(self, moment: float) -> int:
        """How many grants this loop saw whose acquire returned after `moment`."""
        return sum(1 for grant in list(self.grants) if grant.at > moment)

    def _run(self) -> None:
        names = itertools.cycle(self.names)
        name = next(names)
        request_id = uuid.uuid4().hex
        while not self._stop.is_set():
            request = acquire_request(requirement("Calculator", name=name), holder=self.holder)
            request.request_id = request_id
            try:
                granted = self.broker.leases.AcquireLease(request, timeout=LOOP_CALL_TIMEOUT)
            except grpc.RpcError as error:
                if error.code() in RETRIED:
                    self.retries += 1
                    continue
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.errors.append(f"acquire {name}: {error.code()} {error.details()}")
                    return
                name, request_id = next(names), uuid.uuid4().hex
                continue
            start = time.monotonic()
            self.grants.append(Grant(granted.lease.lease_id, start))
            tokens = {g.resource.name: g.fencing_token for g in granted.lease.grants}
            end = time.monotonic()
            if not self._release(granted):
                self.holds.append(Hold(granted.lease.lease_id, tokens, start, None))
                return
            self.holds.append(Hold(granted.lease.lease_id, tokens, start, end))
            name, request_id = next(names), uuid.uuid4().hex

    def _release(self, granted: lease_service_pb2.AcquireLeaseResponse) -> bool:
        request = lease_service_pb2.ReleaseLeaseRequest(
            lease_id=granted.lease.lease_id, secret=granted.secret
        )
        deadline = time.monotonic() + LOOP_CALL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.broker.leases.ReleaseLease(request, timeout=LOOP_CALL_TIMEOUT)
                return True
            except grpc.RpcError as error:
                if error.code() not in RETRIED:
                    self.errors.append(f"release: {error.code()} {error.details()}")
                    return False
                self.retries += 1
        self.errors.append(f"release of {granted.lease.lease_id} never succeeded")
        return False


class HealthWatch:
    """Samples a broker's health on a thread of its own until stopped;
    `statuses` holds every answer (None for a check that failed)."""

    def __init__(self, broker: Broker, every: float = 0.1):
        self.broker = broker
        self.every = every
        self.statuses: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(RPC_TIMEOUT)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(self.broker.health_status(timeout=2.0))
            except grpc.RpcError:
                self.statuses.append(None)
            self._stop.wait(self.every)

    def not_serving(self) -> list[int | None]:
        return [status for status in self.statuses if status != SERVING]
