"""Field types a kind may declare beyond peewee's own."""

from __future__ import annotations

import peewee


class IPAddressField(peewee.CharField):
    """An IPv4 or IPv6 address, stored as text and validated on every write
    through the broker (see `broker.domain.kinds`)."""

    field_type = "VARCHAR"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 45)
        super().__init__(*args, **kwargs)
