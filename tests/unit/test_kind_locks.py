"""On PostgreSQL writes lock only the kinds they touch (`broker.models.locks`):
two brokers' acquires and releases run at once, a newcomer still never
overtakes a waiter, and a race is settled by running the operation again,
never reported to the caller.

Two threads stand for two brokers: each has its own pooled connection. A
thread is held mid-transaction at one of its clock reads (`PausingClock`):
every write reads the clock once its locks are held, and an acquire reads
it again after choosing its resources, just before claiming them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from broker.domain.errors import ResourceBusyError
from broker.domain.inventory import Inventory
from broker.domain.leasing import Leases
from broker.domain.values import AcquireRequest, Granted, LeaseState, Waiting
from broker.models import locks
from broker.models.database import WRITE_LOCK_KEY
from broker.models.resource import Resource
from broker.models.transactions import write_transaction
from tests.conftest import FakeClock
from tests.integration.helpers import wait_until
from tests.unit.builders import calc, need

PAUSE = 30.0


@pytest.fixture
def database_url(postgres_url) -> str:
    """Only PostgreSQL: on SQLite one writer serialises everything."""
    return postgres_url


class PausingClock(FakeClock):
    """A fake clock that holds a named thread at one of its reads until told
    to go on."""

    def __init__(self):
        super().__init__()
        self.reads: Counter[str] = Counter()
        self._pauses: dict[tuple[str, int], tuple[threading.Event, threading.Event]] = {}
        self._lock = threading.Lock()

    def pause(self, thread: str, read: int) -> tuple[threading.Event, threading.Event]:
        """Events (reached, go_on) of thread `thread`'s `read`-th read."""
        events = threading.Event(), threading.Event()
        self._pauses[(thread, read)] = events
        return events

    def __call__(self) -> float:
        name = threading.current_thread().name
        with self._lock:
            self.reads[name] += 1
            pause = self._pauses.get((name, self.reads[name]))
        if pause is not None:
            pause[0].set()
            assert pause[1].wait(PAUSE), "the test never let the thread go on"
        return self.now


class Broker(threading.Thread):
    """A call on a thread of its own, with its own database connection."""

    def __init__(self, name: str, database, call: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.database, self.call = database, call
        self.pid = threading.Event()
        self.backend = 0
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.backend = self.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            self.pid.set()
            self.result = self.call()
        except BaseException as error:  # handed to the test by outcome()
            self.error = error
        finally:
            self.database.close()

    def begin(self) -> Broker:
        self.start()
        assert self.pid.wait(PAUSE)
        return self

    def outcome(self):
        self.join(PAUSE)
        assert not self.is_alive(), f"{self.name} did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def advisory_locks(admin, pid: int) -> set[tuple[int, str, bool]]:
    """The advisory locks session `pid` holds or waits for: (first key,
    mode, granted)."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT classid::bigint, mode, granted FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = %s",
            (pid,),
        )
        return {(signed(classid), mode, granted) for classid, mode, granted in cursor.fetchall()}


def signed(key: int) -> int:
    return key - 2**32 if key >= 2**31 else key


def waits_for_a_lock(admin, pid: int) -> bool:
    return any(not granted for _, _, granted in advisory_locks(admin, pid))


@pytest.fixture
def clock() -> PausingClock:
    return PausingClock()


@pytest.fixture
def leases(database, kinds, clock) -> Leases:
    return Leases(kinds, default_ttl=30.0, max_ttl=600.0, clock=clock)


@pytest.fixture
def calculators(database, kinds, clock) -> None:
    inventory = Inventory(kinds, clock)
    for n in (1, 2, 3):
        inventory.create(calc(f"c{n}", f"10.0.0.{n}"))


def acquiring(leases: Leases, *requirements, holder: str, **options) -> Callable[[], object]:
    return lambda: leases.acquire(AcquireRequest(tuple(requirements), holder=holder, **options))


def test_an_uncontended_acquire_and_release_take_no_exclusive_lock(
    database, leases, clock, calculators, postgres_admin
):
    reached, go_on = clock.pause("first", 1)
    first = Broker("first", database, acquiring(leases, need("Calculator", name="c1"), holder="a"))
    first.begin()
    assert reached.wait(PAUSE)
    held = advisory_locks(postgres_admin, first.backend)
    # The write lock and the kind's lock, both shared; nothing exclusive.
    assert held == {
        (WRITE_LOCK_KEY, "ShareLock", True),
        (locks.kind_key("Calculator"), "ShareLock", True),
    }
    # Meanwhile another broker acquires and releases a calculator in full.
    other = leases.acquire(AcquireRequest((need("Calculator", name="c2"),), holder="b"))
    assert isinstance(other, Granted)
    released = leases.release(other.lease.lease_id, other.secret)
    assert released.state == LeaseState.RELEASED
    go_on.set()
    granted = first.outcome()
    assert isinstance(granted, Granted)

    reached, go_on = clock.pause("release", 1)
    release = Broker(
        "release", database, lambda: leases.release(granted.lease.lease_id, granted.secret)
    ).begin()
    assert reached.wait(PAUSE)
    assert advisory_locks(postgres_admin, release.backend) == held
    go_on.set()
    assert release.outcome().state == LeaseState.RELEASED


def test_two_brokers_grant_resources_of_one_kind_at_once(
    database, leases, clock, calculators, postgres_admin
):
    # The first broker stops after choosing its calculator, before claiming it.
    reached, go_on = clock.pause("first", 2)
    first = Broker("first", database, acquiring(leases, need("Calculator"), holder="a")).begin()
    assert reached.wait(PAUSE)
    second = Broker("second", database, acquiring(leases, need("Calculator"), holder="b")).begin()
    granted_second = second.outcome()  # finishes while the first is held
    assert first.is_alive()
    go_on.set()
    granted_first = first.outcome()
    assert isinstance(granted_first, Granted) and isinstance(granted_second, Granted)
    names = {g.lease.grants[0].resource.name for g in (granted_first, granted_second)}
    assert len(names) == 2
    # Neither ran again: each read the clock twice (locks held, claim).
    assert clock.reads["first"] == 2 and clock.reads["second"] == 2


def test_a_newcomer_never_takes_what_a_waiter_reserved_meanwhile(
    database, leases, clock, calculators, postgres_admin
):
    held = [
        leases.acquire(AcquireRequest((need("Calculator", name=name),), holder="keeper"))
        for name in ("c1", "c2")
    ]
    reserved, go_on = threading.Event(), threading.Event()

    def wait_and_hold_open():
        # The waiter's transaction, held open after it reserved c3.
        with write_transaction(kinds={"Calculator"}, queue=True):
            waiting = leases.acquire(
                AcquireRequest((need("Calculator", count=2),), holder="waiter", max_wait=600.0)
            )
            reserved.set()
            assert go_on.wait(PAUSE)
        return waiting

    waiter = Broker("waiter", database, wait_and_hold_open).begin()
    assert reserved.wait(PAUSE)
    newcomer = Broker(
        "newcomer", database, acquiring(leases, need("Calculator"), holder="newcomer")
    ).begin()
    wait_until(
        lambda: waits_for_a_lock(postgres_admin, newcomer.backend),
        PAUSE,
        "the newcomer to wait for the waiter's transaction",
    )
    go_on.set()
    waiting = waiter.outcome()
    assert isinstance(waiting, Waiting)
    with pytest.raises(ResourceBusyError):
        newcomer.outcome()
    c3 = Resource.get(Resource.name == "c3")
    assert c3.lease_id is None and c3.reserved_by == waiting.waiter_id
    # The keeper's release grants the waiter both calculators it waits for.
    leases.release(held[0].lease.lease_id, held[0].secret)
    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted)
    assert sorted(g.resource.name for g in granted.lease.grants) == ["c1", "c3"]


def test_a_release_that_meets_a_new_waiter_runs_again_and_grants_it(
    database, leases, clock, calculators, postgres_admin
):
    held = [
        leases.acquire(AcquireRequest((need("Calculator", name=name),), holder="keeper"))
        for name in ("c1", "c2", "c3")
    ]
    # The waiter's second attempt (its first found nothing free) holds the
    # kind's queue lock; the release of c1 then waits for it.
    reached, go_on = clock.pause("waiter", 2)
    waiter = Broker(
        "waiter",
        database,
        acquiring(leases, need("Calculator"), holder="waiter", max_wait=600.0),
    ).begin()
    assert reached.wait(PAUSE)
    assert (locks.kind_key("Calculator"), "ExclusiveLock", True) in advisory_locks(
        postgres_admin, waiter.backend
    )
    release = Broker(
        "release", database, lambda: leases.release(held[0].lease.lease_id, held[0].secret)
    ).begin()
    wait_until(
        lambda: waits_for_a_lock(postgres_admin, release.backend),
        PAUSE,
        "the release to wait for the waiter's transaction",
    )
    go_on.set()
    waiting = waiter.outcome()
    assert isinstance(waiting, Waiting)
    # The release saw the waiter once its shared lock was granted, and ran
    # again with the lock of everything to hand it c1: the caller only sees
    # its lease released.
    assert release.outcome().state == LeaseState.RELEASED
    assert clock.reads["release"] == 2
    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted)
    assert granted.lease.grants[0].resource.name == "c1"


def test_the_sweep_expires_a_lease_beside_a_grant_under_way(
    database, leases, clock, calculators, postgres_admin
):
    lapsing = leases.acquire(AcquireRequest((need("Calculator", name="c1"),), ttl=5.0))
    assert isinstance(lapsing, Granted)
    clock.advance(10.0)
    reached, go_on = clock.pause("first", 1)
    first = Broker("first", database, acquiring(leases, need("Calculator", name="c2"), holder="a"))
    first.begin()
    assert reached.wait(PAUSE)
    # The sweep locks the expired lease's kind shared: it needs no turn.
    assert leases.expire_due() == 1
    assert leases.get(lapsing.lease.lease_id).state == LeaseState.EXPIRED
    go_on.set()
    assert isinstance(first.outcome(), Granted)
    # With nothing due it locks nothing but the write lock, shared.
    reached, go_on = clock.pause("sweep", 1)
    sweep = Broker("sweep", database, leases.expire_due).begin()
    assert reached.wait(PAUSE)
    assert advisory_locks(postgres_admin, sweep.backend) == {(WRITE_LOCK_KEY, "ShareLock", True)}
    go_on.set()
    assert sweep.outcome() == 0
