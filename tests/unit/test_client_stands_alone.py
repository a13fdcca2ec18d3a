"""The client and the server are separate: the SDK (its CLI, pytest plugin
and mixin too) imports without the server's packages and nothing of the
server's code, the server imports nothing of the SDK, and the client's
install asks for none of the server's dependencies."""

from __future__ import annotations

import configparser
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import broker
import sdk

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("psycopg2", "grpc_health", "grpc_reflection", "jwt", "cryptography")
SERVER_DISTRIBUTIONS = (
    "psycopg2-binary",
    "grpcio-health-checking",
    "grpcio-reflection",
    "pyjwt",
    "cryptography",
)
# The server's own code; the SDK meets it only at broker.v1 (the generated
# contract) and broker's neutral modules (field values, the command line).
SERVER_CODE = ("broker.api", "broker.domain", "broker.config", "broker.commands")

# Run in a fresh interpreter: hides the server's packages, as on a machine
# where only the client was installed, then imports what it is told.
BLOCKER = """
import importlib.abc, json, sys

HIDDEN = set(json.loads(sys.argv[1]))


class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hidden())
"""


def run_without_server_packages(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, json.dumps(SERVER_PACKAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def modules_of(package) -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.startswith("broker.v1.") and not info.name.endswith(".__main__")
    ]


def test_every_sdk_module_imports_without_the_servers_packages_or_code():
    names = [*modules_of(sdk), "resources.calculator.resource", "resources.calculator.data"]
    finished = run_without_server_packages(
        f"""
import importlib
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""
    )
    assert finished.returncode == 0, finished.stderr
    loaded = json.loads(finished.stdout)
    assert "sdk.pytest_plugin" in loaded and "sdk.cli" in loaded
    assert [m for m in loaded if m.partition(".")[0] in SERVER_PACKAGES] == []
    assert [m for m in loaded if m.startswith(SERVER_CODE)] == []


def test_without_the_server_broker_serve_says_what_to_install(tmp_path):
    finished = run_without_server_packages(
        f"""
from sdk import cli
raise SystemExit(cli.main(["serve", "--config", {str(tmp_path / "rotest.yml")!r}]))
"""
    )
    assert finished.returncode == 2, finished.stderr
    assert "pip install 'rotest-broker[server]'" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_client_commands_work_without_the_server(tmp_path):
    finished = run_without_server_packages(
        """
from sdk import cli
raise SystemExit(cli.main(["--target", "127.0.0.1:1", "--timeout", "1", "kinds"]))
"""
    )
    assert finished.returncode == 3, finished.stderr  # unreachable, not a missing module
    assert "UNAVAILABLE" in finished.stderr


def test_the_server_imports_nothing_of_the_sdk():
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, json, sys\n"
            f"for name in {modules_of(broker)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert [m for m in json.loads(finished.stdout) if m.partition(".")[0] == "sdk"] == []


def requirement_names(text: str) -> list[str]:
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split(">")[0].split("=")[0].split("[")[0].strip().lower())
    return names


def test_the_client_install_asks_for_none_of_the_servers_dependencies():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    client = requirement_names(setup["options"]["install_requires"])
    server = requirement_names(setup["options.extras_require"]["server"])
    assert set(client) & set(SERVER_DISTRIBUTIONS) == set()
    assert set(SERVER_DISTRIBUTIONS) <= set(server)
