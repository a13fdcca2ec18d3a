"""The database handle, bound late from a URL so one code path serves every backend.

Models are declared against `database_proxy`; `open_database(url)` picks the
backend and `bind()` points the proxy at it. SQLite runs in WAL mode with
`synchronous=NORMAL` (a committed transaction survives the broker being killed;
only an OS crash may lose the last ones) and every write transaction starts with
`BEGIN IMMEDIATE`, so writers queue on the database lock instead of failing
with "database is locked" half-way through.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

import peewee

database_proxy = peewee.DatabaseProxy()

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", 30_000),
    ("cache_size", -16_000),
)


class DatabaseURLError(ValueError):
    """The database URL names no backend this broker can open."""


def open_database(url: str, *, base_dir: str | None = None) -> peewee.Database:
    """Opens the database named by `url` (`sqlite:///relative.db`,
    `sqlite:////absolute.db`, `sqlite:///:memory:`); a relative SQLite path is
    taken from `base_dir`, the directory of the configuration file."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        if not path:
            raise DatabaseURLError(f"{url!r} names no file (try sqlite:///broker.sqlite3)")
        if path != ":memory:" and not os.path.isabs(path) and base_dir:
            path = os.path.join(base_dir, path)
        return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=30)
    raise DatabaseURLError(f"{url!r}: unsupported scheme {parsed.scheme!r} (supported: sqlite)")


def bind(database: peewee.Database) -> None:
    """Points every model at `database`."""
    database_proxy.initialize(database)


# SQLite runs one write transaction at a time anyway; queueing this process's
# writers on a lock, rather than on SQLite's busy handler (which sleeps and
# retries with growing pauses), keeps the wait as short as the write itself.
_sqlite_writer = threading.RLock()


@contextlib.contextmanager
def write_transaction() -> Iterator[None]:
    """One atomic write. On SQLite it takes the write lock up front
    (`BEGIN IMMEDIATE`) so that two writers never deadlock on a lock upgrade,
    and writers of this process take turns on a lock first."""
    database = database_proxy.obj
    if isinstance(database, peewee.SqliteDatabase):
        with _sqlite_writer, database.atomic("IMMEDIATE"):
            yield
    else:
        with database.atomic():
            yield
