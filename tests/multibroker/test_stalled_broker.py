"""No broker holds the fleet hostage (semantics 10): a broker that freezes,
or whose link to PostgreSQL stalls or breaks, while it holds its locks,
loses its transaction within the stall bound, and the other broker goes on
granting; health tells each broker's own access to the database, and waiting
for the lock is no part of it. Afterwards both serve, and no resource was
ever held twice.

How the stalled broker is made to hold its locks: broker A grants a lease,
the test locks that lease's row from its own session and asks A to release
it. A's transaction takes its advisory locks, then waits for the row. The
test then freezes A (SIGSTOP) or stalls its link (A reaches PostgreSQL
through `tcp_proxy.TcpProxy`) and lets the row go: A's statement completes
on the server, whose session is then idle in a transaction holding the
locks, with nobody to finish it. Broker B meanwhile grants in a loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import grpc
import psycopg2
import pytest

from broker.v1 import lease_service_pb2
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire_request,
    calculator,
    create_resource,
    requirement,
    wait_until,
)
from tests.integration.test_ownership_under_concurrency import (
    event_violations,
    ownership_violations,
)
from tests.multibroker.fleet import (
    NOT_SERVING,
    SERVING,
    Broker,
    Fleet,
    GrantLoop,
    HealthWatch,
    recorded_events,
    schema_of,
    wait_health,
)
from tests.multibroker.test_database_outage import write_lock_held

# database.stall_timeout of the fleets here, in seconds: the server ends A's
# idle transaction after half of it, and A's health probe gives up after
# half of it too.
STALL = 3.0
# Slack for a loaded machine on top of the bound, in seconds.
SLACK = 4.0
NAMES = ["calc-1", "calc-2", "calc-3"]
HELD = "calc-held"
# Grants both brokers make on the same resources afterwards.
AFTERWARDS = 20


def backend_blocked_by(admin, pid: int) -> int | None:
    """The session (pid) waiting for a lock that session `pid` holds."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
        )
        row = cursor.fetchone()
        return row[0] if row else None


def holds_advisory_lock(admin, pid: int) -> bool:
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND granted",
            (pid,),
        )
        return cursor.fetchone()[0] > 0


def backend_alive(admin, pid: int) -> bool:
    with admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cursor.fetchone()[0] > 0


@contextlib.contextmanager
def row_locked(postgres_url: str, lease_id: str) -> Iterator[int]:
    """Locks the row of lease `lease_id` from a session of the test's own
    (whose pid it yields) until the block ends."""
    connection = psycopg2.connect(urlparse(postgres_url)._replace(query="").geturl())
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
            cursor.execute(
                f'SELECT 1 FROM "{schema_of(postgres_url)}"."lease" WHERE "id" = %s FOR UPDATE',
                (lease_id,),
            )
            yield pid
        connection.rollback()
    finally:
        connection.close()


class Call(threading.Thread):
    """One blocking call on a thread; `code` is its outcome once joined."""

    def __init__(self, method, request, timeout: float):
        super().__init__(daemon=True)
        self.method, self.request, self.timeout = method, request, timeout
        self.code: grpc.StatusCode | None = None

    def run(self) -> None:
        try:
            self.method(self.request, timeout=self.timeout)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code = error.code()


def stalled_holding_the_write_lock(admin, postgres_url: str, stalled: Broker, fault) -> tuple:
    """Makes `stalled` hold its locks in a transaction (a release of a lease
    on `HELD`), applies `fault` (which freezes it or stalls its link) and
    lets the row go: returns the call left hanging and the pid of the
    session that holds the locks."""
    granted = stalled.leases.AcquireLease(
        acquire_request(requirement("Calculator", name=HELD), holder="stalled"),
        timeout=RPC_TIMEOUT,
    )
    request = lease_service_pb2.ReleaseLeaseRequest(
        lease_id=granted.lease.lease_id, secret=granted.secret
    )
    call = Call(stalled.leases.ReleaseLease, request, timeout=60.0)
    with row_locked(postgres_url, granted.lease.lease_id) as locker:
        call.start()
        pid = wait_until(
            lambda: backend_blocked_by(admin, locker), 5.0, "A's release to wait for the row"
        )
        assert holds_advisory_lock(admin, pid), "A's transaction does not hold its locks"
        fault()
    return call, pid


def grants_made(healthy: GrantLoop, moment: float) -> int:
    assert healthy.errors == [], healthy.errors
    return healthy.granted_since(moment)


def start_pair(fleet: Fleet, stalled_url: str | None = None) -> tuple[Broker, Broker]:
    """Broker B (lays out the schema) and broker A, with the resources."""
    healthy = fleet.start()
    stalled = fleet.start(stalled_url)
    for n, name in enumerate([*NAMES, HELD], start=1):
        create_resource(healthy.inventory, calculator(name, f"10.0.0.{n}"))
    return stalled, healthy


def check_history(admin, postgres_url: str, loops: list[GrantLoop]) -> None:
    """With the loops of both brokers granting the same resources for a
    while, no hold overlapped another, fencing tokens grew, and the
    brokers' own events agree."""
    marks = [len(loop.grants) for loop in loops]
    wait_until(
        lambda: all(
            len(loop.grants) - mark >= AFTERWARDS for loop, mark in zip(loops, marks, strict=True)
        ),
        30.0,
        f"{AFTERWARDS} more grants on each broker",
    )
    for loop in loops:
        loop.stop()
    assert [loop.errors for loop in loops] == [[] for _ in loops]
    assert ownership_violations([hold for loop in loops for hold in loop.holds]) == []
    assert event_violations(recorded_events(admin, postgres_url)) == []


def test_a_frozen_broker_stops_the_others_for_at_most_the_stall_bound(
    make_fleet, postgres_admin, postgres_url
):
    fleet = make_fleet(stall_timeout=STALL)
    frozen, healthy = start_pair(fleet)
    loop = GrantLoop(healthy, NAMES, "healthy").start()
    wait_until(lambda: len(loop.grants) >= 5, 10.0, "the healthy broker to grant")

    with HealthWatch(healthy) as health:
        call, pid = stalled_holding_the_write_lock(
            postgres_admin, postgres_url, frozen, lambda: fleet.freeze(frozen)
        )
        frozen_at = time.monotonic()
        # The server ends the frozen broker's idle transaction, and with it
        # its hold of the write lock ...
        wait_until(
            lambda: not backend_alive(postgres_admin, pid),
            STALL + SLACK,
            "the frozen broker's transaction to be ended",
        )
        # ... and the healthy broker grants while the other is still frozen,
        # also once the whole bound has passed.
        grants = wait_until(
            lambda: grants_made(loop, frozen_at + STALL), STALL + SLACK, "grants past the bound"
        )
        assert grants > 0
        assert frozen.process.process.poll() is None  # still there, still frozen
    assert health.statuses and health.not_serving() == []

    fleet.thaw(frozen)
    call.join(30.0)
    # Its transaction was lost: the call fails and changes nothing.
    assert call.code == grpc.StatusCode.UNAVAILABLE
    assert wait_health(frozen, SERVING, 10.0) < 10.0
    assert healthy.health_status() == SERVING
    frozen.leases.ReleaseLease(call.request, timeout=RPC_TIMEOUT)  # repeated, now it succeeds
    thawed = GrantLoop(frozen, NAMES, "thawed").start()
    check_history(postgres_admin, postgres_url, [loop, thawed])


@pytest.mark.parametrize("mode", ["blackhole", "cut"])
def test_a_broker_whose_database_link_fails_does_not_stop_the_other(
    make_fleet, postgres_admin, postgres_url, proxy, mode
):
    """`blackhole`: the link carries nothing, connections stay open (a
    stalled network). `cut`: connections break, new ones are refused."""
    fleet = make_fleet(stall_timeout=STALL)
    cut_off, healthy = start_pair(fleet, proxy.url_for(postgres_url))
    loop = GrantLoop(healthy, NAMES, "healthy").start()
    wait_until(lambda: len(loop.grants) >= 5, 10.0, "the healthy broker to grant")

    with HealthWatch(healthy) as health:
        call, pid = stalled_holding_the_write_lock(
            postgres_admin, postgres_url, cut_off, getattr(proxy, mode)
        )
        failed_at = time.monotonic()
        wait_until(
            lambda: not backend_alive(postgres_admin, pid),
            STALL + SLACK,
            "the cut-off broker's transaction to be ended",
        )
        grants = wait_until(
            lambda: grants_made(loop, failed_at + STALL), STALL + SLACK, "grants past the bound"
        )
        assert grants > 0
        # The cut-off broker knows it: its own probe of the database fails.
        assert wait_health(cut_off, NOT_SERVING, STALL + SLACK) < STALL + SLACK
    assert health.statuses and health.not_serving() == []

    proxy.restore()
    call.join(30.0)
    assert call.code == grpc.StatusCode.UNAVAILABLE
    assert wait_health(cut_off, SERVING, 10.0) < 10.0
    assert healthy.health_status() == SERVING
    cut_off.leases.ReleaseLease(call.request, timeout=RPC_TIMEOUT)  # repeated, now it succeeds
    restored = GrantLoop(cut_off, NAMES, "restored").start()
    check_history(postgres_admin, postgres_url, [loop, restored])


def test_waiting_for_the_write_lock_leaves_a_broker_serving(
    make_fleet, postgres_admin, postgres_url
):
    """A broker whose sweeps time out waiting for the write lock (another
    session holds it for longer than the lock timeout) still has its own
    access to the database: it stays SERVING."""
    fleet = make_fleet(leases={"expiry_interval": 0.2}, stall_timeout=STALL)
    broker = fleet.start()
    with HealthWatch(broker) as health, write_lock_held(postgres_admin, postgres_url):
        wait_until(
            lambda: broker.process.stderr.count("lease expiry sweep failed") >= 3,
            4 * STALL + SLACK,
            "three sweeps to time out waiting for the write lock",
        )
    assert "lock timeout" in broker.process.stderr
    assert health.statuses and health.not_serving() == []
    assert broker.health_status() == SERVING
