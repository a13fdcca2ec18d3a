"""The admin CLI end to end: `sdk.cli.main` against a real broker on
loopback, its output read through capsys. Assertions look at names, states
and values, never at the exact padding of tables."""

from __future__ import annotations

import re
import signal
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from broker.field_values import from_field_value
from broker.v1 import lease_pb2
from sdk import BrokerClient, Waiting, cli
from sdk.client import default_holder
from sdk.requirements import to_constraints
from tests.integration.helpers import wait_until

WAIT = 10.0

REPO_CONFIG = Path(__file__).resolve().parents[2] / "rotest.yml"


class Run(NamedTuple):
    status: int
    out: str
    err: str


@pytest.fixture
def run(broker, capsys):
    """Runs one CLI command against the test broker."""

    def run_command(*argv: str) -> Run:
        status = cli.main(["--target", broker.address, *argv])
        out, err = capsys.readouterr()
        return Run(status, out, err)

    return run_command


@pytest.fixture
def sdk_client(broker):
    """A second view of the broker, to check what the CLI really changed."""
    with BrokerClient(broker.address, holder="checker@bench") as client:
        yield client


def ok(result: Run) -> str:
    assert result.status == 0, result.err
    return result.out


def details(text: str) -> dict[str, str]:
    """The `key: value` block at the top of a `show`-like output."""
    block = text.strip().split("\n\n")[0]
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def rows(text: str) -> dict[str, dict[str, str]]:
    """A table's rows by their first cell, each as header -> cell. Columns
    are at least two spaces apart; cells may hold single spaces."""
    header, *lines = [line for line in text.splitlines() if line.strip()]
    columns = re.split(r"\s{2,}", header.strip())
    table = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        table[cells[0]] = dict(zip(columns, cells, strict=False))
    return table


def add_phone(run, name: str, os: str = "android", version: int = 14) -> None:
    ok(run("resources", "add", "Phone", name, "--set", f"os={os}", "--set", f"version={version}"))


def add_calculator(run, name: str = "calc") -> None:
    ok(
        run(
            "resources",
            "add",
            "Calculator",
            name,
            "--set",
            "ip_address=127.0.0.1",
            "--set",
            "port=1357",
        )
    )


def acquire(run, *argv: str) -> tuple[str, str]:
    """Acquires from the shell; returns the lease id and its secret."""
    shown = details(ok(run("leases", "acquire", *argv)))
    return shown["lease"], shown["secret"]


# ----------------------------------------------------------------- kinds


def test_kinds_lists_every_kind_with_its_fields(run):
    kinds = rows(ok(run("kinds")))

    assert set(kinds) == {"Calculator", "Phone", "Licence"}
    assert kinds["Phone"]["OWNABLE"] == "yes"
    assert kinds["Phone"]["FIELDS"].split() == [
        "os:string",
        "version:integer",
        "rooted:boolean",
        "battery:float",
    ]
    assert kinds["Calculator"]["FIELDS"].split() == ["ip_address:ip_address", "port:integer"]
    assert kinds["Licence"]["OWNABLE"] == "no"
    assert kinds["Licence"]["FIELDS"] == "product:string"


# ------------------------------------------------------------- resources


def test_add_sends_typed_values(run, sdk_client):
    out = ok(
        run(
            "resources",
            "add",
            "Phone",
            "pixel-1",
            "--set",
            "os=android",
            "--set",
            "version=14",
            "--set",
            "rooted=yes",
            "--set",
            "battery=4614.5",
            "--group",
            "bench-3",
        )
    )

    shown = details(out)
    assert (shown["name"], shown["kind"], shown["group"]) == ("pixel-1", "Phone", "bench-3")
    assert (shown["fields.version"], shown["fields.rooted"]) == ("14", "true")
    stored = {
        name: from_field_value(value)
        for name, value in sdk_client.get_resource("pixel-1").fields.items()
    }
    assert stored == {"os": "android", "version": 14, "rooted": True, "battery": 4614.5}
    assert type(stored["version"]) is int
    assert type(stored["battery"]) is float


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("version=abc", "version"),
        ("rooted=maybe", "rooted"),
        ("battery=full", "battery"),
        ("version=99999999999999999999", "version"),
        ("colour=red", "colour"),
    ],
)
def test_add_refuses_a_bad_value_naming_the_field(run, sdk_client, assignment, field):
    result = run("resources", "add", "Phone", "pixel-1", "--set", "os=android", "--set", assignment)

    assert result.status == 2
    assert field in result.err
    assert [resource.name for resource in sdk_client.list_resources()] == []


def test_add_of_a_value_the_broker_refuses_names_the_field(run, sdk_client):
    result = run("resources", "add", "Calculator", "calc", "--set", "ip_address=not-an-ip")

    assert result.status == 1
    assert "INVALID_ARGUMENT" in result.err
    assert "fields.ip_address" in result.err
    assert [resource.name for resource in sdk_client.list_resources()] == []


def test_add_of_an_unknown_kind_is_a_usage_error(run):
    result = run("resources", "add", "Tablet", "tab-1")

    assert result.status == 2
    assert "Tablet" in result.err
    assert "Phone" in result.err


def test_list_filters_by_kind_and_where(run):
    add_phone(run, "pixel-13", version=13)
    add_phone(run, "pixel-14", version=14)
    add_phone(run, "iphone-17", os="ios", version=17)
    add_calculator(run)

    def names(*argv: str) -> set[str]:
        return set(rows(ok(run("resources", "list", *argv))))

    assert names() == {"pixel-13", "pixel-14", "iphone-17", "calc"}
    assert names("--kind", "Phone") == {"pixel-13", "pixel-14", "iphone-17"}
    assert names("--kind", "Phone", "--where", "os=android") == {"pixel-13", "pixel-14"}
    assert names("--kind", "Phone", "--where", "version=13", "--where", "version=17") == {
        "pixel-13",
        "iphone-17",
    }
    assert names("--kind", "Phone", "--where", "os=android", "--where", "version=14") == {
        "pixel-14"
    }
    assert names("--where", "name=calc") == {"calc"}
    listed = rows(ok(run("resources", "list", "--kind", "Phone", "--where", "os=ios")))
    assert listed["iphone-17"]["KIND"] == "Phone"
    assert "version=17" in listed["iphone-17"]["FIELDS"].split()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--where", "os=android"], "--kind"),
        (["--kind", "Phone", "--where", "version=new"], "version"),
        (["--kind", "Phone", "--where", "colour=red"], "colour"),
        (["--kind", "Phone", "--where", "os"], "FIELD=VALUE"),
    ],
)
def test_list_refuses_a_bad_filter(run, argv, named):
    result = run("resources", "list", *argv)

    assert result.status == 2
    assert named in result.err


def test_show_tells_everything_about_one_resource(run):
    add_phone(run, "pixel-14")

    shown = details(ok(run("resources", "show", "pixel-14")))

    assert (shown["name"], shown["kind"], shown["usable"]) == ("pixel-14", "Phone", "yes")
    assert (shown["owner"], shown["leases"]) == ("-", "-")
    assert (shown["fields.os"], shown["fields.version"]) == ("android", "14")
    assert shown["etag"] not in ("", "-")


def test_update_changes_only_what_is_given(run):
    add_phone(run, "pixel-14")
    before = details(ok(run("resources", "show", "pixel-14")))

    after = details(
        ok(
            run(
                "resources",
                "update",
                "pixel-14",
                "--set",
                "version=15",
                "--unusable",
                "--comment",
                "cracked screen",
            )
        )
    )

    assert (after["fields.version"], after["usable"], after["comment"]) == (
        "15",
        "no",
        "cracked screen",
    )
    assert after["fields.os"] == "android"
    assert after["etag"] != before["etag"]
    assert details(ok(run("resources", "show", "pixel-14"))) == after


def test_update_with_a_stale_etag_is_aborted_and_changes_nothing(run):
    add_phone(run, "pixel-14")
    stale = details(ok(run("resources", "show", "pixel-14")))["etag"]
    current = details(ok(run("resources", "update", "pixel-14", "--comment", "first")))["etag"]

    refused = run("resources", "update", "pixel-14", "--comment", "second", "--etag", stale)

    assert refused.status == 1
    assert "ABORTED" in refused.err
    assert details(ok(run("resources", "show", "pixel-14")))["comment"] == "first"
    updated = ok(run("resources", "update", "pixel-14", "--usable", "--etag", current))
    assert details(updated)["usable"] == "yes"


def test_update_refuses_a_bad_value_naming_the_field(run):
    add_phone(run, "pixel-14")

    result = run("resources", "update", "pixel-14", "--set", "version=abc")

    assert result.status == 2
    assert "version" in result.err
    assert details(ok(run("resources", "show", "pixel-14")))["fields.version"] == "14"


def test_delete_is_refused_while_leased_and_done_after_release(run):
    add_calculator(run)
    lease_id, secret = acquire(run, "Calculator", "--where", "name=calc")

    refused = run("resources", "delete", "calc")

    assert refused.status == 1
    assert "FAILED_PRECONDITION" in refused.err
    assert details(ok(run("resources", "show", "calc")))["leases"] == lease_id
    ok(run("leases", "release", lease_id, "--secret", secret))
    assert ok(run("resources", "delete", "calc")).strip() == "deleted calc"
    gone = run("resources", "show", "calc")
    assert gone.status == 1
    assert "NOT_FOUND" in gone.err


# ---------------------------------------------------------------- leases


def test_acquire_prints_the_lease_and_its_secret(run, sdk_client):
    add_calculator(run)

    out = ok(run("leases", "acquire", "Calculator", "--where", "name=calc", "--ttl", "120"))

    shown = details(out)
    lease_id, secret = shown["lease"], shown["secret"]
    assert (shown["state"], shown["ttl"]) == ("active", "120s")
    assert "calc" in rows(out.split("\n\n")[1])
    assert f"broker leases renew {lease_id} --secret {secret}" in out
    assert f"broker leases release {lease_id} --secret {secret}" in out
    lease = sdk_client.get_lease(lease_id)
    assert lease.state == lease_pb2.LEASE_STATE_ACTIVE
    assert [grant.resource.name for grant in lease.grants] == ["calc"]
    assert sdk_client.renew(lease_id, secret).lease_id == lease_id


def test_list_and_show_leases(run):
    add_calculator(run, "calc-1")
    add_calculator(run, "calc-2")
    held, _ = acquire(run, "Calculator", "--where", "name=calc-1")
    ended, ended_secret = acquire(run, "Calculator", "--where", "name=calc-2")
    ok(run("leases", "release", ended, "--secret", ended_secret))

    active = rows(ok(run("leases", "list", "--state", "active")))
    released = rows(ok(run("leases", "list", "--state", "released")))
    every = rows(ok(run("leases", "list")))

    assert set(active) == {held}
    assert (active[held]["STATE"], active[held]["RESOURCES"]) == ("active", "calc-1")
    assert set(released) == {ended}
    assert set(every) == {held, ended}
    assert set(rows(ok(run("leases", "list", "--resource", "calc-2")))) == {ended}
    mine = rows(ok(run("leases", "list", "--principal", default_holder())))
    assert set(mine) == {held, ended}
    assert rows(ok(run("leases", "list", "--principal", "nobody@nowhere"))) == {}
    out = ok(run("leases", "show", held))
    shown = details(out)
    assert (shown["lease"], shown["state"]) == (held, "active")
    assert "secret" not in shown
    assert "calc-1" in rows(out.split("\n\n")[1])


def test_renew_and_release_need_the_lease_secret(run):
    add_calculator(run)
    lease_id, secret = acquire(run, "Calculator", "--where", "name=calc")
    wrong = "0" * len(secret)

    for action in ("renew", "release"):
        refused = run("leases", action, lease_id, "--secret", wrong)
        assert refused.status == 1, action
        assert "PERMISSION_DENIED" in refused.err

    assert details(ok(run("leases", "show", lease_id)))["state"] == "active"
    assert lease_id in ok(run("leases", "renew", lease_id, "--secret", secret))
    assert ok(run("leases", "release", lease_id, "--secret", secret)).strip() == (
        f"lease {lease_id} released"
    )
    assert details(ok(run("leases", "show", lease_id)))["state"] == "released"
    again = run("leases", "renew", lease_id, "--secret", secret)
    assert again.status == 1
    assert "FAILED_PRECONDITION" in again.err


def test_revoke_records_the_reason_and_frees_the_resource(run):
    add_calculator(run)
    lease_id, secret = acquire(run, "Calculator", "--where", "name=calc")

    revoked = details(ok(run("leases", "revoke", lease_id, "--reason", "bench rewiring")))

    assert (revoked["state"], revoked["reason"]) == ("revoked", "bench rewiring")
    assert details(ok(run("leases", "show", lease_id)))["reason"] == "bench rewiring"
    assert details(ok(run("resources", "show", "calc")))["owner"] == "-"
    late = run("leases", "release", lease_id, "--secret", secret)
    assert late.status == 1
    assert "FAILED_PRECONDITION" in late.err


def test_revoke_needs_a_reason(run):
    result = run("leases", "revoke", str(uuid.uuid4()))

    assert result.status == 2
    assert "--reason" in result.err


def test_acquire_of_what_can_never_be_had_fails_at_once(run):
    add_calculator(run)

    result = run("leases", "acquire", "Calculator", "--where", "name=calc", "--count", "2")

    assert result.status == 1
    assert "FAILED_PRECONDITION" in result.err
    assert rows(ok(run("leases", "list"))) == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["resources", "show", "nowhere"],
        ["resources", "update", "nowhere", "--comment", "x"],
        ["resources", "delete", "nowhere"],
        ["leases", "show", "00000000-0000-4000-8000-000000000000"],
        ["leases", "revoke", "00000000-0000-4000-8000-000000000000", "--reason", "x"],
    ],
)
def test_what_does_not_exist_is_not_found(run, argv):
    result = run(*argv)

    assert result.status == 1
    assert "NOT_FOUND" in result.err


def test_an_unreachable_broker_exits_3(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    status = cli.main(["--target", f"127.0.0.1:{port}", "--timeout", "5", "kinds"])

    assert status == 3
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["127.0.0.1:1,", ",127.0.0.1:1"])
def test_a_bad_target_is_a_usage_error(capsys, target):
    status = cli.main(["--target", target, "kinds"])

    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --target: ")
    assert "Traceback" not in err


# ----------------------------------------------------------------- queue


def calc_requirement(label: str = "calc", name=("calc",)) -> lease_pb2.Requirement:
    where = {"name": name[0] if len(name) == 1 else list(name)}
    return lease_pb2.Requirement(kind="Calculator", constraints=to_constraints(where), label=label)


def test_queue_lists_the_waiters_in_the_order_they_are_served(run, broker, sdk_client):
    add_calculator(run)
    sdk_client.acquire([calc_requirement()])
    with (
        BrokerClient(broker.address, holder="low@bench") as low,
        BrokerClient(broker.address, holder="high@bench") as high,
    ):
        waits = [
            low.watch_acquire([calc_requirement()], max_wait=WAIT),
            high.watch_acquire(
                [calc_requirement("spare", ("calc", "calc-9"))], max_wait=WAIT, priority=7
            ),
        ]
        assert all(isinstance(next(wait), Waiting) for wait in waits)

        queue = rows(ok(run("queue")))

        assert set(queue) == {"0", "1"}
        first, second = queue["0"], queue["1"]
        assert (first["HOLDER"], first["PRIORITY"]) == ("high@bench", "7")
        assert first["WANTS"] == "Calculator x1 name=calc|calc-9"
        assert first["BLOCKED"] == "0 (spare)"
        assert (second["HOLDER"], second["PRIORITY"]) == ("low@bench", "0")
        assert second["WANTS"] == "Calculator x1 name=calc"
        assert second["BLOCKED"] == "0 (calc)"
        assert int(first["WAITER"]) > int(second["WAITER"])
        for row in (first, second):
            assert row["WAITING SINCE"] < row["DEADLINE"]
        for wait in waits:
            wait.close()

    wait_until(lambda: rows(ok(run("queue"))) == {}, WAIT, "the queue to empty")


def test_acquire_waits_printing_where_it_stands_then_the_grant(run, sdk_client):
    add_calculator(run)
    held, secret = sdk_client.acquire([calc_requirement()])

    with ThreadPoolExecutor(max_workers=1) as pool:
        argv = ("Calculator", "--where", "name=calc", "--wait", "10", "--priority", "3")
        acquiring = pool.submit(run, "leases", "acquire", *argv)
        (waiter,) = wait_until(lambda: list(sdk_client.list_waiters()), WAIT, "the CLI to wait")
        assert waiter.priority == 3
        sdk_client.release(held.lease_id, secret)
        result = acquiring.result(WAIT)

    out = ok(result)
    assert "waiting at position 0" in result.err
    assert f"calc is held by checker@bench (lease {held.lease_id}" in result.err
    shown = details(out)
    assert shown["state"] == "active"
    assert sdk_client.get_lease(shown["lease"]).state == lease_pb2.LEASE_STATE_ACTIVE
    assert "waiting" not in out


def test_acquire_whose_wait_ends_fails_and_leaves_the_queue(run, sdk_client):
    add_calculator(run)
    sdk_client.acquire([calc_requirement()])

    result = run("leases", "acquire", "Calculator", "--where", "name=calc", "--wait", "1")

    assert result.status == 1
    assert "waiting at position 0" in result.err
    assert "DEADLINE_EXCEEDED" in result.err
    assert rows(ok(run("queue"))) == {}
    assert [lease.holder for lease in sdk_client.list_leases()] == ["checker@bench"]


def test_ctrl_c_while_acquire_waits_exits_130_and_leaves_the_queue(run, sdk_client, default_sigint):
    add_calculator(run)
    sdk_client.acquire([calc_requirement()])
    main = threading.main_thread()
    assert threading.current_thread() is main

    def press_ctrl_c() -> None:
        wait_until(lambda: list(sdk_client.list_waiters()), WAIT, "the CLI to wait")
        signal.pthread_kill(main.ident, signal.SIGINT)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pressed = pool.submit(press_ctrl_c)
        result = run("leases", "acquire", "Calculator", "--where", "name=calc", "--wait", "10")
        pressed.result(WAIT)

    assert result.status == 130
    assert "interrupted" in result.err
    wait_until(lambda: rows(ok(run("queue"))) == {}, WAIT, "the queue to empty")
    assert [lease.holder for lease in sdk_client.list_leases()] == ["checker@bench"]


def test_acquire_without_wait_is_busy_at_once(run, sdk_client):
    add_calculator(run)
    held, _ = sdk_client.acquire([calc_requirement()])

    result = run("leases", "acquire", "Calculator", "--where", "name=calc")

    assert result.status == 1
    assert "RESOURCE_EXHAUSTED" in result.err
    assert result.err.count(f"calc is held by checker@bench (lease {held.lease_id}") == 1


@pytest.mark.parametrize(
    ("argv", "status", "named"),
    [
        (["--priority", "500"], 1, "priority"),
        (["--wait", "-1"], 2, "--wait"),
        (["--priority", "high"], 2, "--priority"),
    ],
)
def test_acquire_refuses_a_bad_wait_or_priority(run, sdk_client, argv, status, named):
    add_calculator(run)

    result = run("leases", "acquire", "Calculator", "--where", "name=calc", *argv)

    assert result.status == status
    assert named in result.err
    assert list(sdk_client.list_leases()) == []


# ---------------------------------------------------------------- config


def test_check_config_accepts_the_repository_configuration(capsys, monkeypatch):
    monkeypatch.delenv("BROKER_ADDRESS", raising=False)
    monkeypatch.delenv("BROKER_DATABASE_URL", raising=False)

    status = cli.main(["check-config", "--config", str(REPO_CONFIG)])

    out = capsys.readouterr().out
    assert status == 0
    assert f"{REPO_CONFIG}: OK" in out
    shown = details(out.split("\n", 1)[1])
    assert shown["server.address"] == "127.0.0.1:50051"
    assert shown["leases.default_ttl"] == "60.0"
    assert shown["kinds"] == "resources.calculator.data.CalculatorData"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("leases:\n  default_ttl: -1\n", "leases.default_ttl"),
        ("server:\n  max_concurrent_rpcs: many\n", "server.max_concurrent_rpcs"),
        ("servr:\n  max_concurrent_rpcs: 4\n", "servr"),
        ("kinds:\n  - nowhere.Thing\n", "kinds[0]"),
    ],
)
def test_check_config_refuses_a_bad_file_naming_the_key(capsys, tmp_path, text, key):
    path = tmp_path / "rotest.yml"
    path.write_text(text, encoding="utf-8")

    status = cli.main(["check-config", "--config", str(path)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith(f"error: {key}:")
    assert captured.out == ""


@pytest.mark.parametrize(
    ("name", "why"),
    [("calx", "no Calculator resource is named 'calx'"), ("calc", "calc is out of service: flat")],
)
def test_a_refused_acquire_prints_why_once(run, name, why):
    add_calculator(run)
    ok(run("resources", "update", "calc", "--unusable", "--comment", "flat"))

    result = run("leases", "acquire", "Calculator", "--where", f"name={name}")

    assert result.status == 1
    assert "FAILED_PRECONDITION" in result.err
    assert result.err.count(why) == 1, result.err


def test_out_of_service_and_back_from_the_shell(run):
    add_calculator(run)

    shown = details(ok(run("resources", "out-of-service", "calc", "--reason", "fan broken")))
    refused = run("leases", "acquire", "Calculator", "--where", "name=calc")
    back = details(ok(run("resources", "return", "calc")))

    assert (shown["usable"], shown["out of service"]) == ("no", "fan broken")
    assert refused.err.count("calc is out of service: fan broken") == 1
    assert (back["usable"], back["out of service"]) == ("yes", "-")
    assert run("resources", "out-of-service", "calc").status == 2  # --reason is required


def test_a_reservation_with_an_end_from_the_shell(run):
    add_calculator(run)

    shown = details(
        ok(
            run(
                "resources",
                "update",
                "calc",
                "--reserved-for",
                "bob",
                "--reserved-until",
                "2999-01-01T00:00+00:00",
                "--reservation-reason",
                "demo",
            )
        )
    )
    refused = run("leases", "acquire", "Calculator", "--where", "name=calc")

    assert (shown["reserved for"], shown["reservation reason"]) == ("bob", "demo")
    assert shown["reserved until"].startswith("2999-01-01") or shown["reserved until"].startswith(
        "2998-12-31"
    )
    assert refused.status == 1
    assert "RESOURCE_EXHAUSTED" in refused.err
    assert refused.err.count("calc is reserved for bob until 2999-01-01T00:00:00Z: demo") == 1
