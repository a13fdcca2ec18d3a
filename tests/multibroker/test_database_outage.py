"""A broker that loses its database answers UNAVAILABLE, says so in its
health, and recovers by itself with nothing lost (semantics 1 and 7).

How the database is made unreachable: broker A reaches PostgreSQL through a
TCP proxy run by the test on 127.0.0.1 (`tcp_proxy.TcpProxy`); cutting it
breaks every open connection of A (pooled ones, the NOTIFY listener's) and
refuses new ones, while PostgreSQL and broker B, connected directly, go on.
Restoring it listens again on the same port. (Terminating A's backends with
pg_terminate_backend would only break the open connections: A would simply
reconnect, so it could not hold an outage open.)

To make sure that every database worker thread of A, and so every pooled
connection, serves a call, the test holds the brokers' advisory write lock
from its own session while 2 x DATABASE_WORKERS renewals pile up behind it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from urllib.parse import parse_qs, urlparse

import grpc

from broker.api.server import DATABASE_WORKERS
from broker.api.waits import SAFETY_POLL_SECONDS
from broker.models.database import WRITE_LOCK_KEY, schema_channel, schema_lock_key
from broker.models.notify import CHANNEL
from broker.v1 import (
    inventory_service_pb2,
    lease_pb2,
    lease_service_pb2,
)
from tests.integration.helpers import (
    acquire,
    acquire_request,
    calculator,
    create_resource,
    get_lease,
    requirement,
    wait_until,
)
from tests.integration.test_ownership_under_concurrency import event_violations
from tests.multibroker.fleet import NOT_SERVING, SERVING, Broker, recorded_events, wait_health
from tests.multibroker.tcp_proxy import TcpProxy

CALL_TIMEOUT = 8.0
HEALTH_TIMEOUT = 5.0
# Concurrent calls: more than the broker's database worker threads.
BURST = 40


def outcome(call, request, timeout: float = CALL_TIMEOUT) -> tuple[grpc.StatusCode, float, str]:
    """The status code of a call, how long it took, and its details."""
    start = time.monotonic()
    try:
        call(request, timeout=timeout)
        code, text = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, text = error.code(), error.details()
    return code, time.monotonic() - start, text


def burst(broker: Broker, lease_id: str) -> list[tuple[grpc.StatusCode, float, str]]:
    """BURST concurrent GetLease calls."""
    request = lease_service_pb2.GetLeaseRequest(lease_id=lease_id)
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(lambda _: outcome(broker.leases.GetLease, request), range(BURST)))


@contextlib.contextmanager
def write_lock_held(admin, url: str):
    """Holds the advisory write lock of the brokers on `url`'s schema from the
    test's own session."""
    key = (WRITE_LOCK_KEY, schema_lock_key(schema_of(url)))
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
        try:
            yield
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def lock_waiters(admin, proxy: TcpProxy) -> int:
    """How many of the proxied broker's connections wait for a lock."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE client_port = ANY(%s) AND wait_event_type = 'Lock'",
            (list(proxy.upstream_ports()),),
        )
        return cursor.fetchone()[0]


def on_every_worker(broker: Broker, held, admin, proxy: TcpProxy, url: str) -> list:
    """Renews `held` 2 x DATABASE_WORKERS times at once, with the write lock
    held by the test until every database worker thread of the broker is
    inside a call (waiting for the lock), so that each worker, and its
    connection, serves at least one: returns the calls' outcomes."""
    request = lease_service_pb2.RenewLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret)
    calls = 2 * DATABASE_WORKERS
    with concurrent.futures.ThreadPoolExecutor(calls) as pool:
        with write_lock_held(admin, url):
            futures = [
                pool.submit(outcome, broker.leases.RenewLease, request) for _ in range(calls)
            ]
            wait_until(
                lambda: lock_waiters(admin, proxy) >= DATABASE_WORKERS,
                5.0,
                "every database worker to wait for the write lock",
            )
        return [future.result() for future in futures]


def failed(outcomes: list) -> list:
    return [(code, text) for code, _, text in outcomes if code != grpc.StatusCode.OK]


def every_rpc(broker: Broker, held: lease_service_pb2.AcquireLeaseResponse) -> dict:
    """One call of each kind, reads and writes, named."""
    lease_id, secret = held.lease.lease_id, held.secret
    waiting = acquire_request(requirement("Calculator", name="calc-1"), holder="waiter")
    waiting.max_wait.FromSeconds(2)
    return {
        "GetLease": (broker.leases.GetLease, lease_service_pb2.GetLeaseRequest(lease_id=lease_id)),
        "RenewLease": (
            broker.leases.RenewLease,
            lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret),
        ),
        "ReleaseLease": (
            broker.leases.ReleaseLease,
            lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret),
        ),
        "AcquireLease": (
            broker.leases.AcquireLease,
            acquire_request(requirement("Calculator", name="calc-2"), holder="newcomer"),
        ),
        "AcquireLease(max_wait)": (broker.leases.AcquireLease, waiting),
        "ListLeases": (broker.leases.ListLeases, lease_service_pb2.ListLeasesRequest()),
        "ListWaiters": (broker.leases.ListWaiters, lease_service_pb2.ListWaitersRequest()),
        "GetResource": (
            broker.inventory.GetResource,
            inventory_service_pb2.GetResourceRequest(name="calc-1"),
        ),
        "ListResources": (
            broker.inventory.ListResources,
            inventory_service_pb2.ListResourcesRequest(),
        ),
        "CreateResource": (
            broker.inventory.CreateResource,
            inventory_service_pb2.CreateResourceRequest(resource=calculator("calc-9")),
        ),
    }


def schema_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["schema"][0]


def listening_through(admin, proxy: TcpProxy, url: str) -> bool:
    """Whether a connection through the proxy is LISTENing for the grants of
    the schema of `url`."""
    ports = proxy.upstream_ports()
    if not ports:
        return False
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) AND query = %s",
            (list(ports), f"LISTEN {schema_channel(CHANNEL, schema_of(url))}"),
        )
        return cursor.fetchone()[0] > 0


def test_a_broker_cut_off_from_its_database_answers_unavailable_and_recovers(
    make_fleet, proxy, postgres_url, postgres_admin
):
    fleet = make_fleet(leases={"expiry_interval": 0.2})
    direct = fleet.start()  # broker B, straight to PostgreSQL (lays out the schema)
    cut_off = fleet.start(proxy.url_for(postgres_url))  # broker A, through the proxy
    for n in (1, 2):
        create_resource(cut_off.inventory, calculator(f"calc-{n}", f"10.0.0.{n}"))
    held = acquire(cut_off.leases, requirement("Calculator", name="calc-1"), ttl=60.0)
    lease_id, secret = held.lease.lease_id, held.secret
    token = held.lease.grants[0].fencing_token
    # Every database worker of A opens its connection before the outage.
    assert failed(on_every_worker(cut_off, held, postgres_admin, proxy, postgres_url)) == []
    wait_until(
        lambda: listening_through(postgres_admin, proxy, postgres_url), 5.0, "A's grant listener"
    )

    proxy.cut()

    # Every call fails at once with UNAVAILABLE: never INTERNAL, never a hang.
    failures = []
    for attempt in range(2):  # broken pooled connections first, then refused new ones
        for name, (call, request) in every_rpc(cut_off, held).items():
            code, took, text = outcome(call, request)
            if code != grpc.StatusCode.UNAVAILABLE or took >= CALL_TIMEOUT - 1:
                failures.append(f"{name} (attempt {attempt}): {code} after {took:.2f} s: {text}")
    failures += [
        f"GetLease (burst): {code} after {took:.2f} s: {text}"
        for code, took, text in burst(cut_off, lease_id)
        if code != grpc.StatusCode.UNAVAILABLE or took >= CALL_TIMEOUT - 1
    ]
    assert failures == []
    assert wait_health(cut_off, NOT_SERVING, HEALTH_TIMEOUT) < HEALTH_TIMEOUT

    # The other broker goes on, and the held lease stays held: nobody else gets it.
    assert direct.health_status() == SERVING
    assert get_lease(direct.leases, lease_id).state == lease_pb2.LEASE_STATE_ACTIVE
    code, _, _ = outcome(
        direct.leases.AcquireLease, acquire_request(requirement("Calculator", name="calc-1"))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    proxy.restore()

    assert wait_health(cut_off, SERVING, 2 * HEALTH_TIMEOUT) < 2 * HEALTH_TIMEOUT
    # Serving again means serving: every call succeeds, on every worker.
    assert failed(on_every_worker(cut_off, held, postgres_admin, proxy, postgres_url)) == []
    # Nothing lost: the lease held before the outage is still active, with
    # its grant, and renewable with its secret.
    lease = get_lease(cut_off.leases, lease_id)
    assert lease.state == lease_pb2.LEASE_STATE_ACTIVE
    assert [(g.resource.name, g.fencing_token) for g in lease.grants] == [("calc-1", token)]
    renewed = cut_off.leases.RenewLease(
        lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret), timeout=CALL_TIMEOUT
    ).lease
    assert renewed.expire_time.ToSeconds() >= lease.expire_time.ToSeconds()
    newcomer = acquire(cut_off.leases, requirement("Calculator", name="calc-2"))
    cut_off.leases.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(
            lease_id=newcomer.lease.lease_id, secret=newcomer.secret
        ),
        timeout=CALL_TIMEOUT,
    )

    # A's grant listener is back: a release on B wakes a waiter on A at once.
    wait_until(
        lambda: listening_through(postgres_admin, proxy, postgres_url),
        5.0,
        "A's listener to return",
    )
    moved = acquire(direct.leases, requirement("Calculator", name="calc-2"), holder="mover")
    waiting = acquire_request(requirement("Calculator", name="calc-2"), holder="waiter")
    # Shorter than the safety poll: only the NOTIFY can answer it.
    waiting.max_wait.FromSeconds(10)
    assert SAFETY_POLL_SECONDS > 10
    answer: dict = {}

    def wait_on_a() -> None:
        answer["response"] = cut_off.leases.AcquireLease(waiting, timeout=CALL_TIMEOUT + 5)
        answer["at"] = time.monotonic()

    waiter = threading.Thread(target=wait_on_a, daemon=True)
    waiter.start()
    wait_until(
        lambda: (
            direct.leases.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=5).waiters
        ),
        5.0,
        "the waiter on A to queue",
    )
    released_at = time.monotonic()
    direct.leases.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(lease_id=moved.lease.lease_id, secret=moved.secret),
        timeout=CALL_TIMEOUT,
    )
    waiter.join(CALL_TIMEOUT + 6)
    assert "response" in answer, "the waiter on A was never answered"
    assert answer["at"] - released_at < 0.5

    # Nothing granted twice, nothing left over: release everything, read the events.
    for response in (held, answer["response"]):
        direct.leases.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=response.lease.lease_id, secret=response.secret
            ),
            timeout=CALL_TIMEOUT,
        )
    events = recorded_events(postgres_admin, postgres_url)
    assert event_violations(events) == []
    grants = [(e.lease_id, e.resource) for e in events if e.type == "lease_granted"]
    assert len(grants) == len(set(grants)) == 4  # held, newcomer, mover, waiter
    assert "calc-9" not in {e.resource for e in events}  # created during the outage: not


def test_after_a_quiet_outage_every_call_succeeds_once_serving_again(
    make_fleet, proxy, postgres_url, postgres_admin
):
    """An outage during which nobody calls the broker (only its sweep notices
    it): once health says SERVING again, calls succeed, on every database
    worker, none of them tripping over a connection broken in the outage."""
    fleet = make_fleet()
    fleet.start()  # lays out the schema
    broker = fleet.start(proxy.url_for(postgres_url))
    create_resource(broker.inventory, calculator("calc-1"))
    held = acquire(broker.leases, requirement("Calculator", name="calc-1"), ttl=60.0)
    assert failed(on_every_worker(broker, held, postgres_admin, proxy, postgres_url)) == []

    proxy.cut()
    wait_health(broker, NOT_SERVING, HEALTH_TIMEOUT)
    proxy.restore()
    wait_health(broker, SERVING, 2 * HEALTH_TIMEOUT)

    failures = failed(on_every_worker(broker, held, postgres_admin, proxy, postgres_url))
    assert failures == [], (
        f"{len(failures)} of {2 * DATABASE_WORKERS} calls failed after recovery: {failures[0]}"
    )
    lease = get_lease(broker.leases, held.lease.lease_id)
    assert lease.state == lease_pb2.LEASE_STATE_ACTIVE
