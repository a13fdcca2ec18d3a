"""Broker-wide settings kept in the database: the key lease secrets are
derived from, and the schema version."""

from __future__ import annotations

import secrets

import peewee

from broker.models.base import BaseModel

SECRET_KEY = "lease_secret_key"


class Setting(BaseModel):
    """One named value."""

    name = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.TextField()


def secret_key() -> bytes:
    """The key of this database's lease secrets, made on first use. Every
    broker sharing the database derives the same secrets from it."""
    row = Setting.get_or_none(Setting.name == SECRET_KEY)
    if row is None:
        Setting.insert(name=SECRET_KEY, value=secrets.token_hex(32)).on_conflict_ignore().execute()
        row = Setting.get(Setting.name == SECRET_KEY)
    return bytes.fromhex(row.value)
