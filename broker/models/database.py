"""The database handle, bound late from a URL so one code path serves every backend.

Models are declared against `database_proxy`; `open_database(url)` picks the
backend and `bind()` points the proxy at it.

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

import contextlib
import dataclasses
import math
import os
import threading
import zlib
from collections.abc import Callable, Collection, Iterator
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from broker.models import locks

database_proxy = peewee.DatabaseProxy()

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
    timeouts its sessions were opened with."""

    def __init__(self, *args, schema: str = "public", timeouts: Timeouts, **kwargs):
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.timeouts = timeouts


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


# SQLite runs one write transaction at a time anyway; queueing this process's
# writers on a lock, rather than on SQLite's busy handler (which sleeps and
# retries with growing pauses), keeps the wait as short as the write itself.
_sqlite_writer = threading.RLock()


# The callbacks to run once this thread's outermost write transaction commits.
_commit = threading.local()


@contextlib.contextmanager
def write_transaction(
    *, kinds: Collection[str] | None = None, queue: bool = False
) -> Iterator[None]:
    """One atomic write. On SQLite it takes the write lock up front
    (`BEGIN IMMEDIATE`) so that two writers never deadlock on a lock upgrade,
    and writers of this process take turns on a lock first; on PostgreSQL it
    takes the brokers' advisory locks (`broker.models.locks`): of the
    `kinds` it touches, exclusive for `queue` work, or, with no kinds
    given, the write lock of everything. What `after_commit` registered
    inside it runs once the outermost one commits (nothing if it fails)."""
    database = database_proxy.obj
    outermost = getattr(_commit, "callbacks", None) is None
    if outermost:
        _commit.callbacks = {}
    try:
        if isinstance(database, peewee.SqliteDatabase):
            with _sqlite_writer, database.atomic("IMMEDIATE"):
                locks.take(database, (WRITE_LOCK_KEY, 0), kinds, queue, outermost)
                yield
        else:
            with database.atomic():
                key = (WRITE_LOCK_KEY, schema_key(database))
                locks.take(database, key, kinds, queue, outermost)
                yield
        callbacks = list(_commit.callbacks.values()) if outermost else []
    finally:
        if outermost:
            _commit.callbacks = None
            locks.released()
    for callback in callbacks:
        callback()


def after_commit(key: str, callback: Callable[[], None]) -> bool:
    """Inside a write transaction: runs `callback` once it commits, once per
    `key`; True if `key` is new in this transaction."""
    callbacks = getattr(_commit, "callbacks", None)
    if callbacks is None:
        raise RuntimeError("after_commit outside a write transaction")
    fresh = key not in callbacks
    callbacks.setdefault(key, callback)
    return fresh


def close_database(database: peewee.Database) -> None:
    """Closes this thread's connection, and every pooled one."""
    if isinstance(database, PooledPostgresqlDatabase):
        database.close_all()
    else:
        database.close()


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
