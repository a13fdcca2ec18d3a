"""The base of every stored model: it only carries the database binding."""

from __future__ import annotations

import peewee

from broker.models.database import database_proxy


class BaseModel(peewee.Model):
    """Binds models to the late-initialised database; table names are
    snake_case (`lease_grant`)."""

    class Meta:
        database = database_proxy
        legacy_table_names = False
