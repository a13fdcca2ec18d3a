"""What the multi-broker tests share: `broker serve` subprocesses on one
PostgreSQL schema, channels to them, the health probe, and readers of the
schema's tables (straight SQL, so no test binds the product's models)."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import inventory_service_pb2_grpc, lease_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.helpers import BrokerProcess, wait_until, write_config
from tests.integration.test_ownership_under_concurrency import Recorded

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
    calculator kind and the given `leases` settings) on a database URL each
    (default: the fleet's), and SIGKILLs them by pid. `stop_all` is the
    fixture's finalizer: every process started is stopped, whatever the test
    did."""

    def __init__(self, cwd: Path, database_url: str, leases: dict | None = None):
        self.cwd = cwd
        self.database_url = database_url
        self.config_path = write_config(
            cwd / f"broker-{id(self):x}.yml",
            {"kinds": [CALCULATOR_KIND], "leases": {"default_ttl": 30.0, **(leases or {})}},
        )
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

    def stop_all(self) -> None:
        for broker in self.brokers:
            broker.close()
        for process in self.processes:
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
