"""Creating the tables: the broker's own and each configured kind's."""

from __future__ import annotations

from collections.abc import Sequence

from broker.models.base import BaseModel
from broker.models.database import database_proxy
from broker.models.event import Event
from broker.models.lease import Lease, LeaseGrant
from broker.models.resource import Resource

CORE_MODELS: tuple[type[BaseModel], ...] = (Resource, Lease, LeaseGrant, Event)


def create_tables(kind_models: Sequence[type[BaseModel]]) -> None:
    """Creates missing tables and indexes; existing ones are left as they are."""
    with database_proxy.obj.connection_context():
        database_proxy.obj.create_tables([*CORE_MODELS, *kind_models], safe=True)
