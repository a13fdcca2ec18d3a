"""Storage of events: every change to a resource or lease, in commit order.

Events are written in the same transaction as the change they record, and an
event's id is its `sequence` in the audit trail. A watcher that has read
every event up to N and later asks for those after N must never miss one
that commits after its read with an id of N or less. That holds because ids
are assigned in commit order:

- Every transaction that records events is a `transactions.write_transaction`.
  On SQLite only one runs at a time (the database's write lock, taken up
  front). On PostgreSQL writers about different resources run at once, so
  each one takes the event lock (`locks.EVENT_LOCK_KEY`, exclusive) right
  before its first insert of events and holds it until it has committed:
  the id sequence (`nextval`, called by the insert, after the lock) hands
  out larger ids to a transaction that takes the lock later, and a
  transaction is visible to readers before the next one can take the lock.
  Events are the last thing a transaction writes, so the lock is held for
  the insert and the commit only. Ids rolled back leave gaps, which readers
  simply skip. A writer of events that skipped the lock would break it.
- Ids never go back: PostgreSQL's sequence never does, and on SQLite (where
  an id is one more than the largest stored) retention always keeps the
  newest event, so the largest id stays stored.

Retention deletes the oldest events in batches and records the largest
sequence it deleted (`pruned_through`), so a cursor older than that is known
to have lost events. After each commit that recorded events, the callbacks
given to `on_commit` run in this process (to wake its watchers), and on
PostgreSQL a NOTIFY on `CHANNEL`, carrying the newest id, wakes the watchers
of every broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import peewee

from broker.models import locks, statements
from broker.models.backend import backend_of
from broker.models.base import BaseModel
from broker.models.database import database_proxy, notify_channel, schema_key
from broker.models.setting import Setting
from broker.models.transactions import after_commit

CHANNEL = "broker_events"
PRUNED_KEY = "events_pruned_through"


class Event(BaseModel):
    """One change: `type` is a `broker.domain.values.EventType` value."""

    id = peewee.AutoField()
    time = peewee.DoubleField()
    type = peewee.CharField(max_length=32)
    resource = peewee.CharField(max_length=128, default="", index=True)
    lease_id = peewee.CharField(max_length=36, default="", index=True)
    fencing_token = peewee.BigIntegerField(default=0)
    actor = peewee.CharField(max_length=128, default="")
    detail = peewee.TextField(default="")
    kind = peewee.CharField(max_length=128, default="")
    reason = peewee.TextField(default="")


_listeners: list[Callable[[int], None]] = []
_listeners_lock = threading.Lock()
# The newest id this thread's write transaction recorded.
_newest = threading.local()


def on_commit(callback: Callable[[int], None]) -> Callable[[], None]:
    """Calls `callback` with the newest id (on the committing thread) after
    every commit of this process that recorded events; returns what stops
    it."""
    return _listen(_listeners, callback)


# What `on_commit_types` hands over of each event: its type, kind and
# detail (JSON text, or "").
Recorded = tuple[str, str, str]
_type_listeners: list[Callable[[list[Recorded]], None]] = []


def on_commit_types(callback: Callable[[list[Recorded]], None]) -> Callable[[], None]:
    """Calls `callback` with the type, kind and detail of each event, on
    the committing thread, after every commit of this process that recorded
    events; returns what stops it."""
    return _listen(_type_listeners, callback)


def _listen(listeners: list, callback: Callable) -> Callable[[], None]:
    with _listeners_lock:
        listeners.append(callback)

    def stop() -> None:
        with _listeners_lock:
            if callback in listeners:
                listeners.remove(callback)

    return stop


def _committed() -> None:
    newest, _newest.id = _newest.id, 0
    types, _newest.types = getattr(_newest, "types", []), []
    with _listeners_lock:
        listeners = list(_listeners)
        type_listeners = list(_type_listeners)
    for callback in listeners:
        callback(newest)
    for counted in type_listeners:
        counted(types)


def record(rows: Iterable[dict]) -> None:
    """Stores events given as field dicts (every field but `id`), inside the
    write transaction of their change."""
    rows = list(rows)
    if not rows:
        return
    database = database_proxy.obj
    first = after_commit(CHANNEL, _committed)
    if first:
        _newest.id, _newest.types = 0, []
    _newest.types.extend((row["type"], row.get("kind", ""), row.get("detail", "")) for row in rows)
    if not backend_of(database).notifies:
        newest = statements.insert_rows(Event, rows).lastrowid
    else:
        # One round trip: the event lock (the transaction's first events
        # only), the insert, and a NOTIFY whose payload is the newest id
        # inserted, so that a broker whose feed has read that far already
        # skips the wake-up.
        lock, lock_params = locks.event_lock(schema_key(database)) if first else ("", [])
        newest = statements.run(
            f"{lock}{statements.insert_sql(Event, len(rows))};"
            " SELECT lastval(), pg_notify(?, lastval()::text)",
            [
                *lock_params,
                *statements.insert_params(Event, rows),
                notify_channel(CHANNEL, database),
            ],
        ).fetchone()[0]
    _newest.id = max(_newest.id, newest)


def list_events(
    after: int,
    limit: int,
    *,
    upto: int | None = None,
    resource: str = "",
    kind: str = "",
    lease_id: str = "",
    actor: str = "",
    types: Sequence[str] = (),
    start_time: float | None = None,
    end_time: float | None = None,
) -> list[Event]:
    """Up to `limit` events with an id above `after` (and at most `upto`)
    that match every filter given, oldest first."""
    conditions = [Event.id > after]
    if upto is not None:
        conditions.append(Event.id <= upto)
    for field, value in (
        (Event.resource, resource),
        (Event.kind, kind),
        (Event.lease_id, lease_id),
        (Event.actor, actor),
    ):
        if value:
            conditions.append(field == value)
    if types:
        conditions.append(Event.type.in_(list(types)))
    if start_time is not None:
        conditions.append(Event.time >= start_time)
    if end_time is not None:
        conditions.append(Event.time < end_time)
    return list(Event.select().where(*conditions).order_by(Event.id).limit(limit))


def latest_sequence() -> int:
    """The largest id stored, 0 if none."""
    return Event.select(peewee.fn.MAX(Event.id)).scalar() or 0


def oldest_sequence() -> int:
    """The smallest id stored, 0 if none."""
    return Event.select(peewee.fn.MIN(Event.id)).scalar() or 0


def pruned_through() -> int:
    """The largest id retention has deleted, 0 if none."""
    row = Setting.get_or_none(Setting.name == PRUNED_KEY)
    return int(row.value) if row is not None else 0


def delete_older(cutoff: float, limit: int) -> int:
    """Inside a write transaction: of the `limit` oldest events, deletes those
    recorded before `cutoff`, never the newest event; returns how many. It
    reads at most `limit` rows, by the primary key, whatever the table holds."""
    newest = latest_sequence()
    oldest = Event.select(Event.id, Event.time).order_by(Event.id).limit(limit)
    ids = [row.id for row in oldest if row.time < cutoff and row.id < newest]
    if not ids:
        return 0
    Event.delete().where(Event.id.in_(ids)).execute()
    through = str(max(max(ids), pruned_through()))
    Setting.insert(name=PRUNED_KEY, value=through).on_conflict(
        conflict_target=[Setting.name], update={Setting.value: through}
    ).execute()
    return len(ids)


def end_times(lease_ids: Sequence[str], types: Sequence[str]) -> dict[tuple[str, str], float]:
    """When each (lease, resource) of these leases ended, by an event of
    one of `types`."""
    ends: dict[tuple[str, str], float] = {}
    ids = list(dict.fromkeys(lease_ids))
    for start in range(0, len(ids), 500):
        # `.tuples()` rows are plain tuples; peewee's stubs keep the model type.
        rows = cast(
            "Iterable[tuple[str, str, float]]",
            Event.select(Event.lease_id, Event.resource, Event.time)
            .where(Event.lease_id.in_(ids[start : start + 500]), Event.type.in_(list(types)))
            .tuples(),
        )
        for lease_id, resource, time in rows:
            ends[(lease_id, resource)] = time
    return ends
