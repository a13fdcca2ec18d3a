"""Sub-resources, on both backends: a kind's field naming a resource of
another kind, kept as that resource's id and shown as its name; the parent
granted with its sub-resources in one step; a parent that is no candidate
while a sub-resource is held or kept, and a sub-resource alone that is none
while its parent is held, out of service or reserved for someone else; the
queue serving a parent once a sub-resource held alone comes back."""

from __future__ import annotations

import dataclasses
import threading

import peewee
import pytest

from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceBusyError,
)
from broker.domain.kinds import KindDeclarationError, KindRegistry
from broker.domain.values import (
    AcquireRequest,
    Check,
    Constraint,
    FieldType,
    Granted,
    LeaseState,
    NewResource,
    Requirement,
    ResourcePatch,
    Waiting,
)
from broker.kind_data import ResourceData
from tests.conftest import make_config
from tests.kinds import TREE_KINDS, HandsetData, SimData
from tests.unit.builders import need


@pytest.fixture
def config(tmp_path, database_url):
    return dataclasses.replace(make_config(tmp_path, database_url), kinds=TREE_KINDS)


def sim(name: str, carrier: str = "att", **common) -> NewResource:
    return NewResource(name, "Sim", {"carrier": carrier}, **common)


def handset(name: str, sim_name: str | None = None, **common) -> NewResource:
    return NewResource(name, "Handset", {"model": "pixel", "sim": sim_name}, **common)


def ask(leases, *requirements: Requirement, holder: str = "alice", max_wait: float = 0.0):
    return leases.acquire(AcquireRequest(tuple(requirements), holder=holder, max_wait=max_wait))


def hold(leases, *requirements: Requirement, holder: str = "alice") -> Granted:
    granted = ask(leases, *requirements, holder=holder)
    assert isinstance(granted, Granted), granted
    return granted


@pytest.fixture
def tree(inventory):
    """Handset h1 holding sim1; sim2 in no handset."""
    inventory.create(sim("sim1", "att"))
    inventory.create(sim("sim2", "tmobile"))
    inventory.create(handset("h1", "sim1"))


# ------------------------------------------------------------- the kinds


def test_list_kinds_describes_a_sub_resource_field(inventory):
    (spec,) = [k for k in inventory.list_kinds() if k.name == "Handset"]
    field = spec.field("sim")
    assert field is not None
    assert (field.type, field.kind, field.required, field.default) == (
        FieldType.REFERENCE,
        "Sim",
        False,
        None,
    )


def _kind(name: str, **fields) -> type[ResourceData]:
    return type(name, (ResourceData,), {"__module__": __name__, **fields})


def test_a_sub_resource_kind_must_be_served():
    with pytest.raises(KindDeclarationError, match="its kind 'Sim' is not served"):
        KindRegistry([HandsetData])


def test_sub_resources_are_one_level_deep():
    rack = _kind("RackData", phone=peewee.ForeignKeyField(HandsetData, null=True, backref="+"))
    with pytest.raises(KindDeclarationError, match="one level deep"):
        KindRegistry([SimData, HandsetData, rack])


def test_a_sub_resource_field_must_point_to_a_kind():
    class Plain(peewee.Model):
        pass

    broken = _kind("BrokenData", other=peewee.ForeignKeyField(Plain, null=True, backref="+"))
    with pytest.raises(KindDeclarationError, match="must point to another kind's ResourceData"):
        KindRegistry([broken])


def test_both_kinds_of_a_tree_are_ownable():
    shared = _kind("SharedSimData", OWNABLE=False, carrier=peewee.CharField(default=""))
    holder = _kind("HolderData", sim=peewee.ForeignKeyField(shared, null=True, backref="+"))
    with pytest.raises(KindDeclarationError, match="both kinds must be ownable"):
        KindRegistry([shared, holder])


def test_the_family_of_a_kind_spans_its_tree(kinds):
    assert kinds.family(["Sim"]) == {"Sim", "Handset", "DualSimHandset"}
    assert kinds.family(["Handset"]) == {"Sim", "Handset"}
    assert kinds.family(["Calculator"]) == {"Calculator"}


# ------------------------------------------------------------ inventory


def test_the_field_holds_the_sub_resource_by_name(inventory, tree):
    assert inventory.get("h1").fields["sim"] == "sim1"
    assert inventory.get("sim1").parent == "h1"
    assert inventory.get("sim2").parent == ""
    listed = {view.name: view for view in inventory.list("Handset", (), 10, "").items}
    assert listed["h1"].fields["sim"] == "sim1"
    # Stored as the sub-resource's id, not its name.
    row = HandsetData.get()
    assert row.__data__["sim"] != "sim1" and isinstance(row.__data__["sim"], int)


def test_a_field_names_an_existing_resource_of_its_kind(inventory, tree):
    inventory.create(NewResource("c1", "Calculator", {"ip_address": "10.0.0.1"}))
    with pytest.raises(InvalidArgumentError, match="there is no Sim 'nope'") as error:
        inventory.create(handset("h2", "nope"))
    assert error.value.violations[0].field == "resource.fields.sim"
    with pytest.raises(InvalidArgumentError, match="there is no Sim 'c1'"):
        inventory.create(handset("h2", "c1"))
    with pytest.raises(InvalidArgumentError, match="the name of a Sim resource"):
        inventory.create(NewResource("h2", "Handset", {"sim": 5}))
    assert [v.name for v in inventory.list("Handset", (), 10, "").items] == ["h1"]


def test_a_resource_is_the_sub_resource_of_one_resource(inventory, tree):
    with pytest.raises(FailedPreconditionError, match="already a sub-resource of 'h1'"):
        inventory.create(handset("h2", "sim1"))
    assert inventory.get("sim1").parent == "h1"


def test_moving_and_clearing_a_sub_resource(inventory, tree):
    inventory.update(ResourcePatch("h1", ("fields.sim",), fields={"sim": "sim2"}))
    assert inventory.get("h1").fields["sim"] == "sim2"
    assert (inventory.get("sim1").parent, inventory.get("sim2").parent) == ("", "h1")
    inventory.update(ResourcePatch("h1", ("fields.sim",), fields={"sim": None}))
    assert inventory.get("h1").fields["sim"] is None
    assert inventory.get("sim2").parent == ""


def test_a_sub_resource_is_deleted_only_once_no_resource_names_it(inventory, tree):
    with pytest.raises(FailedPreconditionError, match="sub-resource of 'h1'"):
        inventory.delete("sim1", "")
    inventory.get("sim1")
    inventory.delete("h1", "")
    assert inventory.get("sim1").parent == ""
    inventory.delete("sim1", "")


def test_a_held_resource_keeps_its_sub_resources(inventory, leases, tree):
    hold(leases, need("Handset"))
    with pytest.raises(FailedPreconditionError, match="change them once it is released"):
        inventory.update(ResourcePatch("h1", ("fields.sim",), fields={"sim": "sim2"}))
    assert inventory.get("h1").fields["sim"] == "sim1"


# ------------------------------------------------------------- granting


def test_the_parent_is_granted_with_its_sub_resources(inventory, leases, tree):
    granted = hold(leases, need("Handset", label="phone"))
    grants = granted.lease.grants
    assert [(g.resource.name, g.label, g.parent) for g in grants] == [
        ("h1", "phone", ""),
        ("sim1", "phone", "h1"),
    ]
    assert grants[1].resource.parent == "h1"
    assert grants[0].resource.fields["sim"] == "sim1"
    lease_id = granted.lease.lease_id
    assert inventory.get("sim1").lease_ids == (lease_id,)
    assert inventory.get("sim1").fencing_token == grants[1].fencing_token == 1
    # Read back, the lease shows the same.
    again = leases.get(lease_id).grants
    assert [(g.resource.name, g.parent) for g in again] == [("h1", ""), ("sim1", "h1")]
    leases.release(lease_id, granted.secret)
    assert inventory.get("sim1").lease_ids == ()


def test_a_sub_resource_alone_waits_for_its_parent(inventory, leases, tree):
    hold(leases, need("Handset"), holder="alice")
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Sim", name="sim1"), holder="bob")
    # Another SIM, in no handset, is granted.
    assert hold(leases, need("Sim"), holder="bob").lease.grants[0].resource.name == "sim2"


def test_a_parent_waits_while_a_sub_resource_is_held_alone(inventory, leases, tree):
    hold(leases, need("Sim", name="sim1"), holder="alice")
    with pytest.raises(ResourceBusyError) as error:
        ask(leases, need("Handset"), holder="bob")
    (obstacle,) = error.value.obstacles
    assert obstacle.resource == "h1"
    assert "h1: its sub-resource sim1 is held by alice" in obstacle.text


def test_the_queue_serves_the_parent_when_its_sub_resource_comes_back(inventory, leases, tree):
    alone = hold(leases, need("Sim", name="sim1"), holder="alice")
    waiting = ask(leases, need("Handset"), holder="bob", max_wait=60)
    assert isinstance(waiting, Waiting)
    leases.release(alone.lease.lease_id, alone.secret)
    status = leases.wait_status(waiting.waiter_id)
    assert isinstance(status, Granted), status
    assert [g.resource.name for g in status.lease.grants] == ["h1", "sim1"]


def test_the_queue_serves_a_sub_resource_when_its_parent_comes_back(inventory, leases, tree):
    whole = hold(leases, need("Handset"), holder="alice")
    waiting = ask(leases, need("Sim", name="sim1"), holder="bob", max_wait=60)
    assert isinstance(waiting, Waiting)
    leases.release(whole.lease.lease_id, whole.secret)
    status = leases.wait_status(waiting.waiter_id)
    assert isinstance(status, Granted), status
    assert status.lease.grants[0].resource.parent == "h1"


def test_maintenance_of_a_parent_covers_its_sub_resources(inventory, leases, tree):
    inventory.set_out_of_service("h1", "cracked screen")
    with pytest.raises(FailedPreconditionError, match="its parent h1 is out of service"):
        ask(leases, need("Sim", name="sim1"), holder="bob")
    inventory.return_to_service("h1")
    assert hold(leases, need("Sim", name="sim1"), holder="bob")


def test_a_parent_is_out_of_reach_while_a_sub_resource_is_out_of_service(inventory, leases, tree):
    inventory.set_out_of_service("sim1", "expired")
    with pytest.raises(FailedPreconditionError, match="its sub-resource sim1 is out of service"):
        ask(leases, need("Handset"), holder="bob")


def test_a_reservation_of_a_parent_covers_its_sub_resources(inventory, leases, tree):
    inventory.update(ResourcePatch("h1", ("reserved_for",), {}, reserved_for="carol"))
    with pytest.raises(ResourceBusyError) as error:
        ask(leases, need("Sim", name="sim1"), holder="bob")
    assert "its parent h1 is reserved for carol" in error.value.obstacles[0].text
    assert hold(leases, need("Sim", name="sim1"), holder="carol")


def test_a_request_for_a_parent_and_a_sub_resource_takes_another_one(inventory, leases, tree):
    granted = hold(leases, need("Handset", label="phone"), need("Sim", label="spare"))
    assert [(g.label, g.resource.name) for g in granted.lease.grants] == [
        ("phone", "h1"),
        ("phone", "sim1"),
        ("spare", "sim2"),
    ]


def test_constraints_reach_through_sub_resources(inventory, leases, tree):
    inventory.create(sim("sim3", "verizon"))
    inventory.create(handset("h2", "sim3"))
    inventory.create(handset("h3"))

    def names(*constraints: Constraint) -> list[str]:
        return [v.name for v in inventory.list("Handset", constraints, 10, "").items]

    assert names(Constraint("sim.carrier", ("verizon",))) == ["h2"]
    assert names(Constraint("sim", ("sim1",))) == ["h1"]
    assert names(Constraint("sim.name", ("sim1", "sim3"))) == ["h1", "h2"]
    assert names(Constraint("sim.carrier", ("att",), negate=True)) == ["h2", "h3"]
    assert names(Constraint("sim.slots", (1,), Check.AT_LEAST)) == ["h1", "h2"]
    granted = hold(leases, Requirement("Handset", (Constraint("sim.carrier", ("verizon",)),)))
    assert granted.lease.grants[0].resource.name == "h2"
    with pytest.raises(InvalidArgumentError, match="Sim, which has no field 'colour'"):
        names(Constraint("sim.colour", ("red",)))
    with pytest.raises(InvalidArgumentError, match="model is no sub-resource field"):
        names(Constraint("model.x", ("red",)))


def test_giving_back_a_parent_gives_back_its_sub_resources(inventory, leases, tree):
    inventory.create(NewResource("c1", "Calculator", {"ip_address": "10.0.0.1"}))
    granted = hold(leases, need("Handset"), need("Calculator"))
    lease_id, secret = granted.lease.lease_id, granted.secret
    with pytest.raises(FailedPreconditionError, match="give back 'h1', and it goes with it"):
        leases.release_resources(lease_id, secret, ["sim1"])
    lease = leases.release_resources(lease_id, secret, ["h1"])
    assert lease.state == LeaseState.ACTIVE
    given = {g.resource.name: g.release_time is not None for g in lease.grants}
    assert given == {"h1": True, "sim1": True, "c1": False}
    assert inventory.get("sim1").lease_ids == ()


def test_the_quota_counts_what_was_asked_for(inventory, leases, tree, database):
    from broker.models import lease as lease_model

    hold(leases, need("Handset"), holder="alice")
    assert lease_model.resources_held("alice", LeaseState.ACTIVE) == 1


def test_a_parent_and_its_sub_resource_raced_by_two_clients(inventory, leases, tree):
    """Two callers at once, one for the handset and one for its SIM alone:
    one of them gets what it asked for, the other is refused, and the SIM
    is never held twice."""
    for round_ in range(10):
        barrier = threading.Barrier(2, timeout=30)
        outcomes: dict[str, object] = {}

        def take(who: str, requirement: Requirement, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            try:
                outcomes[who] = ask(leases, requirement, holder=who)
            except ResourceBusyError as error:
                outcomes[who] = error

        threads = [
            threading.Thread(target=take, args=("alice", need("Handset"))),
            threading.Thread(target=take, args=("bob", need("Sim", name="sim1"))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        granted = [o for o in outcomes.values() if isinstance(o, Granted)]
        assert len(outcomes) == 2 and len(granted) == 1, (round_, outcomes)
        (winner,) = granted
        holders = inventory.get("sim1").lease_ids
        assert holders == (winner.lease.lease_id,)
        handset_holders = inventory.get("h1").lease_ids
        assert handset_holders == (
            (winner.lease.lease_id,) if len(winner.lease.grants) == 2 else ()
        )
        leases.release(winner.lease.lease_id, winner.secret)


# What a tree adds to a grant and its release, in statements (round trips),
# over those of a resource without sub-resources (`test_statement_counts`):
# the grant reads the sub-resources' rows; the release offers the freed
# resources' relatives to the queue.
TREE_COST = {"sqlite": {"acquire": 1, "release": 1}, "postgresql": {"acquire": 1, "release": 1}}


def test_a_tree_costs_a_statement_more_to_grant_and_to_release(
    database, inventory, leases, tree, database_url
):
    from tests.statement_counter import counting
    from tests.unit.test_statement_counts import PINNED

    backend = database_url.split(":", 1)[0]
    for name in ("warm", "probe"):
        inventory.create(sim(f"{name}-sim"))
        inventory.create(handset(name, f"{name}-sim"))
    counts = {}
    for name in ("warm", "probe"):
        with counting(database) as acquired:
            granted = hold(leases, need("Handset", name=name))
        with counting(database) as released:
            leases.release(granted.lease.lease_id, granted.secret)
        counts = {"acquire": acquired.count, "release": released.count}
    assert len(granted.lease.grants) == 2
    extra = {call: counts[call] - PINNED[backend][call] for call in counts}
    assert extra == TREE_COST[backend], f"{acquired}\n\n{released}"
