"""The base of a kind's data, declared as in the Rotest tutorial, shared by
the SDK (each leased resource's `data`) and the server (the kind's table).
It imports only peewee, so a client needs no database driver.

    class CalculatorData(ResourceData):
        '''A calculator reachable over RPyC.'''
        ip_address = IPAddressField(help_text="Where its RPyC service listens.")

The kind's name is the class name without its `Data` suffix (`Calculator`)
unless `KIND` says otherwise. `OWNABLE = False` makes a kind whose resources
any number of leases may hold at once. `LOCK_DELAY` (seconds) keeps a
resource out of reach that long after its holder vanished instead of
releasing it, for devices that cannot check fencing numbers. Fields are
peewee fields of the types `broker.domain.kinds` knows; `help_text`
documents them over the API, `null=True` or a `default` makes them optional.
"""

from __future__ import annotations

from typing import ClassVar

import peewee

# The database every stored model, each kind's table included, is bound to;
# only the server initialises it (`broker.models.database.bind`).
database_proxy = peewee.DatabaseProxy()


class IPAddressField(peewee.CharField):
    """An IPv4 or IPv6 address, stored as text and validated on every write
    through the broker (see `broker.domain.kinds`)."""

    field_type = "VARCHAR"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 45)
        super().__init__(*args, **kwargs)


class ResourceData(peewee.Model):
    """Base of a kind's typed fields; each row belongs to one resource (the
    server's `resource` table), and goes with it when it is deleted."""

    OWNABLE: ClassVar[bool] = True
    KIND: ClassVar[str | None] = None
    LOCK_DELAY: ClassVar[float] = 0.0

    # The id of the resource the row belongs to: its key, and a foreign key
    # to the resource table, declared as a constraint so that this module
    # needs none of the server's models.
    resource = peewee.IntegerField(primary_key=True, column_name="resource_id")

    class Meta:
        database = database_proxy
        legacy_table_names = False
        constraints = [
            peewee.SQL('FOREIGN KEY ("resource_id") REFERENCES "resource" ("id") ON DELETE CASCADE')
        ]

    @classmethod
    def kind_name(cls) -> str:
        """The name clients use for this kind."""
        if cls.KIND:
            return cls.KIND
        name = cls.__name__
        return name[: -len("Data")] if name.endswith("Data") and len(name) > 4 else name
