"""Storage of events: every change to a resource or lease, in commit order.

Events are written in the same transaction as the change they record, so
their ids give a total order that matches what really happened.
"""

from __future__ import annotations

from collections.abc import Iterable

import peewee

from broker.models import statements
from broker.models.base import BaseModel


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


def record(rows: Iterable[dict]) -> None:
    """Stores events given as field dicts (every field but `id`)."""
    statements.insert_rows(Event, list(rows))
