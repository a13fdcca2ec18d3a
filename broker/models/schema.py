"""Creating and evolving the tables: the broker's own and each configured
kind's. Missing tables are created; columns a model gained since the
database was made are added, keeping every row."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from broker.models.base import BaseModel
from broker.models.database import LAYOUT_LOCK_KEY, database_proxy, schema_key
from broker.models.event import Event
from broker.models.lease import Lease, LeaseGrant
from broker.models.queue import Waiter
from broker.models.resource import Resource
from broker.models.session import Session
from broker.models.setting import Setting

# The layout this broker writes: 1 had resources and leases, 2 added the wait
# queue, sessions and lock-delays. Bump it with every change of the layout.
SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "schema_version"


class SchemaVersionError(RuntimeError):
    """The database was laid out by a newer broker than this one."""


CORE_MODELS: tuple[type[BaseModel], ...] = (
    Setting,
    Resource,
    Lease,
    LeaseGrant,
    Event,
    Waiter,
    Session,
)


def create_tables(kind_models: Sequence[type[BaseModel]]) -> None:
    """Creates missing tables and indexes, adds missing columns, and records
    the schema version; refuses a database laid out by a newer broker."""
    database = database_proxy.obj
    models = [*CORE_MODELS, *kind_models]
    with database.connection_context(), _layout_lock(database):
        _check_version(database)
        # Columns first: creating a table's indexes names its new columns.
        _add_missing_columns(database, models)
        database.create_tables(models, safe=True)
        Setting.insert(name=SCHEMA_VERSION_KEY, value=str(SCHEMA_VERSION)).on_conflict(
            conflict_target=[Setting.name], update={Setting.value: str(SCHEMA_VERSION)}
        ).execute()


@contextlib.contextmanager
def _layout_lock(database: peewee.Database) -> Iterator[None]:
    """On PostgreSQL, brokers starting together lay out the tables one at a
    time, in one transaction each (SQLite has one broker)."""
    if isinstance(database, peewee.SqliteDatabase):
        yield
        return
    with database.atomic():
        database.execute_sql(
            "SELECT pg_advisory_xact_lock(%s, %s)", (LAYOUT_LOCK_KEY, schema_key(database))
        )
        yield


def _check_version(database: peewee.Database) -> None:
    schema = getattr(database, "schema", None)
    if Setting._meta.table_name not in database.get_tables(schema=schema):
        return
    row = Setting.get_or_none(Setting.name == SCHEMA_VERSION_KEY)
    if row is not None and int(row.value) > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database's schema is version {row.value}, newer than this broker's "
            f"{SCHEMA_VERSION}: run a broker at least as new as the one that wrote it"
        )


def _add_missing_columns(database: peewee.Database, models: Sequence[type[BaseModel]]) -> None:
    migrator = SchemaMigrator.from_database(database)
    schema = getattr(database, "schema", None)
    tables = set(database.get_tables(schema=schema))
    operations = []
    for model in models:
        table = model._meta.table_name
        if table not in tables:
            continue
        present = {column.name for column in database.get_columns(table, schema=schema)}
        for field in model._meta.sorted_fields:
            if field.column_name not in present:
                operations.append(migrator.add_column(table, field.column_name, field))
    if operations:
        with database.atomic():
            migrate(*operations)
