"""Group commit on SQLite: writes that arrive together share one transaction
and one commit, yet each keeps its own outcome, and no domain call runs on
the event loop.

The writer is held on a first write until the others are queued behind it,
so which writes form a group is decided by the test, not by timing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import peewee
import pytest

from broker.api.runner import GroupCommitRunner
from broker.models.database import bind, close_database, open_database
from broker.models.transactions import GroupCommit, after_commit, write_transaction, writes

PATIENCE = 10.0


class Row(peewee.Model):
    name = peewee.CharField(primary_key=True)


@pytest.fixture
def sqlite_file(tmp_path):
    path = tmp_path / "group.sqlite3"
    database = open_database(f"sqlite:///{path}")
    bind(database)
    Row._meta.set_database(database)
    database.create_tables([Row])
    yield path
    close_database(database)


def names(path) -> set[str]:
    """The rows committed, as another connection sees them."""
    with sqlite3.connect(path) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM row")}


class Held:
    """A write that holds the writer until released, so that the writes
    queued meanwhile make up the next group."""

    writes = True  # what `@writes` marks

    def __init__(self):
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        assert self.go.wait(PATIENCE)
        return "held"


async def queued_behind(runner: GroupCommitRunner, held: Held, *calls) -> list:
    """Runs `held`, then `calls` while it holds the writer; returns the
    outcomes of `calls` (results or errors)."""
    first = asyncio.ensure_future(runner(held))
    await asyncio.to_thread(held.entered.wait, PATIENCE)
    tasks = [asyncio.ensure_future(runner(function, *args)) for function, *args in calls]
    # Every call is in the writer's queue once its task has run a step.
    while runner.queued() < len(calls):
        await asyncio.sleep(0)
    held.go.set()
    assert await first == "held"
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_writes_queued_together_commit_once_and_each_sees_the_last_uncommitted(sqlite_file):
    unseen: list[str] = []

    @writes
    def insert(name: str, previous: str | None) -> str:
        if previous is not None and previous not in names(sqlite_file):
            unseen.append(previous)
        Row.create(name=name)
        return name

    runner = GroupCommitRunner(readers=1)
    try:
        calls = [(insert, f"row-{i}", f"row-{i - 1}" if i else None) for i in range(10)]
        outcomes = asyncio.run(queued_behind(runner, Held(), *calls))
    finally:
        runner.close()

    assert outcomes == [f"row-{i}" for i in range(10)]
    # Each write found its predecessor's row still uncommitted: one transaction.
    assert unseen == [f"row-{i}" for i in range(9)]
    assert names(sqlite_file) == {f"row-{i}" for i in range(10)}
    assert runner.stats.groups == 2
    assert runner.stats.largest == 10


def test_a_failing_write_is_undone_alone_and_only_the_others_callbacks_run(sqlite_file):
    ran: list[str] = []

    @writes
    def insert(name: str, fail: bool) -> str:
        with write_transaction():
            Row.create(name=name)
            after_commit(f"created {name}", lambda: ran.append(name))
        if fail:
            raise ValueError(f"{name} refused")
        return name

    runner = GroupCommitRunner(readers=1)
    try:
        outcomes = asyncio.run(
            queued_behind(
                runner, Held(), (insert, "a", False), (insert, "b", True), (insert, "c", False)
            )
        )
    finally:
        runner.close()

    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "b refused"
    assert names(sqlite_file) == {"a", "c"}
    assert ran == ["a", "c"]
    assert runner.stats.groups == 2


def test_a_callback_registered_twice_in_a_group_runs_once_after_the_commit(sqlite_file):
    committed: list[set[str]] = []

    def announce() -> None:
        committed.append(names(sqlite_file))

    @writes
    def insert(name: str) -> bool:
        with write_transaction():
            Row.create(name=name)
            return after_commit("announce", announce)

    runner = GroupCommitRunner(readers=1)
    try:
        fresh = asyncio.run(queued_behind(runner, Held(), (insert, "a"), (insert, "b")))
    finally:
        runner.close()

    # The second write learns the key is already registered in its group.
    assert fresh == [True, False]
    assert committed == [{"a", "b"}]


def test_a_write_whose_caller_left_before_the_writer_reached_it_never_runs(sqlite_file):
    @writes
    def insert(name: str) -> str:
        Row.create(name=name)
        return name

    async def scenario() -> None:
        held = Held()
        first = asyncio.ensure_future(runner(held))
        await asyncio.to_thread(held.entered.wait, PATIENCE)
        left = asyncio.ensure_future(runner(insert, "left"))
        stayed = asyncio.ensure_future(runner(insert, "stayed"))
        while runner.queued() < 2:
            await asyncio.sleep(0)
        left.cancel()
        held.go.set()
        await first
        assert await stayed == "stayed"
        with pytest.raises(asyncio.CancelledError):
            await left

    runner = GroupCommitRunner(readers=1)
    try:
        asyncio.run(scenario())
    finally:
        runner.close()

    assert names(sqlite_file) == {"stayed"}


def test_no_call_runs_on_the_event_loop_thread_and_reads_run_beside_a_held_write(sqlite_file):
    threads: dict[str, int] = {}

    def read() -> int:
        threads["read"] = threading.get_ident()
        return Row.select().count()

    @writes
    def insert(name: str) -> None:
        threads["write"] = threading.get_ident()
        Row.create(name=name)

    async def scenario() -> int:
        threads["loop"] = threading.get_ident()
        held = Held()
        first = asyncio.ensure_future(runner(held))
        await asyncio.to_thread(held.entered.wait, PATIENCE)
        # The writer is busy: a read still answers, from what is committed.
        count = await asyncio.wait_for(runner(read), PATIENCE)
        held.go.set()
        await first
        await runner(insert, "a")
        return count

    runner = GroupCommitRunner(readers=1)
    try:
        count = asyncio.run(scenario())
    finally:
        runner.close()

    assert count == 0
    assert len({threads["loop"], threads["read"], threads["write"]}) == 3


def test_a_group_commit_refuses_to_start_inside_a_write(sqlite_file):
    database = Row._meta.database
    with write_transaction(), pytest.raises(RuntimeError, match="inside a write"):
        GroupCommit(database)


def test_a_write_alone_in_its_group_is_rolled_back_when_it_fails(sqlite_file):
    @writes
    def insert(name: str, fail: bool) -> str:
        with write_transaction():
            Row.create(name=name)
        if fail:
            raise ValueError(f"{name} refused")
        return name

    async def scenario() -> list:
        # One at a time: each is alone in its group.
        return [
            await asyncio.gather(runner(insert, name, fail), return_exceptions=True)
            for name, fail in (("kept", False), ("undone", True), ("after", False))
        ]

    runner = GroupCommitRunner(readers=1)
    try:
        outcomes = asyncio.run(scenario())
    finally:
        runner.close()

    assert outcomes[0] == ["kept"] and outcomes[2] == ["after"]
    assert isinstance(outcomes[1][0], ValueError)
    assert names(sqlite_file) == {"kept", "after"}
    assert runner.stats.largest == 1
