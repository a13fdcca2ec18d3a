"""Complex resources, as in Rotest: a kind whose data names another kind's
data in a `ForeignKeyField` is leased with the resource that field names,
which the SDK hangs from it (`handset.sim`, `handset.sim.parent`,
`handset.data.sim`). Which class a sub-resource gets, the order of the
lifecycle (sub-resources first, at once with `PARALLEL_INITIALIZATION`;
finalized last, in reverse), dirty sub-resources, giving back a parent,
constraints through a sub-resource field, the CLI and the pytest plugin."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import types
import xml.etree.ElementTree as ElementTree

import peewee
import pytest

from broker.kind_data import ResourceData
from broker.v1 import lease_pb2
from sdk import BaseResource, BrokerClient, BrokerError, request
from sdk.base_resource import resource_class_for
from sdk.cli import main as cli_main
from sdk.keeper import ResourceKeeper
from sdk.overrides import Overrides, parse_overrides
from tests.conftest import make_config, wait_serving
from tests.kinds import TREE_KINDS, DualSimHandsetData, HandsetData, SimData
from tests.sdk.test_readme_snippets import (
    BIN,
    assert_lints_clean,
    blocks,
    commands,
    run_console,
    run_python,
    section,
)

# What the resources below did, in order: "connect sim1", "finalize h1", ...
CALLS: list[str] = []


class Recorded(BaseResource):
    """Records each hook it runs in `CALLS`, and its state in a file."""

    DATA_CLASS = None  # a base of the kinds below, not a kind of its own

    def connect(self):
        CALLS.append(f"connect {self.name}")

    def initialize(self):
        CALLS.append(f"initialize {self.name}")

    def finalize(self):
        CALLS.append(f"finalize {self.name}")

    def store_state(self, directory):
        with open(f"{directory}/state.txt", "w") as state:
            state.write(f"{self.name} at {self.fencing_token}")


class SimCard(Recorded):
    """The one class declaring `DATA_CLASS = SimData`: what a SIM gets
    unless its parent names another."""

    DATA_CLASS = SimData


class Handset(Recorded):
    DATA_CLASS = HandsetData


class TraySim(SimCard):
    """A variant of `SimCard` (it inherits its `DATA_CLASS`), chosen only
    where a parent names it."""

    def connect(self):
        CALLS.append(f"connect tray {self.name}")


class TrayHandset(Handset):
    SUB_RESOURCES = {"sim": TraySim}


class DualSimHandset(Recorded):
    DATA_CLASS = DualSimHandsetData


class BarrierSim(SimCard):
    """A SIM whose `initialize()` waits for the other SIM's at `barrier`:
    done one after the other, the first one waits alone and the barrier
    breaks."""

    barrier = threading.Barrier(2)
    fails = ""

    def initialize(self):
        self.barrier.wait()
        super().initialize()
        if self.name == self.fails:
            raise RuntimeError(f"{self.name} has no signal")


class ParallelHandset(DualSimHandset):
    SUB_RESOURCES = {"sim": BarrierSim, "sim2": BarrierSim}
    PARALLEL_INITIALIZATION = True


class SequentialHandset(DualSimHandset):
    SUB_RESOURCES = {"sim": BarrierSim, "sim2": BarrierSim}


class FailingSim(SimCard):
    def initialize(self):
        raise RuntimeError(f"{self.name} has no signal")


class FailingSimHandset(Handset):
    SUB_RESOURCES = {"sim": FailingSim}


@pytest.fixture
def config(tmp_path, database_url):
    return dataclasses.replace(make_config(tmp_path, database_url), kinds=TREE_KINDS)


@pytest.fixture(autouse=True)
def calls():
    CALLS.clear()
    yield CALLS
    CALLS.clear()


@pytest.fixture
def handsets(client):
    """h1 (an x with sim1 of att), h2 (no SIM), h3 (a y with sim3 of tmo),
    dual1 (sim4 and sim5), and sim6 in nothing."""
    for name, carrier, slots in (
        ("sim1", "att", 2),
        ("sim3", "tmo", 1),
        ("sim4", "att", 1),
        ("sim5", "tmo", 1),
        ("sim6", "att", 1),
    ):
        client.create_resource("Sim", name, {"carrier": carrier, "slots": slots})
    client.create_resource("Handset", "h1", {"model": "x", "sim": "sim1"})
    client.create_resource("Handset", "h2", {"model": "x"})
    client.create_resource("Handset", "h3", {"model": "y", "sim": "sim3"})
    client.create_resource("DualSimHandset", "dual1", {"sim": "sim4", "sim2": "sim5"})
    return client


def grants_of(client: BrokerClient, lease_id: str) -> dict[str, lease_pb2.Grant]:
    return {grant.resource.name: grant for grant in client.get_lease(lease_id).grants}


# ------------------------------------------------------------------ the tree


def test_a_handset_is_leased_with_its_sim_hanging_from_it(handsets):
    lease = handsets.lease_many({"phone": request(Handset, name="h1")}, wait=0)
    with lease as held:
        assert list(held) == ["phone"]  # the SIM stands under no label of its own
        phone = held["phone"]
        sim = phone.sim
        assert type(sim) is SimCard and sim.name == "sim1"
        assert sim.parent is phone and phone.parent is None
        assert phone.children == [sim] and phone.sub_resources == {"sim": sim}
        assert lease.instances == [phone]
        # The FK gives back the child's own data: no query was made for it.
        assert phone.data.sim is sim.data
        assert (phone.data.sim.carrier, phone.data.sim.slots) == ("att", 2)
        assert (phone.data.model, phone.data.name) == ("x", "h1")
        grants = grants_of(handsets, lease.lease_id)
        assert grants["sim1"].parent == "h1" and grants["h1"].parent == ""
        assert grants["sim1"].label == grants["h1"].label == "phone"
        assert sim.fencing_token == grants["sim1"].fencing_token > 0
        assert phone.fencing_token == grants["h1"].fencing_token > 0
        assert lease.fencing_tokens == {"h1": phone.fencing_token, "sim1": sim.fencing_token}
        assert handsets.get_resource("sim1").parent == "h1"
        assert list(handsets.get_resource("sim1").lease_ids) == [lease.lease_id]
    assert handsets.get_lease(lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert handsets.get_resource("sim1").owner == ""


def test_a_handset_without_a_sim_has_no_children(handsets):
    with handsets.lease(Handset, name="h2", wait=0) as phone:
        assert phone.children == [] and phone.data.sim is None
        assert not hasattr(phone, "sim")


def test_a_sim_leased_alone_has_no_parent(handsets):
    with handsets.lease(SimCard, name="sim6", wait=0) as sim:
        assert sim.parent is None and sim.children == []
        assert sim.data.carrier == "att"


def test_a_parent_names_the_class_of_its_sub_resource(handsets, calls):
    with handsets.lease(TrayHandset, name="h1", wait=0) as phone:
        assert type(phone.sim) is TraySim and phone.sim.parent is phone
    assert calls[0] == "connect tray sim1"


def test_the_one_class_serving_a_data_class_is_found():
    assert Handset.sub_resource_class("sim") is SimCard
    assert TrayHandset.sub_resource_class("sim") is TraySim
    assert resource_class_for(SimData) is SimCard  # TraySim only inherits it


class LonelyData(ResourceData):
    """No class declares it as its DATA_CLASS."""


class ContestedData(ResourceData):
    """Two classes declare it as their DATA_CLASS."""


class Contender(BaseResource):
    DATA_CLASS = ContestedData


class Rival(BaseResource):
    DATA_CLASS = ContestedData


class HolderData(ResourceData):
    lonely = peewee.ForeignKeyField(LonelyData, null=True, backref="+")
    contested = peewee.ForeignKeyField(ContestedData, null=True, backref="+")


class Holder(BaseResource):
    DATA_CLASS = HolderData


def test_a_data_class_no_class_serves_gets_a_plain_resource():
    plain = Holder.sub_resource_class("lonely")
    assert issubclass(plain, BaseResource) and plain.DATA_CLASS is LonelyData
    assert plain.kind_name() == "Lonely"
    assert {name: getattr(plain, name) for name in ("connect", "initialize", "finalize")} == {
        name: getattr(BaseResource, name) for name in ("connect", "initialize", "finalize")
    }
    assert Holder.sub_resource_class("lonely") is plain  # made once
    assert resource_class_for(LonelyData) is plain  # and never taken for a declared one


def test_several_classes_serving_a_data_class_must_be_chosen_between():
    with pytest.raises(
        TypeError, match=r"several classes serve ContestedData \(.*Contender, .*Rival\)"
    ):
        Holder.sub_resource_class("contested")


def test_sub_resources_name_only_sub_resource_fields_with_fitting_classes():
    with pytest.raises(TypeError, match="names 'model', not a sub-resource field"):
        type(
            "Bad", (BaseResource,), {"DATA_CLASS": HandsetData, "SUB_RESOURCES": {"model": SimCard}}
        )
    with pytest.raises(
        TypeError,
        match=r"SUB_RESOURCES\['sim'\] is a BaseResource subclass whose DATA_CLASS is SimData",
    ):
        type("Bad", (BaseResource,), {"DATA_CLASS": HandsetData, "SUB_RESOURCES": {"sim": Handset}})
    with pytest.raises(KeyError, match="no sub-resource field 'model'"):
        Handset.sub_resource_class("model")


# ------------------------------------------------------------- the lifecycle


def test_sub_resources_are_set_up_first_and_finalized_last_in_reverse(handsets, calls):
    with handsets.lease(DualSimHandset, name="dual1", wait=0) as phone:
        assert [child.name for child in phone.children] == ["sim4", "sim5"]
        assert (phone.sim.name, phone.sim2.name) == ("sim4", "sim5")
        assert calls == [
            "connect sim4",
            "initialize sim4",
            "connect sim5",
            "initialize sim5",
            "connect dual1",
            "initialize dual1",
        ]
        calls.clear()
    assert calls == ["finalize dual1", "finalize sim5", "finalize sim4"]


def test_skip_init_only_connects_the_sub_resources_too(handsets, calls):
    with handsets.lease(Handset, name="h1", skip_init=True, wait=0):
        assert calls == ["connect sim1", "connect h1"]


def test_parallel_initialization_sets_the_sub_resources_up_at_once(handsets, calls):
    # Each SIM's initialize() waits for the other's: done one after the
    # other, the first would wait alone until the barrier breaks.
    BarrierSim.barrier = threading.Barrier(2, timeout=10)
    BarrierSim.fails = ""
    with handsets.lease(ParallelHandset, name="dual1", wait=0) as phone:
        assert sorted(calls[:4]) == [
            "connect sim4",
            "connect sim5",
            "initialize sim4",
            "initialize sim5",
        ]
        assert calls[4:] == ["connect dual1", "initialize dual1"]
        assert not BarrierSim.barrier.broken
        assert [type(child) for child in phone.children] == [BarrierSim, BarrierSim]
    assert calls[-3:] == ["finalize dual1", "finalize sim5", "finalize sim4"]


def test_without_it_they_are_set_up_one_after_the_other(handsets, calls):
    # The control of the test above: the first SIM waits alone.
    BarrierSim.barrier = threading.Barrier(2, timeout=0.5)
    BarrierSim.fails = ""
    with pytest.raises(threading.BrokenBarrierError):
        handsets.lease(SequentialHandset, name="dual1", wait=0).__enter__()
    # sim5 was never set up, nor the handset; sim4 was finalized.
    assert calls == ["connect sim4", "finalize sim4"]
    assert handsets.get_resource("dual1").owner == ""


def test_a_parallel_failure_propagates_once_every_sub_resource_is_done(handsets, calls):
    BarrierSim.barrier = threading.Barrier(2, timeout=10)
    BarrierSim.fails = "sim4"
    with pytest.raises(RuntimeError, match="sim4 has no signal"):
        handsets.lease(ParallelHandset, name="dual1", wait=0).__enter__()
    # sim5 finished its setup; the handset's own never ran; both SIMs were
    # finalized, in reverse order.
    assert "initialize sim5" in calls and "connect dual1" not in calls
    assert calls[-2:] == ["finalize sim5", "finalize sim4"]
    assert handsets.get_resource("dual1").owner == ""


def test_a_failing_sub_resource_stops_its_parents_setup_and_is_reported(handsets, calls):
    lease = handsets.lease_many({"phone": request(FailingSimHandset, name="h1")}, wait=0)
    with pytest.raises(RuntimeError, match="sim1 has no signal"):
        lease.__enter__()
    assert calls == ["connect sim1", "finalize sim1"]
    assert handsets.get_lease(lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    # The broker counts the failure against the SIM, not the handset.
    assert handsets.get_resource("sim1").setup_failures == 1
    assert handsets.get_resource("h1").setup_failures == 0


def test_the_state_of_a_sub_resource_is_stored_beside_its_parents(handsets, tmp_path):
    states = tmp_path / "states"
    lease = handsets.lease(Handset, name="h1", save_state=True, state_dir=str(states))
    with pytest.raises(AssertionError, match="the test failed"), lease as phone:
        tokens = (phone.fencing_token, phone.sim.fencing_token)
        raise AssertionError("the test failed")
    assert (states / "h1" / "state.txt").read_text() == f"h1 at {tokens[0]}"
    assert (states / "h1" / "sim" / "state.txt").read_text() == f"sim1 at {tokens[1]}"


def test_lock_holds_the_sub_resources_with_their_parent(handsets, calls):
    phone = Handset.lock(client=handsets, name="h1", wait=0)
    try:
        assert phone.sim.parent is phone and phone.data.sim.carrier == "att"
        lease_id = phone._locked_by.lease_id
        phone.sim.release()  # a no-op: the SIM goes with its handset
        assert handsets.get_lease(lease_id).state == lease_pb2.LEASE_STATE_ACTIVE
    finally:
        phone.release()
    assert calls[-2:] == ["finalize h1", "finalize sim1"]
    assert handsets.get_lease(lease_id).state == lease_pb2.LEASE_STATE_RELEASED


# ------------------------------------------------- dirty, partial release


def test_a_dirty_sub_resource_has_its_parent_released_after_the_test(handsets):
    keeper = ResourceKeeper(lambda: handsets)
    wanted = {"phone": request(Handset, name="h1")}
    try:
        phone = keeper.hold(wanted)["phone"]
        assert [(r.label, r.name) for r in keeper.held()] == [
            ("phone", "h1"),
            ("phone.sim", "sim1"),
        ]
        first = keeper.held()[0].lease_id
        phone.sim.mark_dirty()
        assert phone.sim.dirty and phone.dirty
        assert not keeper.keeps(wanted)
        keeper.finish(failed=False, errored=False, state_dir=None, keep=True)
        assert handsets.get_lease(first).state == lease_pb2.LEASE_STATE_RELEASED
        again = keeper.hold(wanted)["phone"]
        assert again is not phone and not again.sim.dirty
        assert keeper.leases_taken == 2
    finally:
        keeper.release()


def test_giving_back_a_parent_gives_back_its_sub_resources(handsets, calls):
    lease = handsets.lease_many(
        {"phone": request(Handset, name="h1"), "spare": request(SimCard, name="sim6")}, wait=0
    )
    with lease as held:
        spare = held["spare"]
        calls.clear()
        lease.release_resources(["phone"])
        assert list(held) == ["spare"] and lease.instances == [spare]
        assert calls == ["finalize h1", "finalize sim1"]
        assert lease.fencing_tokens == {"sim6": spare.fencing_token}
        grants = grants_of(handsets, lease.lease_id)
        assert grants["h1"].HasField("release_time") and grants["sim1"].HasField("release_time")
        assert not grants["sim6"].HasField("release_time")
        assert handsets.get_resource("sim1").owner == ""
        # What was given back is free for anyone else at once.
        with handsets.lease(Handset, name="h1", wait=0) as phone:
            assert phone.sim.name == "sim1"
        calls.clear()
    assert calls == ["finalize sim6"]  # the handset is not finalized twice


def test_a_sub_resource_is_not_given_back_without_its_parent(handsets):
    lease = handsets.lease_many({"phone": request(Handset, name="h1")}, wait=0)
    with lease:
        with pytest.raises(BrokerError):
            handsets.release_resources(lease.lease_id, lease._secret, ["sim1"])
        with pytest.raises(KeyError, match="'sim' is not held"):
            lease.release_resources(["sim"])
        assert grants_of(handsets, lease.lease_id)["sim1"].HasField("release_time") is False


# ------------------------------------------------------------ constraints


def test_constraints_reach_through_a_sub_resource_field(handsets):
    with handsets.lease(Handset, sim__carrier="tmo", wait=0) as phone:
        assert (phone.name, phone.sim.name) == ("h3", "sim3")
    with handsets.lease(Handset, sim="sim1", wait=0) as phone:
        assert phone.name == "h1"
    with handsets.lease(Handset, sim__name__startswith="sim3", wait=0) as phone:
        assert phone.name == "h3"
    names = [r.name for r in handsets.list_resources("Handset", where={"sim__slots__gte": 2})]
    assert names == ["h1"]


def test_overrides_type_a_path_through_a_sub_resource_field(handsets):
    overrides = Overrides(
        parse_overrides(["phone=sim__slots__gte=2", "phone=sim__carrier=att"]),
        handsets.list_kinds,
    )
    applied = overrides.apply({"phone": request(Handset, model="x")})
    assert applied["phone"].constraints == {
        "model": "x",
        "sim__slots__gte": 2,
        "sim__carrier": "att",
    }
    with handsets.lease(Handset, **applied["phone"].constraints, wait=0) as phone:
        assert phone.name == "h1"


# --------------------------------------------------------------------- CLI


def test_the_cli_shows_and_sets_sub_resource_fields(broker, handsets, capsys):
    def run(*args: str) -> str:
        assert cli_main(["--target", broker.address, *args]) == 0
        return capsys.readouterr().out

    (line,) = [row for row in run("kinds").splitlines() if row.startswith("Handset ")]
    assert "sim:reference(Sim)" in line and "model:string" in line
    run("resources", "add", "Handset", "h9", "--set", "model=z", "--set", "sim=sim6")
    assert handsets.get_resource("h9").fields["sim"].string_value == "sim6"
    assert "parent:" in run("resources", "show", "sim6")
    assert run("resources", "show", "sim6").count("h9") == 1
    listed = run("resources", "list", "--kind", "Handset", "--where", "sim.carrier=tmo")
    assert [row.split()[0] for row in listed.splitlines()[1:]] == ["h3"]
    sims = run("resources", "list", "--kind", "Sim").splitlines()
    assert "PARENT" in sims[0]
    assert {row.split()[0]: row.split()[5] for row in sims[1:]} == {
        "sim1": "h1",
        "sim3": "h3",
        "sim4": "dual1",
        "sim5": "dual1",
        "sim6": "h9",
    }


def test_the_cli_refuses_a_path_where_a_field_is_set(broker, handsets, capsys):
    code = cli_main(
        ["--target", broker.address, "resources", "update", "h1", "--set", "sim.carrier=x"]
    )
    assert code == 2
    assert "--set sim.carrier: no such field (fields: model, sim)" in capsys.readouterr().err


def test_a_lease_shows_which_grant_is_whose_sub_resource(broker, handsets, capsys):
    lease = handsets.lease_many({"phone": request(Handset, name="h1")}, wait=0)
    with lease:
        assert cli_main(["--target", broker.address, "leases", "show", lease.lease_id]) == 0
    rows = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert rows[0].split() == ["RESOURCE", "KIND", "LABEL", "PARENT", "FENCING", "TOKEN"]
    assert [row.split()[:4] for row in rows[1:]] == [
        ["h1", "Handset", "phone", "-"],
        ["sim1", "Sim", "phone", "h1"],
    ]


# ----------------------------------------------------------- pytest plugin


PHONE_TEST = """
from sdk import request
from tests.sdk.test_sub_resources import Handset


class TestPhone:
    resources = [request("phone", Handset, name="h1")]

    def test_sim(self):
        assert self.phone.sim.parent is self.phone
        assert self.phone.data.sim.carrier == "att"
        print("held", self.phone.sim.name, self.phone.sim.fencing_token)

    def test_dirty_sim(self):
        self.phone.sim.mark_dirty()

    def test_after(self):
        assert self.phone.sim.name == "sim1"
"""


def test_a_test_class_gets_the_sub_resources_of_what_it_declares(pytester, broker, handsets):
    pytester.makepyfile(test_phone=PHONE_TEST)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--broker", broker.address, "-s", f"--junitxml={junit}"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*held sim1 *"])
    leases = list(reversed(list(handsets.list_leases())))
    # The dirty SIM had its handset released after its test.
    assert [[g.resource.name for g in lease.grants] for lease in leases] == [
        ["h1", "sim1"],
        ["h1", "sim1"],
    ]
    assert all(lease.state == lease_pb2.LEASE_STATE_RELEASED for lease in leases)
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ElementTree.parse(junit).iter("testcase")
    }
    assert set(properties["test_sim"]) == {"resource:phone", "resource:phone.sim"}
    assert properties["test_sim"]["resource:phone.sim"].startswith("sim1 (Sim, fencing token ")


# ------------------------------------------------------------------ README


def test_the_readmes_example_runs_on_a_broker_serving_its_kinds(tmp_path):
    text = section("Tests that declare resources").split("**Sub-resources.**")[1]
    text = text.split("**From a shell")[0]
    kind, usage = blocks(text, "python")
    (console,) = blocks(text, "console")
    path = kind.splitlines()[0].removeprefix("# ").strip()
    assert path == "mylab/handset.py"
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / path).write_text(kind)
    assert_lints_clean(tmp_path / path)
    (tmp_path / "rotest.yml").write_text(
        f"database:\n  url: sqlite:///{tmp_path / 'broker.sqlite3'}\n"
        "kinds:\n  - mylab.handset.SimData\n  - mylab.handset.HandsetData\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    log = (tmp_path / "broker.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "broker"), "serve", "--config", "rotest.yml", "--address", address],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(address, timeout=60)
        # As pasted from the clone's root, with mylab/ on the import path.
        environment = {**os.environ, "BROKER_TARGET": address, "PYTHONPATH": str(tmp_path)}
        for command in commands(console):
            run_console(command, 0, environment)
        stdout = run_python(usage, types.SimpleNamespace(address=address), environment)
        shown = usage.strip().splitlines()[-1].removeprefix("# ")
        assert stdout.strip() == shown == "h1 sim1 True att"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
