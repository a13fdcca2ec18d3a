"""Whether this broker itself can reach its database now: the check behind
its health.

On PostgreSQL the probe runs `SELECT 1` on a connection of its own, opened
and queried asynchronously so that every wait has a deadline: a refused or
broken link fails at once, and a link that stalled, or a server that does
not answer, fails when the deadline passes, instead of hanging the probe.
It takes no lock, so another broker holding the write lock does not make it
fail. On SQLite the probe reads the database file's first bytes (an
in-memory database always answers).
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import time
import typing
from typing import Protocol

import peewee
import psycopg2
import psycopg2.extensions

from broker.models.backend import backend_of
from broker.models.database import PostgresqlDatabase

# How often health is checked, at most; more often for a short stall bound.
LONGEST_INTERVAL = 1.0


class DatabaseProbe(Protocol):
    """`check()` answers within `timeout` seconds; it is run every `interval`."""

    interval: float
    timeout: float

    def check(self) -> bool: ...

    def close(self) -> None: ...


def probe_for(database: peewee.Database, stall_timeout: float) -> DatabaseProbe:
    """The probe of `database`: it answers within half of `stall_timeout`
    and runs every quarter of it (at most every `LONGEST_INTERVAL`), so a
    broker cut off from its database says so within `stall_timeout`."""
    interval = min(LONGEST_INTERVAL, stall_timeout / 4)
    if backend_of(database).name == "postgresql":
        return PostgresqlProbe(
            typing.cast(PostgresqlDatabase, database), interval, stall_timeout / 2
        )
    return SqliteProbe(database.database, interval, stall_timeout / 2)


class ProbeTimeout(Exception):
    """The database did not answer before the deadline."""


def wait_ready(connection, deadline: float) -> None:
    """Drives an asynchronous psycopg2 connection until its pending connect
    or query is done; `ProbeTimeout` once `deadline` (monotonic) passes."""
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeTimeout
        if state == psycopg2.extensions.POLL_READ:
            select.select([connection], [], [], remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [connection], [], remaining)
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


class PostgresqlProbe:
    """`SELECT 1` with a deadline, on one connection kept between checks
    and replaced after a failure."""

    def __init__(self, database: PostgresqlDatabase, interval: float, timeout: float):
        self.database = database
        self.interval = interval
        self.timeout = timeout
        self._connection: psycopg2.extensions.connection | None = None

    def check(self) -> bool:
        deadline = time.monotonic() + self.timeout
        try:
            if self._connection is None:
                self._connection = psycopg2.connect(
                    dbname=self.database.database, async_=True, **self.database.connect_params
                )
                wait_ready(self._connection, deadline)
            cursor = self._connection.cursor()
            cursor.execute("SELECT 1")
            wait_ready(self._connection, deadline)
            answer = cursor.fetchone()
            cursor.close()
            return answer == (1,)
        except (psycopg2.Error, OSError, ProbeTimeout):
            self.close()
            return False

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg2.Error, OSError):
                connection.close()


class SqliteProbe:
    """The database file is there and this process may read and write it.

    It never opens the file itself: on POSIX, closing any descriptor of a
    file drops every lock the process holds on it, so another process's
    connection would take the broker's write-ahead log for unused and
    delete it, with the writes in it."""

    def __init__(self, path: str, interval: float, timeout: float):
        self.path = path
        self.interval = interval
        self.timeout = timeout

    def check(self) -> bool:
        if self.path == ":memory:":
            return True
        try:
            found = os.stat(self.path)
        except OSError:
            return False
        return stat.S_ISREG(found.st_mode) and os.access(self.path, os.R_OK | os.W_OK)

    def close(self) -> None:
        pass
