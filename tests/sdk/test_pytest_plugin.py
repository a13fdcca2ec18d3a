"""The pytest plugin, run by `pytester` against a real broker and calculator
device: declarations (class list, class attributes, markers), `--resource`
overrides, `--skip-init`, `--save-state`, reuse between tests and dirty
resources, Ctrl-C, the report header and the junit properties."""

from __future__ import annotations

import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from tests.sdk.helpers import run_client

# Tests of the plugin need one backend: the broker's behaviour on both is
# covered elsewhere.
pytestmark = pytest.mark.usefixtures("calculators")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def calculators(client, device_port):
    """calc and calc2 of group QA, both on the one device."""
    client.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1", "port": device_port})
    client.create_resource(
        "Calculator", "calc2", {"ip_address": "127.0.0.1", "port": device_port}, group="QA"
    )


@pytest.fixture
def run(pytester, broker):
    """Runs pytest in this process on the files `pytester` made, against the broker."""

    def run_pytest(*args: str):
        return pytester.runpytest("-p", "no:cacheprovider", "--broker", broker.address, *args)

    return run_pytest


def leases_of(client) -> list[lease_pb2.Lease]:
    return list(reversed(list(client.list_leases())))


CLASS_TEST = """
import unittest

from resources.calculator.resource import Calculator
from sdk import request


class AddTest(unittest.TestCase):
    resources = [request("calc", Calculator, name="calc")]

    def test_add(self):
        self.assertEqual(self.calc.calculate("1 + 1"), 2)

    def test_name(self):
        print("held", self.calc.name)
"""


def test_a_rotest_class_gets_its_resource_and_releases_it_after(pytester, run, client):
    pytester.makepyfile(CLASS_TEST)
    result = run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*held calc"])
    (lease,) = leases_of(client)
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED
    assert [grant.resource.name for grant in lease.grants] == ["calc"]


def test_an_override_picks_another_resource(pytester, run, client):
    pytester.makepyfile(CLASS_TEST)
    result = run("-s", "--resource", "calc=name=calc2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*held calc2"])
    assert [g.resource.name for lease in leases_of(client) for g in lease.grants] == ["calc2"]


def test_the_nested_override_form_replaces_one_constraint(pytester, run, client):
    pytester.makepyfile(
        """
        from resources.calculator.resource import Calculator


        class TestGroup:
            calc = Calculator.request(name=["calc", "calc2"])

            def test_group(self):
                assert self.calc.name == "calc2"
        """
    )
    run("--resource", "calc.group=QA").assert_outcomes(passed=1)


def test_an_override_with_a_lookup_selects_by_it(pytester, run):
    pytester.makepyfile(
        """
        from resources.calculator.resource import Calculator


        class TestLookup:
            calc = Calculator.request(name="calc")

            def test_group(self):
                assert self.calc.name == "calc2"
        """
    )
    run("--resource", "calc=group__in=QA,lab", "--resource", "calc=name__not=calc").assert_outcomes(
        passed=1
    )


def test_markers_declare_resources_as_fixtures(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        from resources.calculator.resource import Calculator
        from sdk import request

        pytestmark = pytest.mark.resources(request("calc", Calculator, name="calc"))


        def test_module_marker(calc):
            assert calc.calculate("2 * 3") == 6


        @pytest.mark.resources(other=Calculator.request(name="calc2"))
        def test_function_marker(calc, other):
            assert (calc.name, other.name) == ("calc", "calc2")
            assert other.calculate("5 - 1") == 4
        """
    )
    run().assert_outcomes(passed=2)


def test_a_class_marked_once_gives_its_methods_the_fixtures(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        from resources.calculator.resource import Calculator


        class TestMarked:
            pytestmark = pytest.mark.resources(calc=Calculator.request(name="calc2"))

            def test_fixture(self, calc):
                assert calc.name == "calc2"
        """
    )
    run().assert_outcomes(passed=1)


def test_consecutive_tests_keep_one_lease_until_a_resource_is_dirty(pytester, run, client):
    pytester.makepyfile(
        """
        import pytest

        from resources.calculator.resource import Calculator

        pytestmark = pytest.mark.resources(calc=Calculator.request(name="calc"))
        tokens = []


        def test_first(calc):
            tokens.append(calc.fencing_token)


        def test_fails_an_assertion_keeps_it(calc):
            tokens.append(calc.fencing_token)
            assert False, "a failed check leaves the device clean"


        def test_marks_it_dirty(calc):
            tokens.append(calc.fencing_token)
            calc.mark_dirty()


        def test_after_dirty(calc):
            tokens.append(calc.fencing_token)
            raise RuntimeError("an error dirties it too")


        def test_after_error(calc):
            tokens.append(calc.fencing_token)
            assert tokens == [1, 1, 1, 2, 3]
        """
    )
    run().assert_outcomes(passed=3, failed=2)
    assert len(leases_of(client)) == 3
    assert client.get_resource("calc").owner == ""


def test_a_test_declaring_other_resources_gets_a_new_lease(pytester, run, client):
    pytester.makepyfile(
        """
        import pytest

        from resources.calculator.resource import Calculator


        @pytest.mark.resources(calc=Calculator.request(name="calc"))
        def test_calc(calc):
            pass


        @pytest.mark.resources(calc=Calculator.request(name="calc2"))
        def test_calc2(calc):
            assert calc.name == "calc2"


        def test_nothing_declared():
            pass
        """
    )
    run().assert_outcomes(passed=3)
    leases = leases_of(client)
    assert [[g.resource.name for g in lease.grants] for lease in leases] == [["calc"], ["calc2"]]
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases)


RECORDING_KIND = """
import os

from resources.calculator.resource import Calculator


class Recording(Calculator):
    def initialize(self):
        with open("initialized", "a") as log:
            log.write(self.name + "\\n")

    def store_state(self, directory):
        with open(os.path.join(directory, "state.txt"), "w") as state:
            state.write(f"{self.name} at fencing token {self.fencing_token}")
"""


def recording_tests(pytester, methods: str) -> None:
    """A test module whose class holds `calc` as a `Recording` and has
    `methods`, beside the kind's module."""
    header = "from recording import Recording\n\n\nclass TestRecording:\n"
    header += '    calc = Recording.request(name="calc")\n\n'
    body = "\n".join(
        "    " + line if line else "" for line in textwrap.dedent(methods).splitlines()
    )
    pytester.makepyfile(recording=RECORDING_KIND, test_recording=header + body + "\n")


def test_skip_init_only_connects(pytester, run):
    recording_tests(
        pytester,
        """
        def test_connected(self):
            assert self.calc.calculate("3 + 4") == 7
        """,
    )
    run("--skip-init").assert_outcomes(passed=1)
    assert not (pytester.path / "initialized").exists()
    run().assert_outcomes(passed=1)
    assert (pytester.path / "initialized").read_text() == "calc\n"


def test_save_state_stores_a_failed_tests_resources(pytester, run):
    recording_tests(
        pytester,
        """
        def test_passes(self):
            pass

        def test_fails(self):
            assert self.calc.calculate("1 + 1") == 3
        """,
    )
    states = pytester.path / "states"
    junit = pytester.path / "junit.xml"
    result = run("--save-state", "--state-dir", str(states), f"--junitxml={junit}")
    result.assert_outcomes(passed=1, failed=1)
    stored = list(states.rglob("state.txt"))
    assert [path.relative_to(states).parts[1:] for path in stored] == [("calc", "state.txt")]
    assert "test_fails" in stored[0].parent.parent.name
    assert stored[0].read_text().startswith("calc at fencing token ")
    properties = junit_properties(junit)
    assert ("resource state", str(stored[0].parent)) in properties["test_fails"]
    assert not any(name == "resource state" for name, _ in properties["test_passes"])


def test_without_save_state_nothing_is_stored(pytester, run):
    recording_tests(
        pytester,
        """
        def test_fails(self):
            assert False
        """,
    )
    run("--state-dir", str(pytester.path / "states")).assert_outcomes(failed=1)
    assert not (pytester.path / "states").exists()


def junit_properties(path) -> dict[str, list[tuple[str, str]]]:
    tree = ElementTree.parse(path)
    return {
        case.get("name", ""): [
            (p.get("name", ""), p.get("value", "")) for p in case.iter("property")
        ]
        for case in tree.iter("testcase")
    }


def test_the_header_names_the_broker_and_each_report_the_resources(pytester, run, broker):
    pytester.makepyfile(CLASS_TEST.replace('print("held", self.calc.name)', "self.fail('no')"))
    junit = pytester.path / "junit.xml"
    result = run("--resource", "calc=name=calc2", f"--junitxml={junit}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"resource broker: {broker.address}, holder *@*",
            "*- resources held -*",
            "calc: calc2 (Calculator, fencing token 1, lease *)",
        ]
    )
    for test in ("test_add", "test_name"):
        ((name, value),) = junit_properties(junit)[test]
        assert name == "resource:calc"
        assert value.startswith("calc2 (Calculator, fencing token 1, lease ")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["calc=name"], "expected NAME=FIELD=VALUE"),
        (
            ["calx=name=calc2"],
            "no collected test declares a resource named 'calx' (declared: calc)",
        ),
        (["calc.sim.carrier=x"], "calc has no sub-resource field 'sim'"),
        (["calc=name=a", "calc=name=b"], "calc.name is already set by 'calc=name=a'"),
    ],
)
def test_a_bad_override_is_a_usage_error_naming_it(pytester, run, client, overrides, message):
    pytester.makepyfile(CLASS_TEST)
    result = run(*(arg for override in overrides for arg in ("--resource", override)))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--resource*{message}*"])
    assert leases_of(client) == []


def test_an_override_of_an_unknown_field_fails_the_tests_naming_the_fields(pytester, run):
    pytester.makepyfile(CLASS_TEST)
    result = run("--resource", "calc=colour=red")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*--resource 'calc=colour=red': colour: no such field (fields: name, group, comment, *)"]
    )


def test_a_value_that_does_not_fit_its_field_fails_the_tests_naming_it(pytester, run, client):
    pytester.makepyfile(CLASS_TEST)
    result = run("--resource", "calc=port=http")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*--resource 'calc=port=http': port: 'http' is not a valid integer"]
    )
    assert leases_of(client) == []


def test_a_request_without_a_name_is_refused_saying_how_to_name_it(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        from resources.calculator.resource import Calculator


        class AddTest(unittest.TestCase):
            resources = [Calculator.request(name="calc")]

            def test_add(self):
                pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(['*needs a name*request("calc", Calculator, ...)*'])


def test_ctrl_c_in_a_test_releases_its_lease(pytester, broker, client):
    pytester.makepyfile(
        """
        import os
        import signal

        from resources.calculator.resource import Calculator


        class TestInterrupted:
            calc = Calculator.request(name="calc")

            def test_interrupted(self):
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.kill(os.getpid(), signal.SIGINT)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--broker", broker.address)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    (lease,) = leases_of(client)
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED
    assert client.get_resource("calc").owner == ""


MIXIN_TEST = """
import unittest

from resources.calculator.resource import Calculator
from sdk import request
from sdk.mixin import ResourcesMixin


class AddTest(ResourcesMixin, unittest.TestCase):
    resources = [request("calc", Calculator, name="calc")]

    def test_add(self):
        self.assertEqual(self.calc.calculate("1 + 1"), 2)

    def test_same_lease(self):
        self.assertEqual(self.calc.fencing_token, 1)


class DirtyTest(ResourcesMixin, unittest.TestCase):
    calc = Calculator.request(name="calc")

    def test_a_dirty(self):
        # The same request as AddTest's: its lease is handed on.
        self.assertEqual(self.calc.fencing_token, 1)
        self.calc.mark_dirty()

    def test_b_fresh(self):
        self.assertEqual(self.calc.fencing_token, 2)
"""


def test_the_mixin_runs_under_python_unittest(pytester, broker, client):
    pytester.makepyfile(test_mixin=MIXIN_TEST)
    finished = run_client(
        [sys.executable, "-m", "unittest", "-v", "test_mixin"], broker.address, pytester.path
    )
    assert finished.returncode == 0, finished.stderr
    assert "Ran 4 tests" in finished.stderr
    leases = leases_of(client)
    assert [lease.grants[0].fencing_token for lease in leases] == [1, 2]
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases)


def test_the_mixin_steps_aside_under_pytest(pytester, run, client):
    pytester.makepyfile(test_mixin=MIXIN_TEST)
    run().assert_outcomes(passed=4)
    assert len(leases_of(client)) == 2


def test_ctrl_c_under_unittest_releases_too(pytester, broker, client):
    pytester.makepyfile(
        test_interrupted="""
        import os
        import signal
        import unittest

        from resources.calculator.resource import Calculator
        from sdk.mixin import ResourcesMixin


        class Interrupted(ResourcesMixin, unittest.TestCase):
            calc = Calculator.request(name="calc")

            def test_interrupted(self):
                os.kill(os.getpid(), signal.SIGINT)
        """
    )
    script = "import signal, unittest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    script += "unittest.main(module='test_interrupted')"
    finished = run_client([sys.executable, "-c", script], broker.address, pytester.path)
    assert finished.returncode != 0
    assert "KeyboardInterrupt" in finished.stderr
    (lease,) = leases_of(client)
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED


def test_the_readmes_example_runs_with_an_override(pytester, run, client):
    """examples/pytest, as the README runs it: `--resource calc=name=calc2`."""
    example = Path(__file__).resolve().parents[2] / "examples" / "pytest" / "test_calculator.py"
    pytester.makepyfile(test_calculator=example.read_text())
    junit = pytester.path / "report.xml"
    result = run("-v", "--resource", "calc=name=calc2", f"--junitxml={junit}")
    result.assert_outcomes(passed=3)
    properties = junit_properties(junit)
    assert {test: values[0][1].split(" ")[0] for test, values in properties.items()} == {
        "test_add": "calc2",
        "test_multiply": "calc2",
        "test_subtract": "calc2",
    }
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases_of(client))


def test_a_test_waits_in_the_queue_at_its_priority(pytester, broker, client):
    """While `calc` is held elsewhere, the test's request waits at the
    run's priority, its place is printed, and it runs once calc is free."""
    import threading

    pytester.makepyfile(CLASS_TEST)
    held = client.lease(Calculator, name="calc", wait=0)
    outcome: dict = {}
    run_in_background = threading.Thread(
        target=lambda: outcome.update(
            result=pytester.runpytest_subprocess(
                "-p", "no:cacheprovider", "--broker", broker.address, "--lease-priority", "7"
            )
        )
    )
    with held:
        run_in_background.start()
        deadline = 60.0
        waiters: list = []
        stop = threading.Event()
        while not waiters and deadline > 0:
            waiters = list(client.list_waiters())
            stop.wait(0.05)
            deadline -= 0.05
        assert [w.priority for w in waiters] == [7]
    run_in_background.join(60)
    result = outcome["result"]
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["waiting for calc: *"])
