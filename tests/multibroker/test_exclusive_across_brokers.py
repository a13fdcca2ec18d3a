"""Exclusive ownership across brokers that die (semantics 1, 6 and 7).

Three `broker serve` processes share one PostgreSQL schema. Client threads,
each using whichever live broker it picks for each call, loop over a few
contended calculators: acquire (try-mode, or waiting with `max_wait`),
renew, read back from another broker, release. Meanwhile one broker after
another is SIGKILLed and started again on the same schema (on a new port);
a client whose call fails UNAVAILABLE repeats it on another live broker
(an acquire with the same `request_id`, so a retry never makes a second
grant). Three more calculators are held through the whole run, and after
each restart read from every broker and renewed.

Afterwards the history checkers of the single-broker test judge the
clients' holding intervals and the broker's event table; every lease is
accounted for; and every call was answered within its deadline.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
import uuid

import grpc

from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc
from tests.integration.helpers import (
    acquire,
    acquire_request,
    calculator,
    constraint,
    create_resource,
    get_lease,
    precondition,
    requirement,
    wait_until,
)
from tests.integration.test_ownership_under_concurrency import (
    Hold,
    event_violations,
    ownership_violations,
)
from tests.multibroker.fleet import Broker, Fleet, recorded_events

BROKERS = 3
CLIENTS = 9
CYCLES = 50
KILLS = 4  # each broker at least once, each time while the clients run
CONTENDED = 3
KEPT = 3
MAX_WAITS = (0.3, 1.0, 2.0)
CALL_TIMEOUT = 5.0  # per call; a waiting acquire gets its max_wait more
FAILOVER_TIMEOUT = 20.0  # one step may retry on other brokers this long
RUN_DEADLINE = 30.0
KEPT_TTL = 60.0
SEED = 20260401

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclasses.dataclass(frozen=True)
class Call:
    """One RPC as a client saw it."""

    client: int
    method: str
    address: str
    timeout: float
    elapsed: float
    code: grpc.StatusCode
    details: str


class Registry:
    """The addresses of the live brokers. A broker leaves it before it is
    killed and joins once it serves, so clients only ever choose a live
    broker; an UNAVAILABLE can only come from a call already on its way to
    a broker that was then killed."""

    def __init__(self, addresses: list[str]):
        self._lock = threading.Lock()
        self._live = list(addresses)
        self.killed: set[str] = set()

    def live(self) -> list[str]:
        with self._lock:
            return list(self._live)

    def remove(self, address: str) -> None:
        with self._lock:
            self._live.remove(address)
            self.killed.add(address)

    def add(self, address: str) -> None:
        with self._lock:
            self._live.append(address)


@dataclasses.dataclass
class History:
    """What the clients saw; lists are appended to from their threads."""

    holds: list[Hold] = dataclasses.field(default_factory=list)
    calls: list[Call] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    outcomes: list[str] = dataclasses.field(default_factory=list)
    cycles_done: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def cycle_done(self) -> None:
        with self.lock:
            self.cycles_done += 1


CONTENDED_IPS = [f"10.0.0.{n}" for n in range(1, CONTENDED + 1)]


def contended_request(rng: random.Random, client: int) -> lease_service_pb2.AcquireLeaseRequest:
    """One named contended calculator, or any two of them."""
    if rng.random() < 0.5:
        wanted = requirement("Calculator", name=f"calc-{rng.randint(1, CONTENDED)}")
    else:
        wanted = lease_pb2.Requirement(
            kind="Calculator", count=2, constraints=[constraint("ip_address", *CONTENDED_IPS)]
        )
    request = acquire_request(wanted, ttl=30.0, holder=f"client-{client}")
    request.request_id = str(uuid.uuid4())
    return request


class Client:
    """One client thread: its channels to the brokers and its loop."""

    def __init__(self, number: int, registry: Registry, history: History, deadline: float):
        self.number = number
        self.registry = registry
        self.history = history
        self.deadline = deadline
        self.rng = random.Random(SEED + number)
        self.stubs: dict[str, lease_service_pb2_grpc.LeaseServiceStub] = {}
        self.channels: list[grpc.Channel] = []

    def stub(self, address: str) -> lease_service_pb2_grpc.LeaseServiceStub:
        if address not in self.stubs:
            channel = grpc.insecure_channel(address)
            self.channels.append(channel)
            self.stubs[address] = lease_service_pb2_grpc.LeaseServiceStub(channel)
        return self.stubs[address]

    def call(self, method: str, request, timeout: float = CALL_TIMEOUT, avoid: str = ""):
        """Calls a random live broker (another than `avoid` if possible);
        on UNAVAILABLE repeats the call on another live broker. Returns
        (response or RpcError, address answered, whether it was repeated)."""
        give_up = time.monotonic() + FAILOVER_TIMEOUT
        failed = avoid
        repeated = False
        while True:
            live = self.registry.live()
            choices = [a for a in live if a != failed] or live
            address = self.rng.choice(choices)
            start = time.monotonic()
            try:
                result = getattr(self.stub(address), method)(request, timeout=timeout)
                code, text = OK, ""
            except grpc.RpcError as error:
                result, code, text = error, error.code(), error.details() or ""
            self.history.calls.append(
                Call(self.number, method, address, timeout, time.monotonic() - start, code, text)
            )
            if code != UNAVAILABLE or time.monotonic() > give_up:
                return result, address, repeated
            failed, repeated = address, True

    def run(self) -> None:
        try:
            for cycle in range(CYCLES):
                if time.monotonic() > self.deadline:
                    self.problem(f"ran out of time in cycle {cycle}")
                    return
                if not self.cycle(cycle):
                    return
                self.history.cycle_done()
        except Exception as error:  # a bug in the test, or in the broker
            self.problem(f"crashed: {error!r}")
        finally:
            for channel in self.channels:
                channel.close()

    def problem(self, text: str) -> None:
        self.history.problems.append(f"client {self.number}: {text}")

    def cycle(self, cycle: int) -> bool:
        """One acquire; if granted, renew, read back, release. False stops
        the client (its problem recorded)."""
        request = contended_request(self.rng, self.number)
        wait = self.rng.choice((0.0, *MAX_WAITS))
        if wait:
            request.max_wait.FromNanoseconds(int(wait * 1e9))
        started = time.monotonic()
        result, _, _ = self.call("AcquireLease", request, timeout=CALL_TIMEOUT + wait)
        took = time.monotonic() - started
        if isinstance(result, grpc.RpcError):
            code = result.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not wait:
                self.history.outcomes.append("busy")
                return True
            if (
                code == grpc.StatusCode.DEADLINE_EXCEEDED
                and wait
                and wait - 0.05 <= took < CALL_TIMEOUT + wait - 1.0
            ):
                self.history.outcomes.append("wait ended")  # answered by the broker
                return True
            self.problem(
                f"cycle {cycle}: acquire (max_wait {wait}) after {took:.2f} s: "
                f"{code} {result.details()}"
            )
            return False
        self.history.outcomes.append("waited and granted" if took > 0.05 and wait else "granted")
        start = time.monotonic()
        lease_id, secret = result.lease.lease_id, result.secret
        tokens = {g.resource.name: g.fencing_token for g in result.lease.grants}
        end = self.use(cycle, lease_id, secret, tokens)
        self.history.holds.append(Hold(lease_id, tokens, start, end))
        return end is not None

    def use(self, cycle: int, lease_id: str, secret: str, tokens: dict) -> float | None:
        """Renews the lease, reads it back from another broker, releases it;
        returns when the release was first sent, None if it failed."""
        for _ in range(self.rng.randint(1, 2)):
            renewed, address, _ = self.call(
                "RenewLease", lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret)
            )
            if isinstance(renewed, grpc.RpcError):
                self.problem(f"cycle {cycle}: renew: {renewed.code()} {renewed.details()}")
                return None
            read, _, _ = self.call(
                "GetLease", lease_service_pb2.GetLeaseRequest(lease_id=lease_id), avoid=address
            )
            if isinstance(read, grpc.RpcError):
                self.problem(f"cycle {cycle}: read back: {read.code()} {read.details()}")
                return None
            seen = {g.resource.name: g.fencing_token for g in read.lease.grants}
            if read.lease.state != lease_pb2.LEASE_STATE_ACTIVE or seen != tokens:
                self.problem(f"cycle {cycle}: lease {lease_id} held but reads {read.lease}")
                return None
        end = time.monotonic()
        released, _, repeated = self.call(
            "ReleaseLease", lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret)
        )
        # A release repeated after its broker died may have been done already.
        if isinstance(released, grpc.RpcError) and not (
            repeated
            and released.code() == grpc.StatusCode.FAILED_PRECONDITION
            and precondition(released).type == "LEASE_RELEASED"
        ):
            self.problem(f"cycle {cycle}: release: {released.code()} {released.details()}")
            return None
        return end


@dataclasses.dataclass
class Kept:
    """A lease held by the test itself through every kill."""

    response: lease_service_pb2.AcquireLeaseResponse
    start: float

    @property
    def lease_id(self) -> str:
        return self.response.lease.lease_id

    @property
    def tokens(self) -> dict[str, int]:
        return {g.resource.name: g.fencing_token for g in self.response.lease.grants}


def check_kept(kept: list[Kept], brokers: list[Broker], renew_on: Broker) -> None:
    """Every kept lease reads ACTIVE, with its grants, from every broker, and
    renews with its secret."""
    for lease in kept:
        for broker in brokers:
            read = get_lease(broker.leases, lease.lease_id)
            assert read.state == lease_pb2.LEASE_STATE_ACTIVE, (broker.address, read)
            assert {g.resource.name: g.fencing_token for g in read.grants} == lease.tokens
        renew_on.leases.RenewLease(
            lease_service_pb2.RenewLeaseRequest(
                lease_id=lease.lease_id, secret=lease.response.secret
            ),
            timeout=CALL_TIMEOUT,
        )


def kill_and_restart(fleet: Fleet, brokers: list[Broker], index: int, registry: Registry):
    victim = brokers[index]
    registry.remove(victim.address)
    fleet.kill(victim)
    brokers[index] = fleet.start()
    assert brokers[index].address != victim.address
    registry.add(brokers[index].address)


def test_no_resource_is_held_twice_while_brokers_die(fleet, postgres_admin, postgres_url):
    brokers = fleet.start_many(BROKERS)
    for n in range(1, CONTENDED + 1):
        create_resource(brokers[n % BROKERS].inventory, calculator(f"calc-{n}", f"10.0.0.{n}"))
    for n in range(1, KEPT + 1):
        create_resource(brokers[n % BROKERS].inventory, calculator(f"kept-{n}", f"10.0.1.{n}"))
    kept = []
    for n in range(1, KEPT + 1):
        response = acquire(
            brokers[n % BROKERS].leases,
            requirement("Calculator", name=f"kept-{n}"),
            ttl=KEPT_TTL,
            holder="keeper",
        )
        kept.append(Kept(response, time.monotonic()))

    registry = Registry([b.address for b in brokers])
    history = History()
    deadline = time.monotonic() + RUN_DEADLINE
    clients = [
        threading.Thread(
            target=Client(n, registry, history, deadline).run, name=f"client-{n}", daemon=True
        )
        for n in range(CLIENTS)
    ]
    started = time.monotonic()
    for client in clients:
        client.start()
    total = CLIENTS * CYCLES
    killed_at = []
    try:
        for kill in range(KILLS):
            wait_until(
                lambda kill=kill: (
                    history.cycles_done >= total * (kill + 1) / (KILLS + 2) or history.problems
                ),
                RUN_DEADLINE,
                f"the clients' progress before kill {kill + 1}",
            )
            assert history.problems == [], fleet.logs()
            killed_at.append(history.cycles_done)
            kill_and_restart(fleet, brokers, kill % BROKERS, registry)
            check_kept(kept, brokers, renew_on=brokers[kill % BROKERS])
    finally:
        for client in clients:
            client.join(max(0.0, deadline - time.monotonic()) + CALL_TIMEOUT + max(MAX_WAITS))
    run_time = time.monotonic() - started

    assert not any(client.is_alive() for client in clients), "a client is stuck"
    assert history.problems == [], "\n".join(history.problems) + "\n" + fleet.logs()
    assert history.cycles_done == total
    assert all(done < total for done in killed_at), f"kills after the run: {killed_at}"

    # No lost live lease: the kept ones still read ACTIVE everywhere, then go.
    check_kept(kept, brokers, renew_on=brokers[0])
    holds = list(history.holds)
    for n, lease in enumerate(kept):
        end = time.monotonic()
        brokers[n % BROKERS].leases.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=lease.lease_id, secret=lease.response.secret
            ),
            timeout=CALL_TIMEOUT,
        )
        holds.append(Hold(lease.lease_id, lease.tokens, lease.start, end))

    # Every call was answered within its deadline; UNAVAILABLE only from a
    # broker that was killed; nothing else went wrong on the wire.
    calls = list(history.calls)
    hung = [c for c in calls if c.elapsed >= c.timeout - 0.5]
    assert hung == [], hung[:5]
    unavailable = [c for c in calls if c.code == UNAVAILABLE]
    assert [c for c in unavailable if c.address not in registry.killed] == [], unavailable[:5]
    assert unavailable, "no call was cut by a kill: the failover was never exercised"

    # The checkers: client-side intervals, then the broker's own history.
    assert ownership_violations(holds) == []
    events = recorded_events(postgres_admin, postgres_url)
    assert event_violations(events) == []
    broker_grants = sorted(
        (e.lease_id, e.resource, e.fencing_token) for e in events if e.type == "lease_granted"
    )
    client_grants = sorted(
        (hold.lease_id, name, token) for hold in holds for name, token in hold.tokens.items()
    )
    assert broker_grants == client_grants, "a grant that no client received, or the reverse"

    # Nobody is left waiting or holding.
    def settled():
        leases = brokers[0].leases
        return not (
            leases.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=5).waiters
            or leases.ListLeases(
                lease_service_pb2.ListLeasesRequest(state=lease_pb2.LEASE_STATE_ACTIVE), timeout=5
            ).leases
        )

    wait_until(settled, 5.0, "the queue and the leases to be empty")

    # The run really contended: try-mode refusals, waits granted, waits ended.
    outcomes = {o: sum(1 for _ in g) for o, g in itertools.groupby(sorted(history.outcomes))}
    assert outcomes.get("busy", 0) > 0 and outcomes.get("waited and granted", 0) > 0, outcomes
    print(
        f"\n{len(holds)} holds, outcomes {outcomes}, {len(calls)} calls, "
        f"{len(unavailable)} UNAVAILABLE ({sorted(c.method for c in unavailable)}), "
        f"kills at cycles {killed_at} of {total}, "
        f"run {run_time:.1f} s"
    )
