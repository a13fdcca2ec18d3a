"""Fields with `choices`, as Django declares them: `ListKinds` and `broker
kinds` show them, a resource takes no other value, and an equality
constraint names no other (a comparison's bound may be any number)."""

from __future__ import annotations

import dataclasses

import pytest

from broker.field_values import from_field_value
from sdk import InvalidArgumentError
from sdk.cli import main as cli_main
from tests.conftest import make_config
from tests.kinds import TEST_KINDS


@pytest.fixture
def config(tmp_path, database_url):
    return dataclasses.replace(
        make_config(tmp_path, database_url), kinds=(*TEST_KINDS, "tests.kinds.BoardData")
    )


def test_list_kinds_describes_the_choices(client):
    (board,) = [kind for kind in client.list_kinds() if kind.name == "Board"]
    choices = {
        spec.name: [from_field_value(v) for v in spec.choices]
        for spec in board.fields
        if spec.choices
    }
    assert choices == {"soc": ["imx8", "rk3588"], "ram_gb": [2, 4, 8]}


def test_the_cli_shows_them(broker, client, capsys):
    assert cli_main(["--target", broker.address, "kinds"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if row.startswith("Board")]
    assert "soc:string(imx8|rk3588)" in line and "ram_gb:integer(2|4|8)" in line


def test_a_resource_takes_only_a_choice(client):
    client.create_resource("Board", "board-1", {"soc": "imx8", "ram_gb": 8})
    with pytest.raises(
        InvalidArgumentError, match="soc must be one of 'imx8', 'rk3588', not 'x86'"
    ):
        client.create_resource("Board", "board-2", {"soc": "x86"})
    with pytest.raises(InvalidArgumentError, match="ram_gb must be one of 2, 4, 8, not 16"):
        client.update_resource("board-1", fields={"ram_gb": 16})
    assert [r.name for r in client.list_resources("Board")] == ["board-1"]


def test_constraints_name_choices_and_compare_freely(client):
    client.create_resource("Board", "board-1", {"soc": "imx8", "ram_gb": 8})
    client.create_resource("Board", "board-2", {"soc": "rk3588", "ram_gb": 2})
    assert [r.name for r in client.list_resources("Board", where={"ram_gb__gt": 3})] == ["board-1"]
    with pytest.raises(InvalidArgumentError, match="soc must be one of"):
        list(client.list_resources("Board", where={"soc": "x86"}))
