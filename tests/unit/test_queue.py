"""The wait queue through `Leases` on a real SQLite database and a fake clock:
order (priority, then arrival), no starvation of a large request, the
reservations that enforce it, deadlines, callers that leave, idempotent
request ids, and the lock-delay of a kind whose holder vanished.

Order is read from the broker's own history: the waiter ids `on_granted`
announces after each commit, and the `lease_granted` events in id order."""

from __future__ import annotations

import dataclasses

import peewee
import pytest

from broker.domain.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceBusyError,
)
from broker.domain.kinds import KindRegistry
from broker.domain.leasing import Leases
from broker.domain.values import (
    AcquireRequest,
    EventType,
    Granted,
    LeaseState,
    NewResource,
    Requirement,
    WaiterState,
    Waiting,
)
from broker.kind_data import ResourceData
from broker.models import queue as queue_model
from broker.models.resource import Resource
from tests.unit.builders import calc, events_of, field_of, need, phone

MAX_WAIT = 300.0
LOCK_DELAY = 20.0


class DelayedData(ResourceData):
    """A device that cannot check fencing numbers: after its holder vanished
    it stays out of reach for a while."""

    LOCK_DELAY = LOCK_DELAY

    serial = peewee.CharField(max_length=32, help_text="The serial number.")


@pytest.fixture
def kinds(config) -> KindRegistry:
    """The configured test kinds and the lock-delayed one of this module."""
    return KindRegistry((*config.kind_models(), DelayedData))


@pytest.fixture
def announced() -> list[list[int]]:
    """Every `on_granted` call, in order: the ids of the waiters each commit
    granted (what it announces is keyed, or listed, by waiter id)."""
    return []


@pytest.fixture
def leases(database, kinds, clock, announced) -> Leases:
    return Leases(
        kinds,
        default_ttl=30.0,
        max_ttl=600.0,
        max_wait=MAX_WAIT,
        clock=clock,
        on_granted=lambda granted: announced.append(list(granted)),
    )


def ask(
    leases: Leases,
    *requirements: Requirement,
    holder: str = "alice",
    max_wait: float = 60.0,
    priority: int = 0,
    request_id: str = "",
    ttl: float | None = None,
) -> Granted | Waiting:
    """An acquire that waits `max_wait` (0: answers at once)."""
    return leases.acquire(
        AcquireRequest(
            tuple(requirements),
            ttl=ttl,
            holder=holder,
            max_wait=max_wait,
            priority=priority,
            request_id=request_id,
        )
    )


def hold(leases: Leases, *requirements: Requirement, holder: str = "keeper", **kwargs) -> Granted:
    """An acquire that must be granted at once."""
    granted = ask(leases, *requirements, holder=holder, max_wait=0.0, **kwargs)
    assert isinstance(granted, Granted), granted
    return granted


def wait(leases: Leases, *requirements: Requirement, holder: str, **kwargs) -> Waiting:
    """An acquire that must be queued."""
    waiting = ask(leases, *requirements, holder=holder, **kwargs)
    assert isinstance(waiting, Waiting), waiting
    return waiting


def release(leases: Leases, granted: Granted) -> None:
    leases.release(granted.lease.lease_id, granted.secret)


def granted_to(leases: Leases, waiting: Waiting) -> Granted:
    status = leases.wait_status(waiting.waiter_id)
    assert isinstance(status, Granted), f"waiter {waiting.waiter_id} is not granted: {status}"
    return status


def grant_order() -> list[str]:
    """Lease ids in the order of their first `lease_granted` event."""
    order: list[str] = []
    for event in events_of(EventType.LEASE_GRANTED):
        if event.lease_id not in order:
            order.append(event.lease_id)
    return order


def queued_ids(leases: Leases) -> list[int]:
    return [view.waiter_id for view in leases.list_waiters(0, "").items]


def waiter_state(waiting: Waiting) -> WaiterState:
    return WaiterState(queue_model.get_waiter(waiting.waiter_id).state)


def reserved_by(name: str) -> int | None:
    return Resource.get(Resource.name == name).reserved_by


def names_of(granted: Granted) -> list[str]:
    return sorted(grant.resource.name for grant in granted.lease.grants)


# ---------------------------------------------------------------- order


def test_equal_priority_waiters_are_granted_in_arrival_order(inventory, leases, clock, announced):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    waits = [wait(leases, need("Phone"), holder=f"w{n}") for n in range(6)]

    assert [w.position for w in waits] == list(range(6))
    assert queued_ids(leases) == [w.waiter_id for w in waits]
    assert announced == []
    for n, expected in enumerate(waits):
        clock.advance(1)
        release(leases, holder)
        assert announced[-1] == [expected.waiter_id]
        holder = granted_to(leases, expected)
        assert holder.lease.holder == f"w{n}"
        assert holder.lease.create_time == clock.now
        assert queued_ids(leases) == [w.waiter_id for w in waits[n + 1 :]]
    assert announced == [[w.waiter_id] for w in waits]
    grantees = [leases.get(lease_id).holder for lease_id in grant_order()]
    assert grantees == ["keeper", *(f"w{n}" for n in range(6))]


def test_higher_priority_is_served_first_even_if_later(inventory, leases, announced):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    low = wait(leases, need("Phone"), holder="low")
    lowest = wait(leases, need("Phone"), holder="lowest", priority=-5)
    high = wait(leases, need("Phone"), holder="high", priority=5)
    later_low = wait(leases, need("Phone"), holder="later-low")

    assert (low.position, high.position) == (0, 0)
    assert leases.wait_status(low.waiter_id).position == 1
    listed = leases.list_waiters(0, "").items
    assert [(v.holder, v.priority, v.position) for v in listed] == [
        ("high", 5, 0),
        ("low", 0, 1),
        ("later-low", 0, 2),
        ("lowest", -5, 3),
    ]
    for expected in (high, low, later_low, lowest):
        release(leases, holder)
        assert announced[-1] == [expected.waiter_id]
        holder = granted_to(leases, expected)
    grantees = [leases.get(lease_id).holder for lease_id in grant_order()]
    assert grantees == ["keeper", "high", "low", "later-low", "lowest"]


def test_list_waiters_pages_in_serving_order(inventory, leases):
    inventory.create(phone("p1"))
    hold(leases, need("Phone"))
    priorities = [0, 3, 0, -1, 3, 0, 7]
    for n, priority in enumerate(priorities):
        wait(leases, need("Phone"), holder=f"w{n}", priority=priority)
    seen, token = [], ""
    for _ in range(len(priorities)):
        page = leases.list_waiters(3, token)
        seen.extend((view.holder, view.position) for view in page.items)
        token = page.next_page_token
        if not token:
            break

    assert [holder for holder, _ in seen] == ["w6", "w1", "w4", "w0", "w2", "w5", "w3"]
    assert [position for _, position in seen] == list(range(len(priorities)))
    assert token == ""


# ------------------------------------------------- fairness: no starvation


def test_a_large_request_is_not_starved_by_a_stream_of_single_requests(
    inventory, leases, clock, announced
):
    """Three phones held one each; a request for all three waits, then twenty
    single requests arrive around the releases: the large one is granted at
    the third release, and no single one gets a phone before it."""
    for name in ("p1", "p2", "p3"):
        inventory.create(phone(name))
    holders = [
        hold(leases, need("Phone", name=name), holder=f"h-{name}") for name in ["p1", "p2", "p3"]
    ]
    big = wait(leases, need("Phone", count=3), holder="big")
    singles = [wait(leases, need("Phone"), holder=f"single-{n}") for n in range(10)]

    clock.advance(1)
    release(leases, holders[0])
    assert announced == []
    assert reserved_by("p1") == big.waiter_id
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone", name="p1"), holder="intruder", max_wait=0)
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone"), holder="intruder", max_wait=0)
    singles += [wait(leases, need("Phone"), holder=f"single-{n}") for n in range(10, 15)]

    clock.advance(1)
    release(leases, holders[1])
    assert announced == []
    assert (reserved_by("p1"), reserved_by("p2")) == (big.waiter_id, big.waiter_id)
    singles += [wait(leases, need("Phone"), holder=f"single-{n}") for n in range(15, 20)]
    assert [s.position for s in singles] == list(range(1, 21))

    clock.advance(1)
    release(leases, holders[2])
    assert announced == [[big.waiter_id]]
    granted = granted_to(leases, big)
    assert names_of(granted) == ["p1", "p2", "p3"]
    assert granted.lease.create_time == clock.now
    assert leases.list(None, "", "", 0, "").items[0].lease_id == granted.lease.lease_id
    assert all(reserved_by(name) is None for name in ("p1", "p2", "p3"))

    clock.advance(1)
    release(leases, granted)
    assert announced[-1] == [s.waiter_id for s in singles[:3]]
    order = grant_order()
    single_leases = {granted_to(leases, s).lease.lease_id for s in singles[:3]}
    assert order.index(granted.lease.lease_id) < min(order.index(x) for x in single_leases)
    assert order[-3:] == [granted_to(leases, s).lease.lease_id for s in singles[:3]]
    assert queued_ids(leases) == [s.waiter_id for s in singles[3:]]


def test_a_later_request_may_take_what_the_earlier_one_cannot_use(inventory, leases, announced):
    inventory.create(phone("a1", os="android"))
    inventory.create(phone("a2", os="android"))
    inventory.create(phone("i1", os="ios"))
    inventory.create(phone("i2", os="ios"))
    held_a1 = hold(leases, need("Phone", name="a1"))
    hold(leases, need("Phone", name="a2"))
    held_i1 = hold(leases, need("Phone", name="i1"))
    big = wait(leases, need("Phone", count=2, os="android"), holder="big")
    later_ios = wait(leases, need("Phone", name="i1"), holder="later-ios")

    # A free resource the earlier request cannot use goes to a newcomer at once.
    assert names_of(hold(leases, need("Phone"), holder="newcomer")) == ["i2"]
    # One it can use is reserved for it, and refused to newcomers.
    release(leases, held_a1)
    assert reserved_by("a1") == big.waiter_id
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone"), holder="intruder", max_wait=0)
    # A waiter behind it is granted first with what it does not need.
    release(leases, held_i1)
    assert announced == [[later_ios.waiter_id]]
    assert names_of(granted_to(leases, later_ios)) == ["i1"]
    assert isinstance(leases.wait_status(big.waiter_id), Waiting)
    assert reserved_by("a1") == big.waiter_id


def test_a_higher_priority_newcomer_may_take_what_a_lower_one_reserved(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    first = hold(leases, need("Phone", name="p1"))
    hold(leases, need("Phone", name="p2"))
    big = wait(leases, need("Phone", count=2), holder="big")
    release(leases, first)
    assert reserved_by("p1") == big.waiter_id

    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone"), holder="equal", max_wait=0)
    assert names_of(hold(leases, need("Phone"), holder="urgent", priority=1)) == ["p1"]


def test_a_waiter_holds_no_lease_but_reserves_its_partial_assignment(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(calc("c1"))
    hold(leases, need("Phone"))
    waiting = wait(leases, need("Calculator"), need("Phone"), holder="both")

    assert inventory.get("c1").lease_ids == ()
    assert leases.list(None, "both", "", 0, "").items == ()
    assert reserved_by("c1") == waiting.waiter_id
    assert waiting.blocked.requirement_index == 1
    assert [h.holder for h in waiting.blocked.holders] == ["keeper"]
    assert [v.blocked_requirement_index for v in leases.list_waiters(0, "").items] == [1]
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Calculator"), holder="other", max_wait=0)


# ------------------------------------------------------------ deadlines


def test_a_waiter_past_its_deadline_times_out_and_holds_nothing(
    inventory, leases, clock, announced
):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    waiting = wait(leases, need("Phone"), holder="patient", max_wait=10)
    assert waiting.deadline == clock.now + 10

    clock.advance(9.5)
    assert isinstance(leases.wait_status(waiting.waiter_id), Waiting)
    clock.advance(1)
    with pytest.raises(DeadlineExceededError):
        leases.wait_status(waiting.waiter_id)
    leases.dispatch()
    assert waiter_state(waiting) == WaiterState.TIMED_OUT
    assert queued_ids(leases) == []
    with pytest.raises(DeadlineExceededError):
        leases.wait_status(waiting.waiter_id)

    release(leases, holder)
    assert announced == []
    assert leases.list(None, "patient", "", 0, "").items == ()
    assert names_of(hold(leases, need("Phone"), holder="next")) == ["p1"]


def test_a_wait_is_capped_by_the_brokers_max_wait(inventory, leases, clock):
    inventory.create(phone("p1"))
    hold(leases, need("Phone"))
    assert wait(leases, need("Phone"), holder="w", max_wait=10_000).deadline == (
        clock.now + MAX_WAIT
    )


@pytest.mark.parametrize(
    ("max_wait", "priority", "field"),
    [(-1, 0, "max_wait"), (5, 101, "priority"), (5, -101, "priority")],
)
def test_bad_wait_arguments_are_invalid(inventory, leases, max_wait, priority, field):
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        ask(leases, need("Phone"), max_wait=max_wait, priority=priority)
    assert field_of(error) == field
    assert queued_ids(leases) == []


def test_an_abandoned_waiter_leaves_the_queue_for_the_next(inventory, leases, announced):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    gone = wait(leases, need("Phone"), holder="gone")
    timed_out = wait(leases, need("Phone"), holder="timed-out")
    staying = wait(leases, need("Phone"), holder="staying")

    assert leases.abandon(gone.waiter_id, timed_out=False) is None
    assert leases.abandon(timed_out.waiter_id, timed_out=True) is None
    assert (waiter_state(gone), waiter_state(timed_out)) == (
        WaiterState.CANCELLED,
        WaiterState.TIMED_OUT,
    )
    assert leases.wait_status(staying.waiter_id).position == 0
    release(leases, holder)
    assert announced == [[staying.waiter_id]]
    assert granted_to(leases, staying).lease.holder == "staying"


def test_a_timed_out_caller_granted_meanwhile_keeps_its_grant(inventory, leases):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    waiting = wait(leases, need("Phone"), holder="lucky")
    release(leases, holder)
    granted = granted_to(leases, waiting)

    kept = leases.abandon(waiting.waiter_id, timed_out=True)

    assert kept == granted
    assert leases.get(granted.lease.lease_id).state == LeaseState.ACTIVE


def test_a_vanished_caller_granted_meanwhile_has_its_lease_released(inventory, leases, announced):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    vanished = wait(leases, need("Phone"), holder="vanished")
    after = wait(leases, need("Phone"), holder="after")
    release(leases, holder)
    lease_id = granted_to(leases, vanished).lease.lease_id

    assert leases.abandon(vanished.waiter_id, timed_out=False) is None

    ended = leases.get(lease_id)
    assert ended.state == LeaseState.RELEASED
    assert ended.end_reason == "its caller left before the grant"
    assert announced == [[vanished.waiter_id], [after.waiter_id]]
    assert granted_to(leases, after).lease.holder == "after"


def test_unknown_waiter_is_not_found(leases):
    with pytest.raises(NotFoundError):
        leases.wait_status(12345)
    with pytest.raises(NotFoundError):
        leases.abandon(12345, timed_out=False)


# ----------------------------------------------------------- request ids


def test_a_request_id_seen_before_returns_the_same_lease_and_secret(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    first = hold(leases, need("Phone"), request_id="req-1")
    again = hold(leases, need("Phone"), request_id="req-1")

    assert again.lease.lease_id == first.lease.lease_id
    assert again.secret == first.secret
    assert [e.lease_id for e in events_of(EventType.LEASE_GRANTED)] == [first.lease.lease_id]
    assert inventory.get("p2").lease_ids == ()


def test_a_waiting_request_id_returns_the_same_waiter_then_its_grant(inventory, leases):
    inventory.create(phone("p1"))
    holder = hold(leases, need("Phone"))
    first = wait(leases, need("Phone"), holder="retrier", request_id="req-2")
    again = wait(leases, need("Phone"), holder="retrier", request_id="req-2")

    assert again.waiter_id == first.waiter_id
    assert queued_ids(leases) == [first.waiter_id]
    release(leases, holder)
    granted = granted_to(leases, first)
    retried = ask(leases, need("Phone"), holder="retrier", request_id="req-2")
    assert isinstance(retried, Granted)
    assert (retried.lease.lease_id, retried.secret) == (granted.lease.lease_id, granted.secret)
    assert len(leases.list(None, "retrier", "", 0, "").items) == 1


def test_a_request_id_too_long_is_invalid(inventory, leases):
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        ask(leases, need("Phone"), request_id="r" * 129)
    assert field_of(error) == "request_id"


@pytest.mark.parametrize(
    "changed",
    [
        {"requirements": (need("Phone", name="p2"),)},
        {"holder": "mallory"},
        {"ttl": 31.0},
        {"session_id": "another-session"},
    ],
    ids=["requirements", "holder", "ttl", "session"],
)
def test_a_request_id_reused_by_a_different_request_is_invalid(inventory, leases, changed):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    original = AcquireRequest((need("Phone"),), holder="alice", request_id="req-3")
    granted = leases.acquire(original)
    assert isinstance(granted, Granted)

    with pytest.raises(InvalidArgumentError) as error:
        leases.acquire(dataclasses.replace(original, **changed))

    assert field_of(error) == "request_id"
    assert "repeat the original request" in error.value.message
    assert granted.secret not in error.value.message
    assert [e.lease_id for e in events_of(EventType.LEASE_GRANTED)] == [granted.lease.lease_id]
    assert inventory.get("p2").lease_ids == ()


@pytest.mark.parametrize("end", ["release", "revoke", "expire"])
def test_a_request_id_replayed_after_its_lease_ended_holds_nothing(inventory, leases, clock, end):
    inventory.create(phone("p1"))
    first = hold(leases, need("Phone"), holder="alice", request_id="req-4")
    if end == "release":
        release(leases, first)
    elif end == "revoke":
        leases.revoke(first.lease.lease_id, "bench needed", "admin")
    else:
        clock.advance(31.0)
    successor = hold(leases, need("Phone"), holder="bob")

    with pytest.raises(FailedPreconditionError) as error:
        ask(leases, need("Phone"), holder="alice", max_wait=0.0, request_id="req-4")

    reason = {"release": "LEASE_RELEASED", "revoke": "LEASE_REVOKED", "expire": "LEASE_EXPIRED"}
    assert error.value.violations[0].type == reason[end]
    assert first.lease.lease_id in error.value.message
    assert "holds nothing" in error.value.message
    assert inventory.get("p1").lease_ids == (successor.lease.lease_id,)


def test_a_waiting_request_cannot_be_taken_over_by_its_request_id(inventory, leases):
    inventory.create(phone("p1"))
    keeper = hold(leases, need("Phone"))
    waiting = wait(leases, need("Phone"), holder="alice", request_id="req-5")

    with pytest.raises(InvalidArgumentError) as error:
        ask(leases, need("Phone"), holder="mallory", request_id="req-5")
    assert field_of(error) == "request_id"

    release(leases, keeper)
    granted = granted_to(leases, waiting)
    assert granted.lease.holder == "alice"
    assert queued_ids(leases) == []


def test_request_ids_are_stored_only_as_keyed_hashes(database, inventory, leases):
    inventory.create(phone("p1"))
    keeper = hold(leases, need("Phone"), request_id="id-of-the-lease")
    wait(leases, need("Phone"), holder="alice", request_id="id-of-the-waiter")

    dump = "\n".join(
        repr(row)
        for table in ("lease", "waiter")
        for row in database.execute_sql(f'SELECT * FROM "{table}"').fetchall()
    )
    assert "id-of-the-lease" not in dump
    assert "id-of-the-waiter" not in dump
    assert keeper.secret not in dump


# ------------------------------------------------------------ lock-delay


def delayed(name: str) -> NewResource:
    return NewResource(name, "Delayed", {"serial": name.upper()})


def test_an_expired_lease_keeps_a_lock_delayed_resource_out_of_reach(
    inventory, leases, clock, announced
):
    inventory.create(delayed("d1"))
    vanished = hold(leases, need("Delayed"), ttl=5)
    clock.advance(5)
    assert leases.expire_due() == 1
    expired_at = clock.now
    assert leases.get(vanished.lease.lease_id).state == LeaseState.EXPIRED

    with pytest.raises(ResourceBusyError):
        ask(leases, need("Delayed"), holder="eager", max_wait=0)
    waiting = wait(leases, need("Delayed"), holder="patient")
    clock.advance(LOCK_DELAY - 0.5)
    leases.expire_due()
    assert announced == []
    assert isinstance(leases.wait_status(waiting.waiter_id), Waiting)

    clock.advance(0.5)
    leases.expire_due()
    assert announced == [[waiting.waiter_id]]
    granted = granted_to(leases, waiting)
    assert granted.lease.create_time == expired_at + LOCK_DELAY
    assert granted.lease.grants[0].fencing_token == vanished.lease.grants[0].fencing_token + 1


def test_a_released_lock_delayed_resource_is_free_at_once(inventory, leases):
    inventory.create(delayed("d1"))
    first = hold(leases, need("Delayed"))
    release(leases, first)

    assert names_of(hold(leases, need("Delayed"), holder="next")) == ["d1"]
