"""Services (`DATA_CLASS = None`: set up and torn down like resources, never
asked of the broker), `lock()` / `release()` from a script, and `broker
shell`."""

from __future__ import annotations

import os
import sys
from typing import ClassVar

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import BaseResource, request
from sdk.config import ClientConfig
from tests.sdk.helpers import run_client


class Recorder(BaseResource):
    """A service that records its lifecycle."""

    DATA_CLASS = None
    calls: ClassVar[list[tuple[str, str]]] = []

    def connect(self):
        self.calls.append(("connect", self.name))

    def initialize(self):
        self.calls.append(("initialize", getattr(self.data, "url", "")))

    def finalize(self):
        self.calls.append(("finalize", self.name))


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture(autouse=True)
def no_calls():
    Recorder.calls.clear()


def test_a_service_alone_is_set_up_and_torn_down_with_no_lease(client):
    with client.lease_many({"recorder": request(Recorder, url="http://lab/")}) as held:
        recorder = held["recorder"]
        assert (recorder.name, recorder.data.url, recorder.kwargs) == (
            "recorder",
            "http://lab/",
            {"name": "recorder", "url": "http://lab/"},
        )
        assert Recorder.calls == [("connect", "recorder"), ("initialize", "http://lab/")]
    assert Recorder.calls[-1] == ("finalize", "recorder")
    assert list(client.list_leases()) == []


def test_a_service_beside_a_resource_leases_only_the_resource(client, calc):
    lease = client.lease_many({"calc": request(Calculator, name="calc"), "log": request(Recorder)})
    with lease as held:
        assert held["calc"].calculate("2+2") == 4
        assert held["log"].name == "log"
        assert list(lease.fencing_tokens) == ["calc"]
        (granted,) = client.get_lease(lease.lease_id).grants
        assert granted.resource.name == "calc"
    assert client.get_lease(lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert ("finalize", "log") in Recorder.calls


def test_a_service_is_built_from_values_and_a_kind_from_a_grant_only():
    with pytest.raises(ValueError, match="one at a time"):
        request(Recorder, count=2)
    with pytest.raises(ValueError, match="not asked of the broker"):
        request(Recorder).to_requirement("log")
    with pytest.raises(TypeError, match="built from a granted resource"):
        Calculator(None, name="calc")
    assert Recorder.kind_name() == "service"
    assert request(Recorder).kind == "service"


def test_lock_holds_until_release(client, calc):
    held = Calculator.lock(client=client, name="calc", skip_init=True)
    assert held.calculate("3*3") == 9
    assert client.get_resource("calc").owner == client.holder
    lease_id = held._locked_by.lease_id
    held.release()
    assert client.get_lease(lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert held.state.value == "finalized"
    held.release()  # a second release is a no-op


LOCKING_SCRIPT = """
import sys
from resources.calculator.resource import Calculator

calc = Calculator.lock(name="calc")
print("holding", calc.name, calc.calculate("40 + 2"), flush=True)
"""


def test_what_lock_holds_is_released_when_the_process_ends(broker, client, calc):
    finished = run_client([sys.executable, "-c", LOCKING_SCRIPT], broker.address)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == "holding calc 42\n"
    (lease,) = list(client.list_leases())
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED


def test_broker_shell_imports_the_kinds_and_releases_at_the_end(broker, client, calc, tmp_path):
    (tmp_path / "rotest.yml").write_text(
        "rotest:\n  shell_apps: [resources]\n"
        "  shell_startup_commands: ['greeting = \"startup ran\"']\n"
    )
    session = 'calc = Calculator.lock(name="calc", skip_init=True)\n'
    session += 'print("got", calc.calculate("6*7"), greeting, client.holder)\n'
    finished = run_client(
        [os.path.join(os.path.dirname(sys.executable), "broker"), "shell"],
        broker.address,
        input=session,
        env={"BROKER_CLIENT_CONFIG": str(tmp_path / "rotest.yml")},
    )
    assert finished.returncode == 0, finished.stderr
    assert f"resource broker: {broker.address}, holder " in finished.stderr
    assert "kinds: Calculator" in finished.stderr
    assert "got 42 startup ran" in finished.stdout
    (lease,) = list(client.list_leases())
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED


def test_shell_apps_must_be_a_list_of_modules(tmp_path):
    from sdk.config import ClientConfigError, load_client_config

    (tmp_path / "rotest.yml").write_text("client:\n  shell_apps: resources\n")
    with pytest.raises(ClientConfigError, match="shell_apps: must be a list of strings"):
        load_client_config({}, cwd=str(tmp_path))
    assert ClientConfig().shell_apps == ()


def test_a_service_declared_on_a_test_takes_its_override_as_text(pytester, broker):
    pytester.makepyfile(
        recorder="""
        from sdk import BaseResource


        class Browser(BaseResource):
            DATA_CLASS = None
        """,
        test_service="""
        from recorder import Browser


        class TestBrowser:
            browser = Browser.request(url="http://default/")

            def test_url(self):
                assert self.browser.data.url == "http://other/"
        """,
    )
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "--broker",
        broker.address,
        "--resource",
        "browser=url=http://other/",
    )
    result.assert_outcomes(passed=1)
