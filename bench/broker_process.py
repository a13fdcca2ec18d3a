"""The broker under test, and what every bench point shares.

The broker runs as its own subprocess (`broker serve`, a temp dir with its own
SQLite file and configuration, 127.0.0.1 and a free port, ready when it prints
`broker listening on HOST:PORT`, stopped by its pid whatever happens). Its
configuration sets only what the bench needs; everything else (the session
keep-alive timeout, the expiry sweep's interval, the queue's longest wait) is
the broker's default. Clients talk to it over 127.0.0.1 only, through the
generated stubs (`broker.v1`), never the SDK.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "Calculator"
KIND_MODEL = "resources.calculator.data.CalculatorData"
READY_PREFIX = "broker listening on "
START_TIMEOUT = 30.0  # seconds for the broker, or the clients, to be ready
RPC_TIMEOUT = 10.0
LEASE_TTL = 60  # seconds; every lease in the bench is released long before
# Each channel its own connection, as separate test runs would have.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

CONFIG_YAML = """\
server:
  max_concurrent_rpcs: 4096
  grace_seconds: 1.0
database:
  url: sqlite:///broker.sqlite3
kinds:
  - {kind_model}
"""


@dataclasses.dataclass
class Broker:
    """A broker subprocess; `stop()` ends it by its pid."""

    process: subprocess.Popen
    address: str
    log_path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)


def broker_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "broker")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "broker"]


def start_broker(workdir: str) -> Broker:
    """Starts `broker serve` on 127.0.0.1:0 with a fresh SQLite file in
    `workdir`; returns once it has printed the address it listens on."""
    config_path = os.path.join(workdir, "rotest.yml")
    with open(config_path, "w", encoding="utf-8") as stream:
        stream.write(CONFIG_YAML.format(kind_model=KIND_MODEL))
    database_url = "sqlite:///" + os.path.join(workdir, "broker.sqlite3")
    log_path = os.path.join(workdir, "broker.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    command = [
        *broker_command(),
        "serve",
        "--config", config_path,
        "--address", "127.0.0.1:0",
        "--database", database_url,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env, text=True
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # reads stdout to the end so the pipe never fills
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    broker = Broker(process, "", log_path)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                problem = f"the broker was not ready in {START_TIMEOUT:g} s"
                break
            if line is None:
                problem = f"the broker exited with status {process.wait()}"
                break
            if line.startswith(READY_PREFIX):
                broker.address = line[len(READY_PREFIX) :].strip()
                return broker
    except BaseException:
        broker.stop()
        raise
    broker.stop()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        raise RuntimeError(f"{problem}; its log ends:\n{log.read()[-2000:]}")


def seed(address: str, names: Sequence[str]) -> list[str]:
    """Creates a Calculator resource for each of `names`; returns them."""
    import grpc

    from broker.v1 import inventory_service_pb2, inventory_service_pb2_grpc, resource_pb2

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        for name in names:
            resource = resource_pb2.Resource(
                name=name,
                kind=KIND,
                fields={"ip_address": resource_pb2.FieldValue(string_value="127.0.0.1")},
            )
            stub.CreateResource(
                inventory_service_pb2.CreateResourceRequest(resource=resource),
                timeout=RPC_TIMEOUT,
            )
    return list(names)


def acquire_request(name: str, holder: str, *, max_wait: float = 0.0, session_id: str = ""):
    """An `AcquireLeaseRequest` for the Calculator called `name`; it waits in
    the queue up to `max_wait` seconds if that is positive."""
    from google.protobuf import duration_pb2

    from broker.v1 import lease_pb2, lease_service_pb2, resource_pb2

    request = lease_service_pb2.AcquireLeaseRequest(
        requirements=[
            lease_pb2.Requirement(
                kind=KIND,
                constraints=[
                    lease_pb2.Constraint(
                        field="name", equals=resource_pb2.FieldValue(string_value=name)
                    )
                ],
            )
        ],
        ttl=duration_pb2.Duration(seconds=LEASE_TTL),
        holder=holder,
        session_id=session_id,
    )
    if max_wait > 0:
        request.max_wait.FromNanoseconds(round(max_wait * 1e9))
    return request


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (all its threads), or NaN off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values, or NaN."""
    if not sorted_values:
        return float("nan")
    rank = round(fraction * (len(sorted_values) - 1))
    return sorted_values[min(len(sorted_values) - 1, max(0, rank))]


def stop_processes(members) -> None:
    """Ends the `multiprocessing` processes still alive, each by its pid."""
    for member in members:
        if member.pid is not None and member.is_alive():
            member.kill()
        if member.pid is not None:
            member.join(5)
