"""Date-time fields (`DateTimeField`) on both backends: kept in UTC to the
microsecond, compared, kept in a grant's snapshot, typed in and shown by
the CLI, and refused without a time zone or of another type."""

from __future__ import annotations

import dataclasses
import datetime

import peewee
import pytest

from broker.domain.kinds import KindDeclarationError, describe
from broker.kind_data import ResourceData
from sdk import BaseResource, InvalidArgumentError
from sdk.cli import main as cli_main
from tests.conftest import make_config
from tests.kinds import TEST_KINDS, BoardData

UTC = datetime.UTC
MARCH = datetime.datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
JUNE = datetime.datetime(2026, 6, 1, 8, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))


class Board(BaseResource):
    DATA_CLASS = BoardData


@pytest.fixture
def config(tmp_path, database_url):
    return dataclasses.replace(
        make_config(tmp_path, database_url), kinds=(*TEST_KINDS, "tests.kinds.BoardData")
    )


@pytest.fixture
def boards(client):
    client.create_resource("Board", "march", {"soc": "imx8", "calibrated": MARCH})
    client.create_resource("Board", "june", {"soc": "imx8", "calibrated": JUNE})
    client.create_resource("Board", "never", {"soc": "rk3588"})
    return client


def calibrated(client, name):
    from broker.field_values import from_field_value

    return from_field_value(client.get_resource(name).fields["calibrated"])


def test_a_date_time_comes_back_in_utc_to_the_microsecond(boards):
    assert calibrated(boards, "march") == MARCH
    assert calibrated(boards, "june") == JUNE.astimezone(UTC)
    assert calibrated(boards, "june").tzinfo == UTC
    assert "calibrated" not in boards.get_resource("never").fields


def test_date_times_compare(boards):
    april = datetime.datetime(2026, 4, 1, tzinfo=UTC)
    after = {r.name for r in boards.list_resources("Board", where={"calibrated__gt": april})}
    assert after == {"june"}
    before = {r.name for r in boards.list_resources("Board", where={"calibrated__not_gt": april})}
    assert before == {"march", "never"}


def test_a_lease_holds_the_date_time_as_it_was_granted(boards):
    from broker.field_values import from_field_value

    lease = boards.lease(Board, name="march", wait=0)
    with lease as board:
        assert board.data.calibrated == MARCH
        boards.update_resource("march", fields={"calibrated": JUNE})
        (grant,) = boards.get_lease(lease.lease_id).grants
        assert from_field_value(grant.resource.fields["calibrated"]) == MARCH
    assert calibrated(boards, "march") == JUNE.astimezone(UTC)


def test_without_a_time_zone_or_of_another_type_it_is_refused(boards):
    with pytest.raises(TypeError, match="needs its time zone"):
        boards.create_resource(
            "Board", "naive", {"soc": "imx8", "calibrated": datetime.datetime(2026, 1, 1)}
        )
    with pytest.raises(InvalidArgumentError, match="calibrated must be a date-time, not str"):
        boards.create_resource("Board", "text", {"soc": "imx8", "calibrated": "2026-01-01"})


def test_the_cli_types_in_and_shows_date_times(broker, boards, capsys):
    target = ["--target", broker.address]
    assert (
        cli_main(
            [
                *target,
                "resources",
                "list",
                "--kind",
                "Board",
                "--where",
                "calibrated>=2026-05-01T00:00:00Z",
            ]
        )
        == 0
    )
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["june"]
    assert cli_main([*target, "resources", "show", "march"]) == 0
    shown = capsys.readouterr().out
    assert f"fields.calibrated:  {MARCH.astimezone().isoformat(timespec='seconds')}" in shown
    assert (
        cli_main([*target, "resources", "list", "--kind", "Board", "--where", "calibrated>soon"])
        == 2
    )
    assert "calibrated: 'soon' is not a date-time" in capsys.readouterr().err


def test_a_date_time_field_declares_no_default():
    class StampedData(ResourceData):
        seen = peewee.DateTimeField(default=datetime.datetime.now)

    with pytest.raises(
        KindDeclarationError, match=r"StampedData\.seen: a date-time field has no default"
    ):
        describe(StampedData)
