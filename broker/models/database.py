"""The database handle, bound late from a URL so one code path serves every backend.

Models are declared against `database_proxy`; `open_database(url)` picks the
backend and `bind()` points the proxy at it.

What differs between the backends is `broker.models.backend`'s; write
transactions are `broker.models.transactions`'.

SQLite runs in WAL mode with `synchronous=NORMAL` (a committed transaction
survives the broker being killed; only an OS crash may lose the last ones) and
every write transaction starts with `BEGIN IMMEDIATE`, so writers queue on the
database lock instead of failing with "database is locked" half-way through.

PostgreSQL is reached through a connection pool. Every write transaction
first takes transaction-scoped advisory locks (`broker.models.locks`): shared
ones of the kinds it touches, so that writes about different resources run
at once, and the write lock of everything, exclusive, for queue passes and
writes that do not say what they touch; the conditional updates stay the
guard of ownership. So
that no broker holds that lock hostage, every session's timeouts derive from
one bound, `database.stall_timeout` (`Timeouts`): a session idle inside a
transaction (its broker frozen, or its link stalled) is ended by the server,
lock waits and statements are bounded, and TCP keep-alives and a TCP user
timeout on both ends of the connection notice a link that stopped carrying
bytes. Each session is named after its broker (`application_name`
`broker-<pid>`), so `pg_stat_activity` and `pg_locks` tell whose it is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from broker.kind_data import database_proxy
from broker.models.backend import backend_of

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", 30_000),
    ("cache_size", -16_000),
)


# On PostgreSQL: the default of `database.stall_timeout`, in seconds.
DEFAULT_STALL_TIMEOUT = 5.0
POOL_SIZE = 32
# The advisory locks taken on PostgreSQL (with the schema as second key):
# every write transaction's, and the one that lays out the tables.
WRITE_LOCK_KEY = 0x62726F6B  # "brok"
LAYOUT_LOCK_KEY = 0x6C61796F  # "layo"


class DatabaseURLError(ValueError):
    """The database URL names no backend this broker can open."""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Every PostgreSQL timeout, derived from one stall bound (seconds).

    A transaction idle for half the bound is ended by the server, freeing
    its locks, and a lock is waited for at most half the bound: a broker
    queued for the write lock behind a frozen one gives up by then, so it
    cannot take the lock only to freeze on it in turn. Together the others
    wait at most the whole bound. A statement may take twice the bound. The
    TCP keep-alives (whole seconds) and the TCP user timeout give up on a
    link that carries nothing for about the bound; a connection attempt
    waits for it (libpq's least is 2 s)."""

    stall: float

    @property
    def idle_in_transaction_ms(self) -> int:
        return round(self.stall * 500)

    @property
    def lock_ms(self) -> int:
        return round(self.stall * 500)

    @property
    def statement_ms(self) -> int:
        return round(self.stall * 2000)

    @property
    def tcp_user_ms(self) -> int:
        return round(self.stall * 1000)

    @property
    def keepalive(self) -> tuple[int, int, int]:
        """Idle seconds before the first probe, seconds between probes, and
        unanswered probes before the link counts as dead."""
        idle = max(1, int(self.stall // 2))
        count = 3
        return idle, max(1, int((self.stall - idle) // count)), count

    @property
    def connect_seconds(self) -> int:
        return max(2, math.ceil(self.stall))

    def server_settings(self) -> dict[str, int]:
        """The session settings the server applies (`-c` options)."""
        idle, interval, count = self.keepalive
        return {
            "statement_timeout": self.statement_ms,
            "lock_timeout": self.lock_ms,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_ms,
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": count,
            "tcp_user_timeout": self.tcp_user_ms,
        }

    def connect_params(self) -> dict[str, int]:
        """The libpq connection parameters of the broker's end."""
        idle, interval, count = self.keepalive
        return {
            "connect_timeout": self.connect_seconds,
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": count,
            "tcp_user_timeout": self.tcp_user_ms,
        }


class PostgresqlDatabase(PooledPostgresqlDatabase):
    """A pooled PostgreSQL database that knows its schema (`?schema=` in the
    URL, else `public`), for reading the catalogue of that schema, and the
    timeouts its sessions were opened with.

    Statements whose results nobody reads travel with the next statement,
    in one round trip (`BEGIN; INSERT …; UPDATE … RETURNING …`): a
    transaction's `BEGIN`, and writes sent with `defer`. What is still
    unsent when the transaction commits goes with the `COMMIT`'s round trip
    before it; a transaction that sent nothing sends no `COMMIT` or
    `ROLLBACK` either. An error of a deferred statement is raised by the
    statement it travelled with, inside the same transaction."""

    def __init__(self, *args, schema: str = "public", timeouts: Timeouts, **kwargs):
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.timeouts = timeouts
        self._unsent = threading.local()

    def begin(self, isolation_level=None) -> None:
        if isolation_level is not None or self._isolation_level:
            super().begin(isolation_level)
            return
        # Connected now: connecting resets the transactions under way.
        if self.is_closed():
            self.connect()
        self._unsent.statements = [("BEGIN", ())]

    def defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Inside a transaction: sends `sql` with the next statement."""
        self._pending().append((sql, params))

    def execute_sql(self, sql, params=None):
        pending = self._pending()
        if pending:
            self._unsent.statements = []
            sql = "; ".join([*(text for text, _ in pending), sql])
            params = [value for _, values in pending for value in values] + list(params or ())
        return super().execute_sql(sql, params)

    def commit(self) -> None:
        pending = self._pending()
        if pending == [("BEGIN", ())]:
            self._unsent.statements = []
            return
        if pending:
            last, params = pending.pop()
            self.execute_sql(last, params)
        super().commit()

    def rollback(self) -> None:
        pending = self._pending()
        self._unsent.statements = []
        if not pending or pending[0] != ("BEGIN", ()):
            super().rollback()

    def _pending(self) -> list[tuple[str, Sequence[Any]]]:
        statements = getattr(self._unsent, "statements", None)
        if statements is None:
            statements = self._unsent.statements = []
        return statements

    def _close(self, conn, close_conn=False):
        self._unsent.statements = []
        return super()._close(conn, close_conn)


def open_database(
    url: str, *, base_dir: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT
) -> peewee.Database:
    """Opens the database named by `url`: `sqlite:///relative.db`,
    `sqlite:////absolute.db`, or `postgresql://user[:password]@host[:port]/name`
    with an optional `?schema=NAME`. A relative SQLite path is taken from
    `base_dir`, the directory of the configuration file. On PostgreSQL every
    timeout derives from `stall_timeout` (`Timeouts`)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        if not path:
            raise DatabaseURLError(f"{url!r} names no file (try sqlite:///broker.sqlite3)")
        if path != ":memory:" and not os.path.isabs(path) and base_dir:
            path = os.path.join(base_dir, path)
        return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=30)
    if parsed.scheme in ("postgresql", "postgres"):
        name = unquote(parsed.path.lstrip("/"))
        if not name:
            raise DatabaseURLError(f"{url!r} names no database (try .../test)")
        query = parse_qs(parsed.query)
        schema = query.pop("schema", ["public"])[0]
        if query:
            raise DatabaseURLError(f"{url!r}: unknown parameter {sorted(query)[0]!r}")
        timeouts = Timeouts(stall_timeout)
        settings = {
            **timeouts.server_settings(),
            **({} if schema == "public" else {"search_path": schema}),
        }
        return PostgresqlDatabase(
            name,
            schema=schema,
            timeouts=timeouts,
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            options=" ".join(f"-c {key}={value}" for key, value in settings.items()),
            application_name=f"broker-{os.getpid()}",
            **timeouts.connect_params(),
            max_connections=POOL_SIZE,
            stale_timeout=300,
            timeout=10,
        )
    raise DatabaseURLError(
        f"{url!r}: unsupported scheme {parsed.scheme!r} (supported: sqlite, postgresql)"
    )


def bind(database: peewee.Database) -> None:
    """Points every model at `database`."""
    database_proxy.initialize(database)


def close_database(database: peewee.Database) -> None:
    """Closes this thread's connection, and every pooled one."""
    backend_of(database).close(database)


def schema_key(database: peewee.Database) -> int:
    """The second half of an advisory lock's key: brokers of different
    schemas of one database never wait for each other."""
    return schema_lock_key(getattr(database, "schema", "public"))


def schema_lock_key(schema: str) -> int:
    return zlib.crc32(schema.encode()) - 2**31


def notify_channel(base: str, database: peewee.Database) -> str:
    """The NOTIFY channel `base` of the database's schema. Channels belong to
    the whole database, so brokers serving other schemas of it use channels
    of their own and never wake each other."""
    return schema_channel(base, getattr(database, "schema", "public"))


def schema_channel(base: str, schema: str) -> str:
    return base if schema == "public" else f"{base}_{zlib.crc32(schema.encode()):08x}"
