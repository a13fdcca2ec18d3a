"""Storage of sessions: a client's keep-alive stream, with the deadline that
its keep-alives push forward."""

from __future__ import annotations

from collections.abc import Sequence

import peewee

from broker.models import statements
from broker.models.backend import backend_of
from broker.models.base import BaseModel


class Session(BaseModel):
    """A session; `state` holds `broker.domain.values.SessionState` numbers."""

    id = peewee.CharField(max_length=36, primary_key=True)
    holder = peewee.CharField(max_length=128, default="")
    keepalive_timeout = peewee.DoubleField()
    state = peewee.SmallIntegerField()
    create_time = peewee.DoubleField()
    expire_time = peewee.DoubleField()
    end_time = peewee.DoubleField(null=True)
    end_reason = peewee.TextField(default="")

    class Meta:
        indexes = ((("state", "expire_time"), False),)


def orphaned_sessions(open_state: int, now: float) -> list[Session]:
    """Open sessions silent for twice their timeout: the broker holding their
    stream would have ended them after one, so it is gone."""
    cursor = statements.run(
        f'SELECT {statements.column_list(Session)} FROM "session"'
        ' WHERE "state" = ? AND "expire_time" + "keepalive_timeout" <= ?',
        [open_state, now],
    )
    return [statements.instance(Session, row) for row in cursor.fetchall()]


def detach_leases(session_id: str, active_state: int) -> None:
    """Unbinds a session's active leases, which then live by their TTL."""
    statements.run(
        'UPDATE "lease" SET "session_id" = NULL WHERE "session_id" = ? AND "state" = ?',
        [session_id, active_state],
    )


def lease_ids_of(session_id: str, active_state: int) -> list[str]:
    """The active leases bound to a session."""
    cursor = statements.run(
        'SELECT "id" FROM "lease" WHERE "session_id" = ? AND "state" = ?',
        [session_id, active_state],
    )
    return [row[0] for row in cursor.fetchall()]


def end_session(session_id: str, state: int, now: float, reason: str) -> None:
    statements.run(
        'UPDATE "session" SET "state" = ?, "end_time" = ?, "end_reason" = ? WHERE "id" = ?',
        [state, now, reason, session_id],
    )


def lock_session(session_id: str) -> Session | None:
    """Reads a session for change (locked on PostgreSQL)."""
    query = Session.select().where(Session.id == session_id)
    if backend_of(Session._meta.database).row_locks:
        query = query.for_update()
    return query.first()


def keep_alive(session_id: str, expire_time: float, now: float, active_state: int) -> None:
    """Moves a session's expiry and renews its active leases by their TTL,
    none past its maximum lifetime (with the transaction's next statement)."""
    statements.run_later(
        'UPDATE "session" SET "expire_time" = ? WHERE "id" = ?', [expire_time, session_id]
    )
    statements.run_later(
        'UPDATE "lease" SET "expire_time" = CASE WHEN "max_expire_time" < ? + "ttl"'
        ' THEN "max_expire_time" ELSE ? + "ttl" END WHERE "session_id" = ? AND "state" = ?',
        [now, now, session_id, active_state],
    )


def delete_ended_sessions(ended_states: Sequence[int], cutoff: float, limit: int) -> int:
    """Inside a write transaction: deletes up to `limit` sessions in
    `ended_states` that ended before `cutoff`; returns how many. The (state,
    expire_time) index bounds the read: a session closed before its
    deadline, or expired after it."""
    ids = [
        row.id
        for row in Session.select(Session.id)
        .where(
            Session.state.in_(list(ended_states)),
            Session.expire_time < cutoff,
            Session.end_time < cutoff,
        )
        .limit(limit)
    ]
    if ids:
        Session.delete().where(Session.id.in_(ids)).execute()
    return len(ids)


def count_in_state(state: int) -> int:
    """How many sessions are in `state`."""
    return Session.select().where(Session.state == state).count()
