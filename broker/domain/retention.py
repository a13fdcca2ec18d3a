"""Retention: the periodic deletion of what ended long ago (events, ended
leases, requests that left the queue, ended sessions), so that tables stop
growing. Each sweep makes at most a given number of small transactions per
table, so it holds the write lock briefly and its work is bounded whatever
the tables hold."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from broker.domain.events import PRUNE_BATCH, EventLog
from broker.domain.values import LeaseState, SessionState, WaiterState
from broker.models import lease as lease_model
from broker.models import queue as queue_model
from broker.models import session as session_model
from broker.models.transactions import write_transaction

_ENDED_LEASES = (LeaseState.RELEASED, LeaseState.EXPIRED, LeaseState.REVOKED)
_ENDED_WAITERS = (WaiterState.GRANTED, WaiterState.CANCELLED, WaiterState.TIMED_OUT)
_ENDED_SESSIONS = (SessionState.CLOSED, SessionState.EXPIRED)


@dataclasses.dataclass(frozen=True)
class Ages:
    """How long, in seconds, each kind of row is kept after it ended."""

    events: float
    leases: float
    waiters: float
    sessions: float


class Retention:
    """Deletes rows older than their age, in bounded batches."""

    def __init__(self, events: EventLog, ages: Ages, clock: Callable[[], float] = time.time):
        self.events = events
        self.ages = ages
        self.clock = clock

    def sweep(self, batches: int) -> dict[str, int]:
        """One sweep: at most `batches` transactions of `PRUNE_BATCH` rows per
        table; returns how many rows of each went. It is not marked
        `@writes`: on SQLite it runs beside the writer and its transactions
        take turns with the writer's groups, instead of holding up one group
        for the whole sweep."""
        return {
            "events": self.events.prune(self.ages.events, batches),
            "leases": self._delete(
                lease_model.delete_ended_leases, _ENDED_LEASES, self.ages.leases, batches
            ),
            "waiters": self._delete(
                queue_model.delete_ended_waiters, _ENDED_WAITERS, self.ages.waiters, batches
            ),
            "sessions": self._delete(
                session_model.delete_ended_sessions, _ENDED_SESSIONS, self.ages.sessions, batches
            ),
        }

    def _delete(
        self,
        delete: Callable[[Sequence[int], float, int], int],
        states: Sequence[int],
        age: float,
        batches: int,
    ) -> int:
        deleted = 0
        for _ in range(batches):
            with write_transaction():
                count = delete([int(state) for state in states], self.clock() - age, PRUNE_BATCH)
            deleted += count
            if count < PRUNE_BATCH:
                break
        return deleted
