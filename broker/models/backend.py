"""What differs between the databases a broker runs on, in one place.

Each backend is one small object: what it can do (row locks, NOTIFY, locks
by kind, several brokers at once, group commit) and how it opens and closes
a write. Everything else is one code path; a module that needs to know asks
`backend_of(database)` instead of testing the database's class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

import peewee

# PostgreSQL cuts identifiers to this many bytes.
POSTGRES_NAME_BYTES = 63

# SQLite runs one write transaction at a time anyway; queueing this process's
# writers on a lock, rather than on SQLite's busy handler (which sleeps and
# retries with growing pauses), keeps the wait as short as the write itself.
_sqlite_writer = threading.RLock()


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    # `SELECT … FOR UPDATE` and `SKIP LOCKED`: rows are locked for change,
    # because other transactions write at the same time.
    row_locks: bool
    # `NOTIFY`: other brokers of the database hear of grants and changes.
    notifies: bool
    # Writes take advisory locks of the kinds they touch (`broker.models.locks`).
    kind_locks: bool
    # Several brokers serve one database, so they lay out its tables in turn.
    shared: bool
    # One writer batches concurrent writes into one transaction.
    group_commit: bool
    # The function finding text in text: 1-based, 0 when absent, and
    # case-sensitive on both (SQLite's LIKE is not).
    position_function: str

    def for_update(self, clause: str = " FOR UPDATE") -> str:
        """`clause` where rows are locked for change, else nothing."""
        return clause if self.row_locks else ""

    def index_name(self, name: str) -> str:
        """The name the catalogue lists an index under."""
        if self.name == "postgresql":
            return name.encode()[:POSTGRES_NAME_BYTES].decode(errors="ignore")
        return name

    @contextlib.contextmanager
    def begin(self, database: peewee.Database) -> Iterator[None]:
        """An outermost write transaction. On SQLite it takes the write lock
        up front (`BEGIN IMMEDIATE`) so two writers never deadlock on a lock
        upgrade, after this process's writers took turns on a lock."""
        if self.name == "sqlite":
            with _sqlite_writer, database.atomic("IMMEDIATE"):
                yield
        else:
            with database.atomic():
                yield

    def close(self, database: peewee.Database) -> None:
        """Closes this thread's connection, and every pooled one."""
        close_all = getattr(database, "close_all", None)
        if close_all is not None:
            close_all()
        else:
            database.close()


SQLITE = Backend(
    "sqlite",
    row_locks=False,
    notifies=False,
    kind_locks=False,
    shared=False,
    group_commit=True,
    position_function="instr",
)
POSTGRESQL = Backend(
    "postgresql",
    row_locks=True,
    notifies=True,
    kind_locks=True,
    shared=True,
    group_commit=False,
    position_function="strpos",
)


def backend_of(database: peewee.Database | peewee.DatabaseProxy) -> Backend:
    """The backend of `database` (a proxy stands for what it is bound to)."""
    if isinstance(database, peewee.DatabaseProxy):
        database = database.obj
    return POSTGRESQL if isinstance(database, peewee.PostgresqlDatabase) else SQLITE
