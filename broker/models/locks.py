"""The advisory locks that order the brokers' writes on PostgreSQL, so that
writes about different things never wait for each other.

Ownership itself is guarded by conditional updates (`broker.models.lease`);
these locks keep the queue's promises across transactions that run at once.
Every write transaction takes one of three levels, all transaction-scoped
and keyed by the schema as well:

- `ROWS`: the global write lock shared, nothing else; for writes that touch
  only rows they lock themselves (renewals, keep-alives).
- `SHARED`: the global write lock shared and each kind's lock shared, for
  acquires and releases of those kinds while nobody waits: they never wait
  for each other.
- `QUEUE`: the global write lock shared and each kind's lock exclusive, for
  queue work on those kinds (enqueueing a waiter). It waits for the writes
  of those kinds under way, and decides after them, so a release committed
  before it is seen by its plan, and one after it sees its waiter.
- `EVERYTHING`: the global write lock exclusive, which waits for every other
  write: a queue pass over the whole queue, and every write that does not
  say what it touches (the inventory, tokens, retention).

A transaction that finds it needs more than it took (a release that meets a
waiter, an acquire that has to wait) raises `Escalate`; the domain's retry
(`broker.domain.races`) runs the operation again from the start at the
level asked for: a transaction-scoped lock cannot be upgraded. Several kind
locks are taken in the order of their keys, so two transactions never wait
for each other's. Events take one more lock, `EVENT_LOCK_KEY`, exclusive,
just before their insert (`broker.models.event`). On SQLite every lock here
is a no-op and every level counts as held: its one writer serialises all.
"""

from __future__ import annotations

import enum
import threading
import zlib
from collections.abc import Collection, Iterable

import peewee

from broker.models.backend import backend_of

# The key of a kind's lock is this xor the CRC-32 of its name.
QUEUE_KEY = 0x71756575  # "queu"
# Held from an event's insert until its transaction ends.
EVENT_LOCK_KEY = 0x6576656E  # "even"


class Level(enum.IntEnum):
    """How much a write transaction locks, in growing order."""

    ROWS = 0
    SHARED = 1
    QUEUE = 2
    EVERYTHING = 3


class Escalate(Exception):
    """The transaction needs locks it did not take: run it again at `level`,
    over `kinds` as well as its own."""

    def __init__(self, level: Level, why: str, kinds: Iterable[str] = ()):
        super().__init__(f"needs {level.name} locks: {why}")
        self.level = level
        self.kinds = frozenset(kinds)


class _Held(threading.local):
    # What this thread's write transaction holds; None outside one.
    level: Level | None = None
    kinds: frozenset[str] = frozenset()
    # The least level the next attempt of an operation must take, and the
    # kinds it must lock besides its own.
    floor: Level = Level.ROWS
    floor_kinds: frozenset[str] = frozenset()


_held = _Held()

# Each kind's relatives in trees of sub-resources (`relate`).
_related: dict[str, frozenset[str]] = {}


def relate(families: dict[str, frozenset[str]]) -> None:
    """Names, for each kind in a tree of sub-resources, the kinds whose
    grants change what it may be granted (its parents' and sub-resources'):
    a lock of a kind covers them all, so that a release of a sub-resource
    and a request waiting for its parent see each other."""
    closed = {kind: set(related) | {kind} for kind, related in families.items()}
    changed = True
    while changed:
        # Relatives of relatives: one lock set for a whole tree.
        changed = False
        for related in closed.values():
            wider = related.union(*(closed.get(kind, ()) for kind in related))
            if wider != related:
                related |= wider
                changed = True
    _related.clear()
    _related.update({kind: frozenset(related) for kind, related in closed.items()})


def _covering(kinds: Iterable[str]) -> frozenset[str]:
    kinds = frozenset(kinds)
    if not _related:
        return kinds
    return kinds.union(*(_related.get(kind, ()) for kind in kinds))


def by_kind(database: peewee.Database) -> bool:
    """Whether writes on `database` lock by kind (PostgreSQL), so that a
    transaction must know its kinds before it begins."""
    return backend_of(database).kind_locks


def kind_key(kind: str) -> int:
    """The first half of a kind lock's key, a signed 32-bit integer."""
    value = QUEUE_KEY ^ zlib.crc32(kind.encode())
    return value - 2**32 if value >= 2**31 else value


def level_of(kinds: Collection[str] | None, queue: bool) -> Level:
    """The level a transaction asks for: None kinds is everything."""
    if kinds is None:
        return Level.EVERYTHING
    if not kinds:
        return Level.ROWS
    return Level.QUEUE if queue else Level.SHARED


def take(
    database: peewee.Database,
    write_key: tuple[int, int],
    kinds: Collection[str] | None,
    queue: bool,
    outermost: bool = True,
) -> None:
    """Inside a new write transaction: takes its locks, at least at the
    floor an escalation set, in one statement (PostgreSQL only). A nested
    one takes nothing more: it needs no more than the outermost holds."""
    if not outermost:
        require(level_of(kinds, queue), kinds or (), "a nested write asks for more")
        return
    level = max(level_of(kinds, queue), _held.floor)
    _held.level, _held.kinds = level, _covering(kinds or ()) | _held.floor_kinds
    if not backend_of(database).kind_locks:
        _held.level = Level.EVERYTHING
        return
    write, schema = write_key
    if level == Level.EVERYTHING:
        database.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", (write, schema))
        return
    function = "pg_advisory_xact_lock" if level == Level.QUEUE else "pg_advisory_xact_lock_shared"
    keys = sorted({kind_key(kind) for kind in _held.kinds})
    calls = ["pg_advisory_xact_lock_shared(%s, %s)", *(f"{function}(%s, %s)" for _ in keys)]
    params: list[int] = [write, schema]
    for key in keys:
        params.extend((key, schema))
    database.execute_sql(f"SELECT {', '.join(calls)}", params)


def released() -> None:
    """The write transaction ended."""
    _held.level, _held.kinds = None, frozenset()


def holds(level: Level, kinds: Iterable[str] = ()) -> bool:
    """Whether this thread's transaction holds `level` over `kinds`."""
    held = _held.level
    kinds = set(_covering(kinds))
    if held is None:
        return False
    if held == Level.EVERYTHING or (level <= Level.SHARED and not kinds):
        return True
    return held >= level and (level == Level.ROWS or _held.kinds.issuperset(kinds))


def require(level: Level, kinds: Iterable[str] = (), why: str = "") -> None:
    """Raises `Escalate` unless the transaction holds `level` over `kinds`."""
    kinds = set(_covering(kinds))
    if holds(level, kinds):
        return
    held = Level.ROWS if _held.level is None else _held.level
    raise Escalate(max(level, held), why or "more than it took", _held.kinds | kinds)


def raise_floor(escalation: Escalate) -> None:
    """The next attempt of this thread's operation takes at least what
    `escalation` asked for."""
    _held.floor = max(_held.floor, escalation.level)
    _held.floor_kinds |= escalation.kinds


def reset_floor() -> None:
    _held.floor, _held.floor_kinds = Level.ROWS, frozenset()


def event_lock(schema: int) -> tuple[str, list[int]]:
    """The statement (with `?` marks) that takes the event lock, to send
    right before inserting events (PostgreSQL only): ids are handed out,
    and their transactions commit, in the order the lock is taken."""
    return "SELECT pg_advisory_xact_lock(?, ?); ", [EVENT_LOCK_KEY, schema]
