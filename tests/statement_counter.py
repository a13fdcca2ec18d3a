"""Counting the statements a block sends to the database, round trips
included: every `BEGIN`, `COMMIT`, `SAVEPOINT` and query passes through the
bound database's cursors, so a cursor that counts what it executes sees them
all, on either backend."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

import peewee


@dataclasses.dataclass
class Counted:
    """What a block executed, in order (only the calling thread's)."""

    statements: list[str] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def __str__(self) -> str:
        return "\n".join(f"{i + 1:>3}. {sql[:160]}" for i, sql in enumerate(self.statements))


class _CountingCursor:
    def __init__(self, cursor, counted: Counted):
        self._cursor = cursor
        self._counted = counted

    def execute(self, sql, params=None):
        self._counted.statements.append(" ".join(str(sql).split()))
        return self._cursor.execute(sql) if params is None else self._cursor.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __iter__(self):
        return iter(self._cursor)


@contextlib.contextmanager
def counting(database: peewee.Database) -> Iterator[Counted]:
    """Counts the statements this thread sends to `database` inside the block."""
    counted = Counted()
    thread = threading.get_ident()
    original = database.cursor

    def cursor(*args, **kwargs):
        real = original(*args, **kwargs)
        return _CountingCursor(real, counted) if threading.get_ident() == thread else real

    database.cursor = cursor  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        del database.cursor
