"""Where the servicers' domain calls run: never on the event loop, so that a
slow call stalls no stream, keep-alive or health check.

On a database across the network a call waits on round trips, so it runs on
a worker thread (each with its own pooled connection) and the loop keeps
serving other calls meanwhile. On SQLite, where one write transaction runs
at a time and its commit is most of its cost, writes (domain calls marked
`@writes`) go to one writer thread that runs those that arrived together in
one transaction, each in a savepoint of its own, and commits them once
(`broker.models.transactions.GroupCommit`); reads run on a few reader
threads beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import peewee

from broker.models.database import database_proxy
from broker.models.transactions import GroupCommit, is_write

log = logging.getLogger(__name__)

# The most writes one group commit takes.
GROUP_LIMIT = 64


class Runner(Protocol):
    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any: ...

    def close(self) -> None: ...


# Bumped when the database comes back after an outage: a thread whose
# connection is older drops it before its next call, instead of failing once
# on a connection the outage killed.
_epoch = 0
_thread = threading.local()


def renew_connections() -> None:
    """Every thread opens a fresh connection before its next call."""
    global _epoch
    _epoch += 1


def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Runs a domain call on a connection not older than the last outage; a
    connection the database failed on is discarded."""
    if getattr(_thread, "epoch", 0) != _epoch:
        _discard_connection()
        _thread.epoch = _epoch
    try:
        return function(*args)
    except (peewee.OperationalError, peewee.InterfaceError):
        _discard_connection()
        raise


def _discard_connection() -> None:
    """Closes this thread's connection for good (a pool forgets a closed one)."""
    database = database_proxy.obj
    if database.is_closed():
        return
    with contextlib.suppress(Exception):
        database.connection().close()
    with contextlib.suppress(Exception):
        database.close()


class ThreadRunner:
    """Runs domain calls on a pool of worker threads."""

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(_call, function, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class TimedRunner:
    """A runner that hands the seconds each call took, from its submission
    to its answer (queueing and the commit included), and whether it was a
    write, to `observe`."""

    def __init__(self, runner: Runner, observe: Callable[[bool, float], None]):
        self.runner = runner
        self._observe = observe

    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.runner(function, *args)
        finally:
            self._observe(is_write(function), time.perf_counter() - started)

    def close(self) -> None:
        self.runner.close()


@dataclasses.dataclass
class _Write:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclasses.dataclass
class GroupStats:
    """What the writer did: groups committed and the writes in them."""

    groups: int = 0
    writes: int = 0
    largest: int = 0


def _settle(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    """On the event loop: answers the writes of a group."""
    for future, ok, outcome in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)


class GroupCommitRunner:
    """Writes on one writer thread, committed in groups; reads on a pool.

    The writer takes whatever writes are queued (up to `GROUP_LIMIT`), runs
    each in a savepoint of one transaction, commits once, and only then
    answers them and runs what they registered to run after the commit
    (waking waiting calls among it). A write that raises is undone alone
    and answered with its own error. A write whose caller was cancelled
    before the writer reached it is not run. If the commit itself fails,
    every write of the group is answered with that error: none of them
    happened."""

    def __init__(self, readers: int, limit: int = GROUP_LIMIT):
        self._readers = ThreadRunner(readers)
        self._limit = limit
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self.stats = GroupStats()
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer.start()

    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        if not is_write(function):
            return await self._readers(function, *args)
        loop = asyncio.get_running_loop()
        write = _Write(function, args, loop, loop.create_future())
        self._queue.put(write)
        return await write.future

    def queued(self) -> int:
        """Writes waiting for the writer."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self._readers.close()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            while len(group) < self._limit:
                try:
                    write = self._queue.get_nowait()
                except queue.Empty:
                    break
                if write is None:
                    stop = True
                    break
                group.append(write)
            # A write whose caller left before its turn is not run.
            self._commit([write for write in group if not write.future.cancelled()])
            if stop:
                return

    def _commit(self, group: list[_Write]) -> None:
        if not group:
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            _call(self._run_group, group, outcomes)
        except BaseException as error:  # the commit failed: nothing happened
            log.warning("a group of %d writes failed to commit: %s", len(group), error)
            outcomes = [(False, error)] * len(group)
        else:
            self.stats.groups += 1
            self.stats.writes += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
        # One wake-up of each event loop per group, not one per write.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for write, (ok, outcome) in zip(group, outcomes, strict=True):
            by_loop.setdefault(write.loop, []).append((write.future, ok, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, settled)

    @staticmethod
    def _run_group(group: list[_Write], outcomes: list[tuple[bool, Any]]) -> None:
        outcomes.clear()
        with GroupCommit(database_proxy.obj) as commit:
            alone = len(group) == 1
            for write in group:
                try:
                    outcomes.append((True, commit.run(write.function, *write.args, alone=alone)))
                except Exception as error:
                    outcomes.append((False, error))
