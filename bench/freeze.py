"""A frozen broker: the fleet's grants per second before, during and after
one of three brokers on one PostgreSQL database is frozen (SIGSTOP).

Client threads of this process (each with its own channel) loop
acquire(by name)+release of a Calculator of their own, dealt round robin
over the brokers; every grant is stamped with `time.monotonic()`. After a
warm-up the bench measures `--duration` seconds, then freezes one broker by
its pid, at an instant when one of its sessions holds the brokers' advisory
write lock (the worst case: the others wait until the server ends that
session's idle transaction; it polls `pg_locks` for a session whose
`application_name` is that broker's, and tries again if the lock moved on
before the signal landed), keeps it frozen `--freeze-seconds`, continues it
(SIGCONT) and measures `--duration` seconds more.

Per phase: grants/s of the whole fleet and of the two brokers never frozen.
For the freeze: how long after the signal the other brokers granted again
(bounded by `database.stall_timeout`, 5 s by default), then the grants per
second of the whole run. Calls to the frozen broker wait out their deadline;
calls answered UNAVAILABLE (a lock not had in time) are made again and
counted apart; any other failure is an error.

    .venv/bin/python -m bench --only freeze
    .venv/bin/python -m bench --only freeze --freeze-seconds 16
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import uuid

from bench.broker_process import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    acquire_request,
    postgres_admin,
)

BROKERS = 3
CLIENTS_PER_BROKER = 4
CLIENTS = BROKERS * CLIENTS_PER_BROKER
FROZEN = 0  # which broker is frozen
# Attempts at freezing the broker while it holds the write lock.
FREEZE_ATTEMPTS = 50
CONTINUE_PAUSE = 0.5  # seconds between a missed attempt and the next
HOLDS_LOCK = """
    SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s
"""


@dataclasses.dataclass
class Client:
    """What one client thread saw."""

    broker: int
    grants: list[float] = dataclasses.field(default_factory=list)
    retried: int = 0
    timed_out: int = 0
    errors: int = 0
    first_error: str = ""


def client_loop(address: str, name: str, client: Client, stop: threading.Event) -> None:
    """acquire(name)+release until `stop`; a call answered UNAVAILABLE is
    made again, as is one whose deadline passed (the frozen broker's)."""
    import grpc

    from broker.v1 import lease_service_pb2, lease_service_pb2_grpc

    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        held = None
        request = None
        while not stop.is_set():
            try:
                if held is None:
                    if request is None:
                        # A retry carries the same id: it never makes a second grant.
                        request = acquire_request(name, f"bench-freeze@{name}")
                        request.request_id = uuid.uuid4().hex
                    held = stub.AcquireLease(request, timeout=RPC_TIMEOUT)
                    request = None
                    client.grants.append(time.monotonic())
                stub.ReleaseLease(
                    lease_service_pb2.ReleaseLeaseRequest(
                        lease_id=held.lease.lease_id, secret=held.secret
                    ),
                    timeout=RPC_TIMEOUT,
                )
                held = None
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    client.retried += 1
                elif error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    client.timed_out += 1
                else:
                    client.errors += 1
                    client.first_error = client.first_error or (
                        f"{error.code().name}: {error.details()}"
                    )
                    held = request = None
                    stop.wait(0.1)


def freeze_holding_the_lock(broker: Broker, admin, index: int) -> int:
    """SIGSTOPs broker `index` at an instant its session holds the write
    lock; returns how many attempts that took (it is left frozen either
    way after the last one)."""
    pid = broker.pids[index]
    name = f"broker-{pid}"  # its sessions' application_name
    with admin.cursor() as cursor:
        for attempt in range(1, FREEZE_ATTEMPTS + 1):
            deadline = time.monotonic() + CONTINUE_PAUSE
            while time.monotonic() < deadline:
                cursor.execute(HOLDS_LOCK, (name,))
                if cursor.fetchone()[0]:
                    break
            os.kill(pid, signal.SIGSTOP)
            cursor.execute(HOLDS_LOCK, (name,))
            if cursor.fetchone()[0] or attempt == FREEZE_ATTEMPTS:
                return attempt
            os.kill(pid, signal.SIGCONT)
    return FREEZE_ATTEMPTS


@dataclasses.dataclass
class FreezeResult:
    before: tuple[float, float]  # grants/s: whole fleet, brokers never frozen
    during: tuple[float, float]
    after: tuple[float, float]
    stood_still: float  # s from the freeze to the next grant elsewhere
    per_second: list[int]  # the whole fleet's grants in each second of the run
    freeze_seconds: float
    attempts: int
    retried: int
    timed_out: int
    errors: int
    first_error: str

    def row(self) -> str:
        return "\n".join(
            f"{phase:<7} {fleet:>10.0f} {others:>13.0f}"
            for phase, (fleet, others) in (
                ("before", self.before),
                ("frozen", self.during),
                ("after", self.after),
            )
        ) + (
            f"\nthe other brokers granted again {self.stood_still:.2f} s after the freeze "
            f"(frozen while holding the write lock, attempt {self.attempts}); "
            f"UNAVAILABLE retried: {self.retried}; past their deadline (on the frozen broker): "
            f"{self.timed_out}; errors: {self.errors}"
            f"\ngrants per second, whole run: {' '.join(map(str, self.per_second))}"
        )

    def points(self) -> list[dict]:
        suffix = f"_postgresql_{BROKERS}brokers"
        values = [
            (f"freeze_grants_{phase}", round(rate, 1), "grants/s")
            for phase, (rate, _) in (
                ("before", self.before),
                ("during", self.during),
                ("after", self.after),
            )
        ]
        values += [
            ("freeze_others_grants_during", round(self.during[1], 1), "grants/s"),
            ("freeze_stood_still", round(self.stood_still, 3), "s"),
        ]
        clients = CLIENTS
        return [
            {"name": name + suffix, "clients": clients, "value": value, "unit": unit}
            for name, value, unit in values
        ]

    def targets(self) -> str:
        return (
            f"target: the other brokers grant within database.stall_timeout of the freeze "
            f"(default 5 s): {self.stood_still:.2f} s"
        )


HEADER = "phase   fleet grants/s  others grants/s"


def header(duration: float, freeze_seconds: float) -> str:
    return (
        f"# freeze on PostgreSQL, {BROKERS} brokers: {CLIENTS} clients "
        f"(acquire+release, round robin); {duration:g} s before, broker {FROZEN} frozen "
        f"{freeze_seconds:g} s, {duration:g} s after\n{HEADER}"
    )


def run_freeze(
    broker: Broker,
    admin_url: str,
    names: list[str],
    *,
    duration: float,
    freeze_seconds: float,
    warmup: float,
) -> FreezeResult:
    """Runs the clients, freezes one broker, continues it; see the module."""
    clients = [Client(n % BROKERS) for n in range(CLIENTS)]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(broker.addresses[client.broker], names[n], client, stop),
            daemon=True,
        )
        for n, client in enumerate(clients)
    ]
    frozen_pid = broker.pids[FROZEN]
    with contextlib.closing(postgres_admin(admin_url)) as admin:
        admin.autocommit = True
        try:
            for thread in threads:
                thread.start()
            time.sleep(warmup)
            start = time.monotonic()
            time.sleep(duration)
            attempting_at = time.monotonic()
            attempts = freeze_holding_the_lock(broker, admin, FROZEN)
            frozen_at = time.monotonic()
            time.sleep(freeze_seconds)
            os.kill(frozen_pid, signal.SIGCONT)
            thawed_at = time.monotonic()
            time.sleep(duration)
            end = time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen_pid, signal.SIGCONT)
            stop.set()
            for thread in threads:
                thread.join(2 * RPC_TIMEOUT)

    def rates(since: float, until: float) -> tuple[float, float]:
        every = [t for c in clients for t in c.grants if since <= t < until]
        others = [t for c in clients if c.broker != FROZEN for t in c.grants if since <= t < until]
        return len(every) / (until - since), len(others) / (until - since)

    others_after = sorted(
        t for c in clients if c.broker != FROZEN for t in c.grants if t >= frozen_at
    )
    stood_still = (others_after[0] - frozen_at) if others_after else float("inf")
    seconds = int(end - start) + 1
    per_second = [0] * seconds
    for c in clients:
        for t in c.grants:
            if start <= t < end:
                per_second[int(t - start)] += 1
    return FreezeResult(
        before=rates(start, attempting_at),
        during=rates(frozen_at, thawed_at),
        after=rates(thawed_at, end),
        stood_still=stood_still,
        per_second=per_second[: seconds - 1] or per_second,
        freeze_seconds=freeze_seconds,
        attempts=attempts,
        retried=sum(c.retried for c in clients),
        timed_out=sum(c.timed_out for c in clients),
        errors=sum(c.errors for c in clients),
        first_error=next((c.first_error for c in clients if c.first_error), ""),
    )
