"""Creating and evolving the tables: the broker's own and each configured
kind's. Missing tables and indexes are created; columns a model gained since
the database was made are added, keeping every row. A database that lacks
nothing is left untouched."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from broker.models.backend import backend_of
from broker.models.base import BaseModel
from broker.models.database import (
    LAYOUT_LOCK_KEY,
    PostgresqlDatabase,
    database_proxy,
    schema_key,
)
from broker.models.event import Event
from broker.models.lease import FencingFloor, Lease, LeaseGrant
from broker.models.queue import Waiter, WaiterNeed, index_unindexed
from broker.models.resource import Resource
from broker.models.session import Session
from broker.models.setting import Setting
from broker.models.token import Token

# The layout this broker writes: 1 had resources and leases, 2 added the wait
# queue, sessions and lock-delays, 3 keeps keyed hashes of request ids
# instead of the ids, 4 records leases' and waiters' principals and keeps
# API tokens, 5 gives events their kind and reason and keeps the fencing
# numbers of grants deleted by retention, 6 caps leases' lifetimes, indexes
# active leases by principal (for quotas), and keeps resources' reservation
# ends and reasons, service reasons, failed setups and last grant times, and
# waiters' groups, 7 indexes waiting requests by the kinds and names they
# could use, 8 records when a grant was given back before its lease ended,
# 9 keeps each sub-resource's parent and marks the grants of sub-resources.
# Bump it with every change of the layout.
SCHEMA_VERSION = 9
# The `state` of a waiting request (`broker.domain.values.WaiterState`).
WAITING_STATE = 1
SCHEMA_VERSION_KEY = "schema_version"


class SchemaVersionError(RuntimeError):
    """The database was laid out by a newer broker than this one."""


CORE_MODELS: tuple[type[BaseModel], ...] = (
    Setting,
    Resource,
    Lease,
    LeaseGrant,
    FencingFloor,
    Event,
    Waiter,
    WaiterNeed,
    Session,
    Token,
)


def create_tables(kind_models: Sequence[type[peewee.Model]]) -> None:
    """Creates missing tables and indexes, adds missing columns, and records
    the schema version; refuses a database laid out by a newer broker.

    It reads the catalogue first: on a database already laid out for these
    models at this version it changes nothing and takes no lock, so a broker
    restarting beside others that serve does not wait for, or hold up, their
    transactions. Only what is missing is created, under the layout lock."""
    database = database_proxy.obj
    models = [*CORE_MODELS, *kind_models]
    with database.connection_context():
        version = _check_version(database)
        if version == SCHEMA_VERSION and not _missing(database, models):
            return
        with _layout_lock(database):
            # Read again: another broker may have laid it out meanwhile.
            version = _check_version(database)
            missing = _missing(database, models)
            # Columns first: creating a table's indexes names its new columns.
            _add_columns(missing.columns)
            core = [model for model in missing.tables if model in CORE_MODELS]
            database.create_tables(core, safe=True)
            # A kind's table refers to the resource table by a constraint,
            # which peewee does not order tables by: kinds come after.
            database.create_tables([m for m in missing.tables if m not in core], safe=True)
            if WaiterNeed in missing.tables:
                # Requests queued by a broker that kept no such keys.
                index_unindexed(WAITING_STATE)
            for model in missing.indexed:
                # peewee's stubs omit the model's schema manager.
                model._schema.create_indexes(safe=True)  # type: ignore[attr-defined]
            if version != SCHEMA_VERSION:
                Setting.insert(name=SCHEMA_VERSION_KEY, value=str(SCHEMA_VERSION)).on_conflict(
                    conflict_target=[Setting.name], update={Setting.value: str(SCHEMA_VERSION)}
                ).execute()


class Missing(NamedTuple):
    """What the catalogue lacks: whole tables, columns of existing tables
    (as `(table, field)`), and existing tables short of an index."""

    tables: list[type[peewee.Model]]
    columns: list[tuple[str, peewee.Field]]
    indexed: list[type[peewee.Model]]

    def __bool__(self) -> bool:
        return bool(self.tables or self.columns or self.indexed)


def _missing(database: peewee.Database, models: Sequence[type[peewee.Model]]) -> Missing:
    """Compares the models with the catalogue (tables, columns, indexes)."""
    schema = getattr(database, "schema", None)
    tables = set(database.get_tables(schema=schema))
    missing = Missing([], [], [])
    for model in models:
        table = model._meta.table_name
        if table not in tables:
            missing.tables.append(model)
            continue
        present = {column.name for column in database.get_columns(table, schema=schema)}
        missing.columns.extend(
            (table, field)
            for field in model._meta.sorted_fields
            if field.column_name not in present
        )
        indexes = {index.name for index in database.get_indexes(table, schema=schema)}
        if any(
            _index_name(database, index) not in indexes for index in model._meta.fields_to_index()
        ):
            missing.indexed.append(model)
    return missing


def _index_name(database: peewee.Database, index: peewee.Node) -> str | None:
    """The name the catalogue lists an index under (PostgreSQL cuts names
    to 63 bytes); None for an index declared as raw SQL, which is then
    always created anew (`IF NOT EXISTS`)."""
    name = getattr(index, "_name", None)
    return None if name is None else backend_of(database).index_name(name)


@contextlib.contextmanager
def _layout_lock(database: peewee.Database) -> Iterator[None]:
    """On PostgreSQL, brokers starting together lay out the tables one at a
    time, in one transaction each (SQLite has one broker). The wait for the
    layout lock is as long as a statement may take (only starting brokers
    take it); the changes themselves wait for a table lock only as long as
    any lock (`Timeouts.lock_ms`), since traffic queues behind them."""
    if not backend_of(database).shared:
        yield
        return
    database = typing.cast(PostgresqlDatabase, database)
    with database.atomic():
        database.execute_sql(f"SET LOCAL lock_timeout = {database.timeouts.statement_ms}")
        database.execute_sql(
            "SELECT pg_advisory_xact_lock(%s, %s)", (LAYOUT_LOCK_KEY, schema_key(database))
        )
        database.execute_sql("SET LOCAL lock_timeout TO DEFAULT")
        yield


def _check_version(database: peewee.Database) -> int | None:
    """The recorded schema version (None before any); refuses a newer one."""
    schema = getattr(database, "schema", None)
    if Setting._meta.table_name not in database.get_tables(schema=schema):
        return None
    row = Setting.get_or_none(Setting.name == SCHEMA_VERSION_KEY)
    if row is None:
        return None
    if int(row.value) > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database's schema is version {row.value}, newer than this broker's "
            f"{SCHEMA_VERSION}: run a broker at least as new as the one that wrote it"
        )
    return int(row.value)


def _add_columns(columns: Sequence[tuple[str, peewee.Field]]) -> None:
    if not columns:
        return
    migrator = SchemaMigrator.from_database(database_proxy.obj)
    with database_proxy.obj.atomic():
        migrate(*(migrator.add_column(table, field.column_name, field) for table, field in columns))
