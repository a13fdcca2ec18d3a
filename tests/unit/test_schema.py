"""Tables evolve on start-up: a column a model gained since the database was
made is added, and every row is kept."""

from __future__ import annotations

import peewee
import pytest

from broker.models.resource import Resource, ResourceData
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
