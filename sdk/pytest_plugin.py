"""The pytest plugin: tests that declare lab resources get them leased,
set up and released, as Rotest's runner did (`sdk.declarations` says how
to declare them, `sdk.keeper` how they are held).

Options: `--resource NAME=FIELD=VALUE` (repeatable) overrides a
declaration's constraint on a field, as `rotest -r` did; `--skip-init` runs
only `connect()`; `--save-state` calls `store_state()` of a failed test's
resources, under `--state-dir` (default: `broker-states` in pytest's
temporary directory of the run), one directory per test; `--broker` and
`--token` default to the client configuration (`sdk.config`);
`--lease-priority` places the run's requests in the broker's queue.

The report header names the broker and the holder; each test's resources
(name, kind, fencing token and lease) are shown beside its failure and
written as junit XML properties `resource:NAME`, so a failure can be traced
to the board it ran on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

from sdk.client import BrokerClient, default_holder
from sdk.config import ClientConfig, ClientConfigError, load_client_config
from sdk.declarations import MARKER, DeclarationError, class_requests, marker_requests
from sdk.keeper import ResourceKeeper
from sdk.mixin import ResourcesMixin
from sdk.overrides import OverrideError, Overrides, parse_overrides, unknown_labels
from sdk.requirements import ResourceRequest
from sdk.waiting import Waiting

PLUGIN_NAME = "broker-resources-run"
REQUESTS = pytest.StashKey[dict[str, ResourceRequest] | None]()
DECLARATION_ERROR = pytest.StashKey[DeclarationError]()
NEXT_ITEM = pytest.StashKey[pytest.Item | None]()
CALL_OUTCOME = pytest.StashKey[tuple[bool, bool]]()  # (failed, errored)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("broker", "lab resources leased from the resource broker")
    group.addoption(
        "--resource",
        action="append",
        default=[],
        dest="broker_overrides",
        metavar="NAME=FIELD=VALUE",
        help="override a declared resource's constraint, e.g. calc=name=calc2 or "
        "calc.group=QA (repeatable)",
    )
    group.addoption(
        "--skip-init",
        action="store_true",
        dest="broker_skip_init",
        help="only connect() the resources: no validate() or initialize()",
    )
    group.addoption(
        "--save-state",
        action="store_true",
        dest="broker_save_state",
        help="store_state() of a failed test's resources into its state directory",
    )
    group.addoption(
        "--state-dir",
        dest="broker_state_dir",
        metavar="DIR",
        help="where --save-state writes, one directory per test (default: broker-states "
        "in the run's temporary directory)",
    )
    group.addoption(
        "--lease-priority",
        dest="broker_priority",
        type=int,
        default=0,
        metavar="N",
        help="the tests' place in the broker's queue, -100 to 100: higher is served first",
    )
    group.addoption(
        "--broker",
        dest="broker_target",
        metavar="HOST:PORT",
        help="the broker to lease from (default: BROKER_TARGET or the client configuration)",
    )
    group.addoption(
        "--token",
        dest="broker_token",
        metavar="TOKEN",
        help="the API token (default: BROKER_TOKEN or the client configuration)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*requests, **named): lab resources the test needs, leased for it from "
        "the resource broker and passed as fixtures of their names",
    )
    try:
        client_config = load_client_config()
        overrides = parse_overrides(config.getoption("broker_overrides"))
    except (ClientConfigError, OverrideError) as error:
        raise pytest.UsageError(str(error)) from None
    config.pluginmanager.register(BrokerResources(config, client_config, overrides), PLUGIN_NAME)


def _fixture_for(label: str) -> Any:
    """A fixture named `label` giving the resource held under that name; a
    method of the plugin object registered to carry it."""

    @pytest.fixture(name=label)
    def held_resource(self: object, _broker_resources: dict[str, Any]) -> Any:
        return _broker_resources[label]

    return held_resource


class BrokerResources:
    """The plugin's state for one run: the keeper and the fixtures made for
    the names tests declare."""

    def __init__(self, config: pytest.Config, client_config: ClientConfig, overrides) -> None:
        self.config = config
        self.client_config = client_config
        self.target = config.getoption("broker_target") or client_config.target
        token = config.getoption("broker_token")
        self.token = client_config.token if token is None else token
        self.overrides = overrides
        self._fixtures: set[str] = set()
        self.keeper = ResourceKeeper(
            self._client,
            skip_init=config.getoption("broker_skip_init"),
            save_state=config.getoption("broker_save_state"),
            priority=config.getoption("broker_priority"),
            overrides=Overrides(overrides, lambda: self.keeper.client.list_kinds()),
            on_wait=self._waiting,
        )

    def _client(self) -> BrokerClient:
        return BrokerClient(self.target, token=self.token, config=self.client_config)

    def _waiting(self, names: str, waiting: Waiting) -> None:
        """Prints a change of a waiting lease's place on the terminal, past
        the capture of the test's output (as live logging does)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(f"waiting for {names}: {waiting}")
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"waiting for {names}: {waiting}")

    # ------------------------------------------------------------- reporting

    def pytest_report_header(self, config: pytest.Config) -> str:
        holder = self.client_config.holder or default_holder()
        return f"resource broker: {self.target}, holder {holder}"

    # ------------------------------------------------------------ collection

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(self, collector: pytest.Collector, name: str, obj: object):
        """Makes a fixture for each name a marker or class declares, before
        the tests that take it as an argument are made."""
        own = getattr(obj, "pytestmark", [])
        # A class's or module's `pytestmark` may be one mark, or a list.
        own = own if isinstance(own, list) else [own]
        marks: list[pytest.Mark] = [
            found
            for found in (getattr(m, "mark", m) for m in own)
            if isinstance(found, pytest.Mark)
        ]
        marks += list(collector.iter_markers(MARKER))
        labels: set[str] = set()
        for mark in marks:
            if mark.name == MARKER:
                labels.update(mark.kwargs)
                labels.update(
                    arg.label for arg in mark.args if isinstance(arg, ResourceRequest) and arg.label
                )
        if isinstance(obj, type):
            labels.update(_quietly(class_requests, obj) or {})
        for label in labels - self._fixtures:
            self._fixtures.add(label)
            holder = type(f"ResourceFixture_{label}", (), {"fixture": _fixture_for(label)})
            self.config.pluginmanager.register(holder(), f"{PLUGIN_NAME}-{label}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        declared: set[str] = set()
        for item in session.items:
            try:
                requests = _requests_of(item)
            except DeclarationError as error:
                item.stash[DECLARATION_ERROR] = error
                requests = None
            item.stash[REQUESTS] = requests
            declared.update(requests or {})
        unknown = unknown_labels(self.overrides, declared)
        if unknown and session.items:
            names = ", ".join(sorted(declared)) or "none"
            raise pytest.UsageError(
                f"--resource {unknown[0].given!r}: no collected test declares a resource "
                f"named {unknown[0].label!r} (declared: {names})"
            )

    # ------------------------------------------------------------ running

    @pytest.fixture(autouse=True)
    def _broker_resources(self, request: pytest.FixtureRequest) -> Generator[dict[str, Any]]:
        """Holds what the test declares for it, and hands it out: as
        attributes of a test class's instance, and as the named fixtures."""
        item = request.node
        if DECLARATION_ERROR in item.stash:
            raise item.stash[DECLARATION_ERROR]
        requests = item.stash.get(REQUESTS, None)
        held: dict[str, Any] = {}
        if requests:
            try:
                held = self.keeper.hold(requests)
            except OverrideError as error:
                pytest.fail(str(error), pytrace=False)
        self._record(item)
        instance = request.instance
        if instance is not None and (requests or isinstance(instance, ResourcesMixin)):
            for label, resource in held.items():
                setattr(instance, label, resource)
            instance._broker_held = True
            instance._broker_release = self.keeper.release_resources
            instance._broker_request = self.keeper.request_resources
            if not hasattr(instance, "release_resources"):
                instance.release_resources = self.keeper.release_resources
            if not hasattr(instance, "request_resources"):
                instance.request_resources = _setting_attributes(
                    instance, self.keeper.request_resources
                )
        yield held
        if not requests and not self.keeper.requested_mid_test:
            return
        self._record(item)  # what it asked for mid-test
        failed, errored = item.stash.get(CALL_OUTCOME, (False, False))
        nextitem = item.stash.get(NEXT_ITEM, None)
        following = None if nextitem is None else nextitem.stash.get(REQUESTS, None)
        stored = self.keeper.finish(
            failed=failed,
            errored=errored,
            state_dir=self._state_dir(item) if failed else None,
            keep=self._keeps(following),
        )
        for directory in stored:
            item.user_properties.append(("resource state", directory))

    def _record(self, item: pytest.Item) -> None:
        """Adds what the test holds to its report's properties, once each."""
        recorded = {name for name, _ in item.user_properties}
        for record in self.keeper.held():
            name = f"resource:{record.label}"
            if name not in recorded:
                item.user_properties.append((name, str(record)))

    @pytest.fixture
    def request_resources(self) -> Any:
        """Leases more, mid-test: `request_resources([request("calc2",
        Calculator)])` returns name -> resource, held until the test ends."""
        return self.keeper.request_resources

    @pytest.fixture
    def release_resources(self) -> Any:
        """Gives back some of what the test holds, by name, mid-test:
        `release_resources(["calc"])`."""
        return self.keeper.release_resources

    def _keeps(self, following: dict[str, ResourceRequest] | None) -> bool:
        try:
            return self.keeper.keeps(following)
        except OverrideError:
            return False

    def _state_dir(self, item: pytest.Item) -> str:
        root = self.config.getoption("broker_state_dir")
        if not root:
            factory = self.config._tmp_path_factory  # type: ignore[attr-defined]
            root = str(factory.getbasetemp() / "broker-states")
        name = re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")[-150:]
        return os.path.join(root, name)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        """Notes how the test ended (a failed assertion leaves its resources
        clean, another error makes them dirty), and shows what it held
        beside its failure."""
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        if report.when == "call":
            errored = call.excinfo is not None and not call.excinfo.errisinstance(AssertionError)
            item.stash[CALL_OUTCOME] = (report.failed, report.failed and errored)
        held = [
            f"{name.removeprefix('resource:')}: {value}"
            for name, value in item.user_properties
            if name.startswith("resource:")
        ]
        if held and report.failed:
            report.sections.append(("resources held", "\n".join(held)))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        item.stash[NEXT_ITEM] = nextitem

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.keeper.close()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.keeper.close()


def _requests_of(item: pytest.Item) -> dict[str, ResourceRequest] | None:
    """What one test declares: its class's requests, then its markers',
    the closest marker winning a name given twice."""
    requests = class_requests(getattr(item, "cls", None))
    for mark in reversed(list(item.iter_markers(MARKER))):
        requests.update(marker_requests(mark.args, mark.kwargs))
    return requests or None


def _setting_attributes(instance: object, request_resources: Any) -> Any:
    """`request_resources` that also sets each resource as an attribute of
    the test's instance, as Rotest's did."""

    def requested(requests: Any) -> dict[str, Any]:
        held = request_resources(requests)
        for label, resource in held.items():
            setattr(instance, label, resource)
        return held

    return requested


def _quietly(function, *args):
    try:
        return function(*args)
    except DeclarationError:
        return None
