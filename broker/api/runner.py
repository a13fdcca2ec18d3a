"""Where the servicers' domain calls run.

On SQLite a call takes well under a millisecond and writes are serialised
anyway, so it runs right on the event loop. On a database across the network
a call waits on round trips, so it runs on a worker thread (each with its
own pooled connection) and the loop keeps serving other calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import peewee

from broker.models.database import database_proxy


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


class InlineRunner:
    """Runs domain calls on the event loop itself."""

    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        return _call(function, *args)

    def close(self) -> None:
        pass


class ThreadRunner:
    """Runs domain calls on a pool of worker threads."""

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    async def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(_call, function, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
