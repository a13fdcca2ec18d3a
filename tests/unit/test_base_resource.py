"""`BaseResource`: its data built from the granted resource, the Rotest
lifecycle order, and the state guard on every hook."""

from __future__ import annotations

import peewee
import pytest

from broker.field_values import to_field_value
from broker.kind_data import ResourceData
from broker.v1 import resource_pb2
from sdk.base_resource import BaseResource, ResourceState, StateError, check_active


class ProbeData(ResourceData):
    """A kind for these tests only; never stored."""

    serial = peewee.CharField()
    slots = peewee.IntegerField(null=True)


class Probe(BaseResource):
    """Records each hook it runs; `valid` is what `validate()` answers."""

    DATA_CLASS = ProbeData

    def __init__(self, resource: resource_pb2.Resource, fencing_token: int = 0) -> None:
        super().__init__(resource, fencing_token)
        self.calls: list[str] = []
        self.valid = False
        self.fail_in: str | None = None

    def _record(self, hook: str) -> None:
        self.calls.append(hook)
        if self.fail_in == hook:
            raise RuntimeError(f"{hook} failed")

    def connect(self) -> None:
        self._record("connect")
        super().connect()

    def validate(self) -> bool:
        self._record("validate")
        return self.valid

    def initialize(self) -> None:
        self._record("initialize")

    def finalize(self) -> None:
        self._record("finalize")

    def store_state(self, directory: str) -> None:
        self._record(f"store_state {directory}")

    @check_active
    def measure(self) -> str:
        return "ok"


def granted(**common) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        name="probe-1",
        kind="Probe",
        fields={"serial": to_field_value("S-42"), "slots": to_field_value(4)},
        **common,
    )


@pytest.fixture
def probe() -> Probe:
    return Probe(granted(is_usable=True, group="bench-3"), fencing_token=17)


def test_data_holds_typed_and_common_fields() -> None:
    probe = Probe(granted(comment="spare", group="bench-3", reserved_for="alice"), 17)
    assert isinstance(probe.data, ProbeData)
    assert (probe.data.serial, probe.data.slots) == ("S-42", 4)
    assert (probe.data.name, probe.data.kind) == ("probe-1", "Probe")
    assert (probe.data.comment, probe.data.group, probe.data.reserved_for) == (
        "spare",
        "bench-3",
        "alice",
    )
    assert probe.data.is_usable is True
    assert (probe.name, probe.fencing_token) == ("probe-1", 17)


def test_unusable_is_kept() -> None:
    assert Probe(granted(is_usable=False)).data.is_usable is False


def test_invalid_resource_is_initialized(probe: Probe) -> None:
    probe.setup()
    assert probe.calls == ["connect", "validate", "initialize"]
    assert probe.state is ResourceState.INITIALIZED


def test_valid_resource_is_not_initialized(probe: Probe) -> None:
    probe.valid = True
    probe.setup()
    assert probe.calls == ["connect", "validate"]
    assert probe.state is ResourceState.CONNECTED


def test_force_initialize_skips_validate(probe: Probe) -> None:
    probe.valid = True
    probe.setup(force_initialize=True)
    assert probe.calls == ["connect", "initialize"]


@pytest.mark.parametrize("force_initialize", [False, True])
def test_skip_init_only_connects(probe: Probe, force_initialize: bool) -> None:
    probe.setup(skip_init=True, force_initialize=force_initialize)
    assert probe.calls == ["connect"]
    assert probe.state is ResourceState.CONNECTED


def test_teardown_finalizes_once(probe: Probe) -> None:
    probe.setup()
    probe.teardown()
    probe.teardown()
    assert probe.calls == ["connect", "validate", "initialize", "finalize"]
    assert probe.state is ResourceState.FINALIZED


def test_teardown_of_a_resource_never_connected_does_nothing(probe: Probe) -> None:
    probe.teardown()
    assert probe.calls == []
    assert probe.state is ResourceState.NEW


def test_failed_connect_is_still_finalized(probe: Probe) -> None:
    probe.fail_in = "connect"
    with pytest.raises(RuntimeError, match="connect failed"):
        probe.setup()
    assert probe.state is ResourceState.CONNECTING
    with pytest.raises(
        StateError, match=r"validate\(\) cannot run while the resource is connecting"
    ):
        probe.validate()
    probe.teardown()
    assert probe.calls == ["connect", "finalize"]


def test_failed_finalize_still_ends(probe: Probe) -> None:
    probe.setup()
    probe.fail_in = "finalize"
    with pytest.raises(RuntimeError, match="finalize failed"):
        probe.teardown()
    assert probe.state is ResourceState.FINALIZED


@pytest.mark.parametrize("hook", ["validate", "initialize", "finalize"])
def test_hooks_before_connect_raise_state_error(probe: Probe, hook: str) -> None:
    with pytest.raises(StateError) as raised:
        getattr(probe, hook)()
    assert (raised.value.method, raised.value.state) == (hook, ResourceState.NEW)
    assert str(raised.value) == f"{hook}() cannot run while the resource is new"
    assert probe.calls == []


def test_store_state_needs_an_open_resource(probe: Probe, tmp_path) -> None:
    with pytest.raises(StateError, match=r"store_state\(\)"):
        probe.store_state(str(tmp_path))
    probe.setup()
    probe.store_state(str(tmp_path))
    assert probe.calls[-1] == f"store_state {tmp_path}"


def test_connect_twice_raises(probe: Probe) -> None:
    probe.setup()
    with pytest.raises(
        StateError, match=r"connect\(\) cannot run while the resource is initialized"
    ):
        probe.connect()


def test_nothing_runs_after_finalize(probe: Probe) -> None:
    probe.setup()
    probe.teardown()
    for hook in ("connect", "validate", "initialize", "finalize"):
        with pytest.raises(StateError, match="finalized"):
            getattr(probe, hook)()


def test_check_active_guards_own_methods(probe: Probe) -> None:
    with pytest.raises(StateError, match=r"measure\(\) cannot run while the resource is new"):
        probe.measure()
    probe.setup()
    assert probe.measure() == "ok"
    probe.teardown()
    with pytest.raises(StateError, match="finalized"):
        probe.measure()


def test_base_hooks_default_to_nothing() -> None:
    class Plain(BaseResource):
        DATA_CLASS = ProbeData

    plain = Plain(granted())
    assert plain.validate.__name__ == "validate"
    plain.setup()
    assert plain.state is ResourceState.INITIALIZED
    plain.teardown()
    assert plain.state is ResourceState.FINALIZED


def test_request_names_the_kind() -> None:
    wanted = Probe.request(count=2, group="bench-3", name=["probe-1", "probe-2"])
    requirement = wanted.to_requirement("probes")
    assert (requirement.kind, requirement.count, requirement.label) == ("Probe", 2, "probes")
    by_field = {constraint.field: constraint for constraint in requirement.constraints}
    assert by_field["group"].equals.string_value == "bench-3"
    assert [value.string_value for value in by_field["name"].any_of.values] == [
        "probe-1",
        "probe-2",
    ]
