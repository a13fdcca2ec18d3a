"""Recorded times agree with the order of decisions: every write reads the
clock only once it holds the write lock (SQLite's `BEGIN IMMEDIATE`, the
advisory lock on PostgreSQL), so a lease granted after another ended never
records a `create_time` before that `end_time`."""

from __future__ import annotations

import peewee
import pytest

from broker.domain.inventory import Inventory
from broker.domain.leasing import Leases
from broker.domain.sessions import SessionEnding, Sessions
from broker.domain.values import AcquireRequest, Granted, ResourcePatch, Waiting
from tests.conftest import FakeClock
from tests.unit.builders import need, phone


def holds_write_lock(database: peewee.Database) -> bool:
    """Whether this thread's connection holds the database's write lock now."""
    if isinstance(database, peewee.SqliteDatabase):
        # A write transaction begins IMMEDIATE: once begun, it holds the lock.
        return database.connection().in_transaction
    cursor = database.execute_sql(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid()"
    )
    return cursor.fetchone()[0] > 0


class LockWatchingClock(FakeClock):
    """A fake clock that notes, at every read, whether the reader held the
    write lock."""

    def __init__(self, database: peewee.Database):
        super().__init__()
        self.database = database
        self.reads: list[bool] = []

    def __call__(self) -> float:
        self.reads.append(holds_write_lock(self.database))
        return self.now


@pytest.fixture
def watching(database) -> LockWatchingClock:
    return LockWatchingClock(database)


def test_every_write_reads_the_clock_under_the_write_lock(database, kinds, watching):
    inventory = Inventory(kinds, watching)
    leases = Leases(kinds, default_ttl=30.0, max_ttl=600.0, clock=watching)
    sessions = Sessions(leases, keepalive_timeout=10.0, max_keepalive_timeout=60.0)

    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    held = leases.acquire(AcquireRequest((need("Phone"),), holder="alice"))
    assert isinstance(held, Granted)
    waiting = leases.acquire(AcquireRequest((need("Phone"),), holder="bob", max_wait=60.0))
    assert isinstance(waiting, Waiting)
    leases.renew(held.lease.lease_id, held.secret)
    sessions.keep_alive(session.session_id)
    leases.release(held.lease.lease_id, held.secret)
    leases.abandon(waiting.waiter_id, timed_out=False)
    again = leases.acquire(AcquireRequest((need("Phone"),), holder="carol"))
    assert isinstance(again, Granted)
    leases.revoke(again.lease.lease_id, "the bench is needed", "admin")
    leases.acquire(AcquireRequest((need("Phone"),), holder="dave", ttl=5.0))
    watching.advance(6.0)
    assert leases.expire_due() == 1
    leases.dispatch()
    sessions.close(session.session_id, SessionEnding.CLOSED)
    inventory.update(ResourcePatch("p1", ("comment",), {}, comment="rack 2"))
    inventory.delete("p1", "")

    assert len(watching.reads) >= 15
    assert all(watching.reads), f"clock reads outside the write lock: {watching.reads}"
