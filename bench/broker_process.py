"""The brokers under test, and what every bench point shares.

A broker runs as its own subprocess (`broker serve`, a temp dir with its
configuration and, by default, its own SQLite file, 127.0.0.1 and a free
port, ready when it prints `broker listening on HOST:PORT`, stopped by its
pid whatever happens). On PostgreSQL several brokers may share one database:
`start_broker(workdir, url, count)` starts them one after the other, and
`postgres_schema` gives each layout a fresh schema, dropped at the end. The
configuration sets only what the bench needs; everything else (the session
keep-alive timeout, the expiry sweep's interval, the queue's longest wait,
PostgreSQL's pool and timeouts) is the broker's default. Clients talk to the
brokers over 127.0.0.1 only, through the generated stubs (`broker.v1`), never
the SDK (but for its interceptor that sends a token, `open_channel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "Calculator"
KIND_MODEL = "resources.calculator.data.CalculatorData"
READY_PREFIX = "broker listening on "
CONSOLE_PREFIX = "console on "
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
  url: {database_url}
auth:
  enabled: {auth}
web:
  address: "{web_address}"
kinds:
  - {kind_model}
"""
# The principal of the token a broker with authentication on is started with.
TOKEN_NAME = "bench"


@dataclasses.dataclass
class Broker:
    """One `broker serve` subprocess, or several on one database; `stop()`
    ends each by its pid. Clients spread over them by `address_for`."""

    processes: list[subprocess.Popen]
    addresses: list[str]
    log_paths: list[str]
    database_url: str = ""
    token: str = ""  # an admin's token if authentication is on, else ""
    # Each broker's web address (HOST:PORT), when started with its console.
    web_addresses: list[str] = dataclasses.field(default_factory=list)

    @property
    def address(self) -> str:
        """The first broker's address (every broker serves the same data)."""
        return self.addresses[0]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def address_for(self, client: int) -> str:
        """The broker that client number `client` talks to: round robin."""
        return self.addresses[client % len(self.addresses)]

    def cpu_seconds(self) -> float:
        """User+system CPU time of every broker process, added up."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)


def broker_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "broker")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "broker"]


def start_broker(
    workdir: str,
    database_url: str | None = None,
    count: int = 1,
    *,
    auth: bool = False,
    console: bool = False,
) -> Broker:
    """Starts `count` brokers (`broker serve` on 127.0.0.1:0) on `database_url`,
    by default a fresh SQLite file in `workdir`, one after the other (each
    creates or checks the tables on start-up); returns once every one has
    printed the address it listens on. Several brokers need a database they
    can share (PostgreSQL). With `auth`, authentication is on and an admin's
    token is made first, offline (`broker tokens create`), as an operator
    would; it is the broker's `token`. With `console`, each broker also
    serves its web site on a free port (`web_addresses`)."""
    config_path = os.path.join(workdir, "rotest.yml")
    database_url = database_url or "sqlite:///" + os.path.join(workdir, "broker.sqlite3")
    with open(config_path, "w", encoding="utf-8") as stream:
        stream.write(
            CONFIG_YAML.format(
                kind_model=KIND_MODEL,
                database_url=database_url,
                auth=str(auth).lower(),
                web_address="127.0.0.1:0" if console else "",
            )
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    token = make_token(config_path, workdir, env) if auth else ""
    command = [
        *broker_command(),
        "serve",
        "--config", config_path,
        "--address", "127.0.0.1:0",
        "--database", database_url,
    ]  # fmt: skip
    broker = Broker([], [], [], database_url, token)
    try:
        for index in range(count):
            log_path = os.path.join(workdir, "broker.log" if count == 1 else f"broker-{index}.log")
            broker.log_paths.append(log_path)
            with open(log_path, "wb") as log:
                broker.processes.append(
                    subprocess.Popen(
                        command, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env, text=True
                    )
                )
            lines = read_lines(broker.processes[-1])
            broker.addresses.append(wait_listening(broker.processes[-1], log_path, lines))
            if console:
                web = wait_listening(broker.processes[-1], log_path, lines, CONSOLE_PREFIX)
                broker.web_addresses.append(web.removeprefix("http://").rstrip("/"))
    except BaseException:
        broker.stop()
        raise
    return broker


def make_token(config_path: str, workdir: str, env: dict[str, str]) -> str:
    """An admin's token in the configuration's database, made by `broker
    tokens create` (which prints the token last)."""
    done = subprocess.run(
        [*broker_command(), "tokens", "create", TOKEN_NAME, "--role", "admin",
         "--config", config_path],
        capture_output=True, text=True, cwd=workdir, env=env, timeout=START_TIMEOUT,
    )  # fmt: skip
    lines = done.stdout.split()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"broker tokens create exited {done.returncode}: {done.stderr[-2000:]}")
    return lines[-1]


def open_channel(address: str, token: str = "", options=CHANNEL_OPTIONS):
    """A blocking channel to `address`; with a `token`, every call on it
    carries `authorization: Bearer <token>`, added by the SDK's own
    interceptor so that the bench pays what an SDK client pays."""
    import grpc

    channel = grpc.insecure_channel(address, options=options)
    if not token:
        return channel
    from sdk.channel import BearerToken

    return grpc.intercept_channel(channel, BearerToken(token))


def read_lines(process: subprocess.Popen) -> queue.Queue[str | None]:
    """The process's stdout, line by line, read to its end on a thread of
    its own so the pipe never fills; None after the last line."""
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    return lines


def wait_listening(
    process: subprocess.Popen,
    log_path: str,
    lines: queue.Queue[str | None] | None = None,
    prefix: str = READY_PREFIX,
) -> str:
    """What a starting broker prints after `prefix` (by default the address
    it listens on), once it prints it; a RuntimeError with its log's end if
    it exits or is not ready in time."""
    lines = read_lines(process) if lines is None else lines
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            problem = f"the broker (pid {process.pid}) was not ready in {START_TIMEOUT:g} s"
            break
        if line is None:
            problem = f"the broker (pid {process.pid}) exited with status {process.wait()}"
            break
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        raise RuntimeError(f"{problem}; its log ends:\n{log.read()[-2000:]}")


def loopback_problem(url: str) -> str | None:
    """Why the bench may not use the PostgreSQL server at `url` (it talks to
    127.0.0.1 only, and adds the `?schema=` itself), or None."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme not in ("postgresql", "postgres") or not parsed.path.strip("/"):
        return f"{url!r} is not postgresql://USER@HOST:PORT/DATABASE"
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        return f"{url!r}: the bench talks to a PostgreSQL server on 127.0.0.1 only"
    if parsed.query:
        return f"{url!r}: give no query (the bench adds ?schema= itself)"
    return None


def postgres_admin(url: str):
    """An autocommit psycopg2 connection to `url`, or a RuntimeError saying
    why there is none."""
    import psycopg2

    try:
        connection = psycopg2.connect(url, connect_timeout=3, options="-c lock_timeout=10000")
    except psycopg2.Error as error:
        reason = " ".join(str(error).split())
        raise RuntimeError(f"PostgreSQL at {url} is unreachable: {reason}") from None
    connection.autocommit = True
    return connection


def postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL server at `url` cannot be used now, or None."""
    try:
        import psycopg2  # noqa: F401
    except ImportError as error:
        return f"psycopg2 cannot be imported ({error})"
    try:
        postgres_admin(url).close()
    except RuntimeError as error:
        return str(error)
    return None


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema `bench_<random>` in the PostgreSQL database at `url`:
    yields the broker's database URL for it, and drops the schema (CASCADE)
    at the end, whatever happens. Stop the brokers on it first."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(postgres_admin(url)) as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?schema={schema}"
    finally:
        with contextlib.closing(postgres_admin(url)) as admin, admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def seed(address: str, names: Sequence[str], token: str = "") -> list[str]:
    """Creates a Calculator resource for each of `names` (as the admin of
    `token`, if authentication is on); returns them."""
    import grpc

    from broker.v1 import inventory_service_pb2, inventory_service_pb2_grpc, resource_pb2

    with open_channel(address, token, options=()) as channel:
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
