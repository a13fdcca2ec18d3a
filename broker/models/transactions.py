"""Write transactions: one atomic write, what runs once it commits, and
group commit, many writes in one transaction that each keep their outcome.

A write transaction takes the locks its backend asks for
(`broker.models.locks`: on PostgreSQL the advisory locks of the kinds it
touches; on SQLite the one write lock, `BEGIN IMMEDIATE`). Inside one,
`after_commit` registers what to run once the outermost one commits:
waking waiting calls, telling the event feed. Nothing runs if it fails.

`GroupCommit` is SQLite's answer to one commit per write being the cost
of a write: one writer thread runs the writes that arrived together, each
in a savepoint of its own, and commits them at once. A write that fails is
rolled back to its savepoint, with the callbacks it registered, and fails
alone; the callbacks of the others run after the one commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

import peewee

from broker.models import locks
from broker.models.backend import backend_of
from broker.models.database import WRITE_LOCK_KEY, database_proxy, schema_key

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class _Commit(threading.local):
    # The callbacks of this thread's write (keyed, so each runs once); None
    # outside a write.
    callbacks: dict[str, Callable[[], None]] | None = None
    # Inside a group commit: the callbacks of its writes that succeeded so far.
    group: dict[str, Callable[[], None]] | None = None
    # Inside one write of a group commit, which is undone as a whole if it
    # fails: write transactions within it need no savepoints of their own.
    flat: bool = False


_commit = _Commit()


def writes(function: F) -> F:
    """Marks a domain call that writes, so that a runner sends it to the
    writer (`broker.api.runner`); one that is not marked may still write."""
    function.writes = True  # type: ignore[attr-defined]
    return function


def is_write(function: Callable[..., Any]) -> bool:
    return bool(getattr(function, "writes", False))


@contextlib.contextmanager
def write_transaction(
    *, kinds: Collection[str] | None = None, queue: bool = False
) -> Iterator[None]:
    """One atomic write. It takes its backend's locks: on PostgreSQL those
    of the `kinds` it touches, exclusive for `queue` work, or, with no kinds
    given, the write lock of everything. Nested in another write (or in a
    group commit's write) it is a savepoint and takes nothing more. What
    `after_commit` registered inside it runs once the outermost commits."""
    database = database_proxy.obj
    key = (WRITE_LOCK_KEY, schema_key(database))
    if _commit.callbacks is not None:
        # Nested: a savepoint, unless its group commit's write is one already.
        with contextlib.nullcontext() if _commit.flat else database.atomic():
            locks.take(database, key, kinds, queue, outermost=False)
            yield
        return
    _commit.callbacks = {}
    try:
        with backend_of(database).begin(database):
            locks.take(database, key, kinds, queue)
            yield
        callbacks = list(_commit.callbacks.values())
    finally:
        _commit.callbacks = None
        locks.released()
    for callback in callbacks:
        callback()


def after_commit(key: str, callback: Callable[[], None]) -> bool:
    """Inside a write transaction: runs `callback` once it commits, once per
    `key`; True if `key` is new in this transaction."""
    callbacks = _commit.callbacks
    if callbacks is None:
        raise RuntimeError("after_commit outside a write transaction")
    fresh = key not in callbacks and key not in (_commit.group or ())
    callbacks.setdefault(key, callback)
    return fresh


def pending(key: str) -> bool:
    """Whether this write registered `key` with `after_commit`."""
    return key in (_commit.callbacks or ())


class _RolledBack(Exception):
    """Rolls a group back: its one write failed."""


class GroupCommit:
    """One write transaction for many writes of this thread, committed once
    on leaving the block; `run` runs one write in a savepoint of its own.
    It holds every lock the backend has (`locks.Level.EVERYTHING`)."""

    def __init__(self, database: peewee.Database):
        if _commit.callbacks is not None:
            raise RuntimeError("a group commit inside a write transaction")
        self._database = database
        self._stack = contextlib.ExitStack()
        self._callbacks: dict[str, Callable[[], None]] = {}
        self._rolled_back = False

    def __enter__(self) -> GroupCommit:
        self._stack.enter_context(backend_of(self._database).begin(self._database))
        locks.take(self._database, (WRITE_LOCK_KEY, schema_key(self._database)), None, False)
        _commit.group = self._callbacks
        return self

    def run(self, function: Callable[..., Any], *args: Any, alone: bool = False) -> Any:
        """Runs one write; if it raises, what it did is undone and its
        callbacks dropped, and the error is its own. A write `alone` in its
        group needs no savepoint: if it fails, the group is rolled back."""
        _commit.callbacks, _commit.flat = {}, True
        try:
            if alone:
                result = self._run_alone(function, *args)
            else:
                with self._database.atomic():
                    result = function(*args)
            for key, callback in _commit.callbacks.items():
                self._callbacks.setdefault(key, callback)
        finally:
            _commit.callbacks, _commit.flat = None, False
        return result

    def _run_alone(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except BaseException:
            self._rolled_back = True
            raise

    def __exit__(self, *failure: Any) -> None:
        if failure[0] is None and self._rolled_back:
            failure = (_RolledBack, _RolledBack(), None)
        try:
            _commit.group = None
            # Commits, or rolls back everything if the block failed.
            self._stack.__exit__(*failure)
        finally:
            locks.released()
        if failure[0] is not None:
            return
        # The writes happened: a callback that fails must not say otherwise.
        for callback in self._callbacks.values():
            try:
                callback()
            except Exception:
                log.exception("a callback after a group commit failed")
