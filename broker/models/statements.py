"""Running hand-written SQL on the hot path of acquire and release.

Building a query with peewee costs about ten times what SQLite takes to run
it, and an acquire-release cycle runs a dozen statements. The statements of
that path are therefore written once as text with `?` placeholders (adapted to
the bound backend's parameter style on first use, then cached), and their rows
are turned into model instances with the fields' own conversions. Everything
off the hot path keeps using peewee queries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, TypeVar

import peewee

from broker.models.database import database_proxy

M = TypeVar("M", bound=peewee.Model)


@functools.lru_cache(maxsize=512)
def _adapted(sql: str, param: str) -> str:
    return sql if param == "?" else sql.replace("?", param)


def run(sql: str, params: Sequence[Any] = ()):
    """Executes `sql` (with `?` placeholders) on the bound database; returns
    the cursor."""
    database = database_proxy.obj
    return database.execute_sql(_adapted(sql, database.param), params)


def run_later(sql: str, params: Sequence[Any] = ()) -> None:
    """Executes `sql`, whose result nobody reads, inside a write transaction:
    where the backend can (PostgreSQL, `PostgresqlDatabase.defer`), with the
    transaction's next statement, one round trip fewer; else now."""
    database = database_proxy.obj
    defer = getattr(database, "defer", None)
    if defer is None:
        database.execute_sql(_adapted(sql, database.param), params)
    else:
        defer(_adapted(sql, database.param), params)


def marks(count: int) -> str:
    """`?, ?, ?` for `count` parameters."""
    return ", ".join("?" * count)


def quoted(name: str) -> str:
    return f'"{name}"'


@functools.cache
def columns_of(model: type[peewee.Model]) -> tuple[peewee.Field, ...]:
    """The model's fields in table order."""
    return tuple(model._meta.sorted_fields)


@functools.cache
def column_list(model: type[peewee.Model], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{quoted(f.column_name)}" for f in columns_of(model))


def instance(model: type[M], row: Sequence[Any]) -> M:
    """A model instance from a row of `column_list(model)`'s values."""
    fields = columns_of(model)
    return model(
        **{
            field.name: (None if value is None else field.python_value(value))
            for field, value in zip(fields, row, strict=True)
        }
    )


@functools.cache
def insert_sql(model: type[peewee.Model], rows: int) -> str:
    """`INSERT` of `rows` full rows (every column but an auto-increment key)."""
    fields = [f for f in columns_of(model) if not isinstance(f, peewee.AutoField)]
    names = ", ".join(quoted(f.column_name) for f in fields)
    values = ", ".join(f"({marks(len(fields))})" for _ in range(rows))
    return f"INSERT INTO {quoted(model._meta.table_name)} ({names}) VALUES {values}"


def insert_params(model: type[peewee.Model], rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The parameters of `insert_sql(model, len(rows))`, converted as the
    fields do."""
    fields = [f for f in columns_of(model) if not isinstance(f, peewee.AutoField)]
    return [field.db_value(row[field.name]) for row in rows for field in fields]


def insert_rows(model: type[peewee.Model], rows: Sequence[dict[str, Any]]):
    """Inserts rows given as field-name dicts (every field but an
    auto-increment key), converting values as the fields do; returns the
    cursor (None for no rows)."""
    if not rows:
        return None
    return run(insert_sql(model, len(rows)), insert_params(model, rows))


def insert_rows_later(model: type[peewee.Model], rows: Sequence[dict[str, Any]]) -> None:
    """`insert_rows`, sent with the transaction's next statement (`run_later`)."""
    if rows:
        run_later(insert_sql(model, len(rows)), insert_params(model, rows))
