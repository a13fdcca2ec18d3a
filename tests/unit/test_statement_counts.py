"""What each RPC's domain call sends to the database, counted statement by
statement (round trips included: BEGIN and COMMIT count), on both backends.

The counts are pinned: a change that adds a statement to the hot path fails
here and must say why in the pinned number. The queue's cost is pinned the
same way: with requests waiting for other resources, a release or an acquire
costs exactly what it costs with nobody waiting, and an acquire among many
resources what it costs among a few."""

from __future__ import annotations

import pytest

from broker.domain.leasing import Leases
from broker.domain.sessions import Sessions
from broker.domain.values import AcquireRequest, Granted, Waiting
from tests.statement_counter import Counted, counting
from tests.unit.builders import calc, need

# Statements per domain call, by backend (on PostgreSQL: round trips). There
# the locks of the kinds touched take one statement, which carries the
# transaction's BEGIN; writes whose results nobody reads (a new lease and its
# grants, a lease ended or renewed, a session kept alive) travel with the
# next statement; and the event lock, the events and their NOTIFY are one
# round trip. A release first reads its lease's grants to know which kinds
# it locks.
PINNED = {
    "sqlite": {
        "acquire": 8,
        "release": 6,
        "renew": 5,
        "keep_alive": 5,
        "wait_status": 4,
    },
    "postgresql": {
        "acquire": 6,
        "release": 6,
        "renew": 4,
        "keep_alive": 4,
        "wait_status": 4,
    },
}


@pytest.fixture
def backend(database_url) -> str:
    return database_url.split(":", 1)[0]


def acquire(leases: Leases, name: str, *, holder: str = "alice", **kwargs) -> Granted | Waiting:
    return leases.acquire(AcquireRequest((need("Calculator", name=name),), holder=holder, **kwargs))


def held(leases: Leases, name: str, **kwargs) -> Granted:
    granted = acquire(leases, name, **kwargs)
    assert isinstance(granted, Granted), granted
    return granted


def cycle(database, leases: Leases, name: str) -> tuple[Counted, Counted]:
    """The statements of acquiring `name` (free) and of releasing it."""
    with counting(database) as acquired:
        granted = held(leases, name)
    with counting(database) as released:
        leases.release(granted.lease.lease_id, granted.secret)
    return acquired, released


def test_each_call_sends_its_pinned_number_of_statements(
    database, inventory, leases, clock, backend
):
    for name in ("warm", "probe"):
        inventory.create(calc(name))
    cycle(database, leases, "warm")  # first use: statements prepared, keys read
    acquired, released = cycle(database, leases, "probe")
    granted = held(leases, "probe")
    with counting(database) as renewed:
        leases.renew(granted.lease.lease_id, granted.secret)
    sessions = Sessions(leases, keepalive_timeout=30.0, max_keepalive_timeout=300.0)
    session = sessions.open("alice", None)
    with counting(database) as kept:
        sessions.keep_alive(session.session_id)
    waiting = acquire(leases, "probe", holder="bob", max_wait=60.0)
    assert isinstance(waiting, Waiting)
    with counting(database) as status:
        leases.wait_status(waiting.waiter_id)

    counts = {
        "acquire": acquired.count,
        "release": released.count,
        "renew": renewed.count,
        "keep_alive": kept.count,
        "wait_status": status.count,
    }
    assert counts == PINNED[backend], "\n\n".join(
        f"{call}:\n{counted}"
        for call, counted in (
            ("acquire", acquired),
            ("release", released),
            ("renew", renewed),
            ("keep_alive", kept),
            ("wait_status", status),
        )
    )


def queue_waiters(leases: Leases, names: list[str], count: int) -> None:
    """`count` waiting requests, each for one of `names` (held)."""
    for index in range(count):
        waiting = acquire(leases, names[index % len(names)], holder=f"w{index}", max_wait=600.0)
        assert isinstance(waiting, Waiting)


def test_a_release_costs_the_same_whatever_waits_for_other_resources(
    database, inventory, leases, backend
):
    names = [f"held-{i}" for i in range(5)]
    for name in ("probe", *names):
        inventory.create(calc(name))
    for name in names:
        held(leases, name, holder="keeper")
    cycle(database, leases, "probe")
    alone = cycle(database, leases, "probe")
    queue_waiters(leases, names, 200)
    crowded = cycle(database, leases, "probe")

    assert [c.count for c in crowded] == [c.count for c in alone], f"{alone}\n---\n{crowded}"


def test_an_acquire_costs_the_same_among_many_resources(database, inventory, leases):
    inventory.create(calc("probe"))
    cycle(database, leases, "probe")
    few = cycle(database, leases, "probe")
    for index in range(500):
        inventory.create(calc(f"more-{index:04d}"))
    many = cycle(database, leases, "probe")

    assert [c.count for c in many] == [c.count for c in few]


def test_a_release_serves_the_first_request_that_can_use_it_and_reads_no_other(
    database, inventory, leases
):
    names = [f"held-{i}" for i in range(4)]
    for name in names:
        inventory.create(calc(name))
    holders = {name: held(leases, name, holder="keeper") for name in names}
    queue_waiters(leases, names, 100)
    first = holders["held-0"]
    with counting(database) as released:
        leases.release(first.lease.lease_id, first.secret)
    # The first request for it is read, planned and granted; once nothing
    # is left on offer, nobody else is looked at.
    # (On PostgreSQL the release first reads its grants, and whether a key
    # matches them, to know its locks: no waiting request is read there.)
    reads_of_waiters = [
        sql
        for sql in released.statements
        if sql.startswith("SELECT") and 'FROM "waiter' in sql and 'FROM "lease_grant"' not in sql
    ]
    assert len(reads_of_waiters) == 1, str(released)
    assert sum(sql.startswith('INSERT INTO "lease" ') for sql in released.statements) == 1
