"""The README's snippets, read from the README itself and run as a newcomer
pastes them: the SDK section's commands and Python, the constraints
example, the `broker shell` session, and "Your own kind". The broker and
the device run on free ports, so the snippets' 127.0.0.1:50051 is replaced
by the broker's address and each resource they add gets the device's port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.v1 import lease_pb2

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
TOUR_TARGET = "127.0.0.1:50051"


def section(title: str) -> str:
    """The README's text from the heading `title` to the next heading of
    its level or above (a `#` line inside a code block is no heading)."""
    lines = README.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(title)}\n", line)), None
    )
    assert start is not None, f"the README has no section {title!r}"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    fenced = False
    for end in range(start + 1, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", lines[end]):
            return "".join(lines[start + 1 : end])
    return "".join(lines[start + 1 :])


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def commands(console: str) -> list[str]:
    return [line[2:] for line in console.splitlines() if line.startswith("$ ")]


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def environment(broker):
    return {**os.environ, "BROKER_TARGET": broker.address}


def assert_lints_clean(path) -> None:
    """A pasted file passes the project's own lint."""
    linted = subprocess.run(
        [str(BIN / "ruff"), "check", "--config", str(ROOT / "ruff.toml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout


def run_console(command: str, device_port: int, environment) -> None:
    """One `$` line, as bash runs it from the clone's root."""
    command = command.replace(
        "--set ip_address=127.0.0.1", f"--set ip_address=127.0.0.1 --set port={device_port}"
    )
    finished = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, (command, finished.stderr)


def run_python(code: str, broker, environment) -> str:
    finished = subprocess.run(
        [sys.executable, "-c", code.replace(TOUR_TARGET, broker.address)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


@pytest.fixture
def tour_resources(client, device_port, environment):
    """`calc` from the tour, then what the SDK section adds, with its own commands."""
    client.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1", "port": device_port})
    (console,) = blocks(section("The Python SDK"), "console")
    for command in commands(console):
        run_console(command, device_port, environment)
    return client


def test_the_sdk_sections_commands_add_what_its_example_needs(tour_resources):
    names = {r.name: r.group for r in tour_resources.list_resources("Calculator")}
    assert names == {"calc": "", "calc1": "", "calc2": "", "pair1": "bench-3", "pair2": "bench-3"}


def test_the_sdk_example_and_the_constraints_example_run_on_the_tour(
    broker, tour_resources, environment
):
    text = section("The Python SDK")
    example, constraints = blocks(text, "python")[:2]
    # The constraints example goes on in the same session; its last line is
    # an expression, whose value a session would show.
    *statements, shown = constraints.strip().splitlines()
    session = "\n".join([example, *statements, f"print({shown})"])
    printed = run_python(session, broker, environment)
    assert printed.strip() == "['calc', 'calc1', 'calc2']"
    leases = list(tour_resources.list_leases())
    assert len(leases) == 3
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases)


def test_the_shell_session_runs_as_printed(broker, tour_resources, environment):
    (console,) = blocks(
        section("Tests that declare resources").split("**From a shell")[1], "console"
    )
    lines = console.splitlines()
    typed = [line[4:] for line in lines if line.startswith(">>> ")]
    shown = [line for line in lines if line and not line.startswith((">>> ", "$ ", "..."))]
    # The clone's own rotest.yml, as from its root: it names the shell's kinds.
    finished = subprocess.run(
        [str(BIN / "broker"), "shell"],
        input="\n".join(typed) + "\n",
        cwd=ROOT,
        env={**environment, "BROKER_CLIENT_CONFIG": str(ROOT / "rotest.yml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert "Error" not in finished.stderr, finished.stderr
    assert "42" in finished.stdout.split() and "42" in shown
    assert "kinds: Calculator" in finished.stderr and "kinds: Calculator" in shown
    assert all(
        lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in tour_resources.list_leases()
    )


def test_your_own_kind_is_served_from_beside_its_configuration(tmp_path):
    text = section("Your own kind")
    (kind,) = blocks(text, "python")
    path = kind.splitlines()[0].removeprefix("# ").strip()
    assert path == "mylab/phone.py"
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / path).write_text(kind)
    (tmp_path / "rotest.yml").write_text(
        "database:\n  url: sqlite:///broker.sqlite3\nkinds:\n  - mylab.phone.PhoneData\n"
    )
    checked = subprocess.run(
        [str(BIN / "broker"), "check-config", "--config", str(tmp_path / "rotest.yml")],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "mylab.phone.PhoneData" in checked.stdout
    assert_lints_clean(tmp_path / path)
