"""Tables evolve on start-up: a column a model gained since the database was
made is added, and every row is kept; a missing index is created. On a
database that lacks nothing, start-up changes nothing and takes no lock:
the statements it sends (peewee logs each one) are all reads."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import peewee
import pytest

from broker.kind_data import ResourceData
from broker.models.resource import Resource
from broker.models.schema import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SchemaVersionError,
    create_tables,
)
from broker.models.setting import Setting


class GaugeData(ResourceData):
    """A gauge as first declared."""

    KIND = "Gauge"

    serial = peewee.CharField(max_length=32)

    class Meta:
        table_name = "gauge_data"


class GaugeDataV2(ResourceData):
    """The same kind, later, with two more fields."""

    KIND = "Gauge"

    serial = peewee.CharField(max_length=32)
    range_max = peewee.FloatField(null=True)
    unit = peewee.CharField(max_length=8, default="bar", index=True)

    class Meta:
        table_name = "gauge_data"


def test_a_kind_gaining_fields_gains_columns_and_keeps_rows(database):
    create_tables([GaugeData])
    resource = Resource.create(name="g1", kind="Gauge", create_time=1.0, update_time=1.0)
    GaugeData.insert(resource=resource.id, serial="A-1").execute()

    create_tables([GaugeDataV2])
    create_tables([GaugeDataV2])  # a second start changes nothing

    columns = {column.name for column in database.get_columns("gauge_data")}
    assert {"serial", "range_max", "unit"} <= columns
    row = GaugeDataV2.get(GaugeDataV2.resource == resource.id)
    assert (row.serial, row.range_max, row.unit) == ("A-1", None, "bar")
    assert "gauge_data_unit" in {index.name for index in database.get_indexes("gauge_data")}


def test_the_schema_version_is_recorded(database):
    create_tables([])
    assert Setting.get(Setting.name == SCHEMA_VERSION_KEY).value == str(SCHEMA_VERSION)


def test_a_database_from_a_newer_broker_is_refused(database):
    create_tables([])
    Setting.update(value=str(SCHEMA_VERSION + 1)).where(
        Setting.name == SCHEMA_VERSION_KEY
    ).execute()
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        create_tables([])
    assert Setting.get(Setting.name == SCHEMA_VERSION_KEY).value == str(SCHEMA_VERSION + 1)


# A statement that changes the layout or the rows, or takes a lock.
CHANGE = re.compile(
    r"^\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|REPLACE|LOCK|BEGIN|SAVEPOINT)\b"
    r"|pg_advisory|FOR UPDATE",
    re.IGNORECASE,
)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, tuple):
            self.sink.append(record.msg[0])


@contextlib.contextmanager
def sent_statements() -> Iterator[list[str]]:
    """Every statement peewee sends meanwhile (it logs each at DEBUG)."""
    logger = logging.getLogger("peewee")
    sent: list[str] = []
    handler, level = _Collect(sent), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield sent
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def changes(statements: list[str]) -> list[str]:
    return [statement for statement in statements if CHANGE.search(statement)]


def test_a_current_schema_is_only_read(database, kinds):
    with sent_statements() as sent:
        create_tables(kinds.models)

    assert sent, "nothing was read: the statements were not recorded"
    assert changes(sent) == []


def test_a_missing_index_is_created_and_nothing_else_changes(database, kinds):
    database.execute_sql('DROP INDEX "resource_kind"')

    with sent_statements() as sent:
        create_tables(kinds.models)

    assert "resource_kind" in {index.name for index in database.get_indexes("resource")}
    created = [s for s in changes(sent) if s.lstrip().upper().startswith("CREATE")]
    assert created and all('"resource"' in statement for statement in created), created
    assert not [s for s in changes(sent) if re.search(r"\b(INSERT|UPDATE)\b", s)]
    with sent_statements() as sent:
        create_tables(kinds.models)
    assert changes(sent) == []


def test_a_missing_table_is_created(database, kinds):
    create_tables([GaugeData])
    database.execute_sql(f'DROP TABLE "{GaugeData._meta.table_name}"')

    create_tables([GaugeData])

    schema = getattr(database, "schema", None)
    assert GaugeData._meta.table_name in database.get_tables(schema=schema)
    with sent_statements() as sent:
        create_tables([GaugeData])
    assert changes(sent) == []


def test_the_version_row_is_written_only_when_it_changes(database, kinds):
    Setting.update(value=str(SCHEMA_VERSION - 1)).where(
        Setting.name == SCHEMA_VERSION_KEY
    ).execute()

    with sent_statements() as sent:
        create_tables(kinds.models)

    assert Setting.get(Setting.name == SCHEMA_VERSION_KEY).value == str(SCHEMA_VERSION)
    written = [s for s in changes(sent) if re.search(r"\b(INSERT|UPDATE)\b", s)]
    assert len(written) == 1 and '"setting"' in written[0], written
    assert not [s for s in changes(sent) if s.lstrip().upper().startswith(("CREATE", "ALTER"))]
    with sent_statements() as sent:
        create_tables(kinds.models)
    assert changes(sent) == []
