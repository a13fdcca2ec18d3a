"""The inventory on a real SQLite database: creating with typed fields,
reading and listing, updating with a mask and etags, deleting."""

from __future__ import annotations

import json

import pytest

from broker.domain import paging
from broker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from broker.domain.values import (
    AcquireRequest,
    Constraint,
    EventType,
    NewResource,
    ResourcePatch,
)
from broker.models.event import Event
from broker.models.resource import Resource
from tests.unit.builders import calc, events_of, field_of, licence, need, phone


def names(page) -> list[str]:
    return [view.name for view in page.items]


def patch(name: str, *paths: str, fields: dict | None = None, **values) -> ResourcePatch:
    return ResourcePatch(name, paths, fields or {}, **values)


def grant(leases, *requirements, holder="alice"):
    return leases.acquire(AcquireRequest(tuple(requirements), None, holder))


# --------------------------------------------------------------- create


def test_create_fills_defaults(inventory, clock):
    view = inventory.create(phone("p1", os="android"))
    assert view.name == "p1"
    assert view.kind == "Phone"
    assert view.fields == {"os": "android", "version": 0, "rooted": False, "battery": None}
    assert (view.is_usable, view.comment, view.group, view.reserved_for) == (True, "", "", "")
    assert (view.owner, view.lease_ids, view.fencing_token) == ("", (), 0)
    assert view.create_time == view.update_time == clock.now
    assert view.etag
    assert inventory.get("p1") == view
    [event] = events_of(EventType.RESOURCE_CREATED)
    assert (event.resource, event.time) == ("p1", clock.now)


def test_create_keeps_every_given_value(inventory):
    view = inventory.create(
        NewResource(
            "p1",
            "Phone",
            {"os": "ios", "version": 17, "rooted": True, "battery": 3200.5},
            is_usable=False,
            comment="cracked screen",
            group="bench-3",
            reserved_for="alice",
        )
    )
    assert view.fields == {"os": "ios", "version": 17, "rooted": True, "battery": 3200.5}
    assert (view.is_usable, view.comment, view.group, view.reserved_for) == (
        False,
        "cracked screen",
        "bench-3",
        "alice",
    )


def test_create_calculator_with_optional_port_unset(inventory):
    view = inventory.create(calc("c1", ip_address="10.0.0.7"))
    assert view.fields == {"ip_address": "10.0.0.7", "port": None}


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::FFFF:10.0.0.1", "::ffff:a00:1"),
        ("192.168.1.20", "192.168.1.20"),
    ],
)
def test_create_normalises_ip_addresses(inventory, address, stored):
    assert inventory.create(calc("c1", ip_address=address)).fields["ip_address"] == stored


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewResource("p1", "Phone", {}), "resource.fields.os"),
        (NewResource("c1", "Calculator", {"port": 1}), "resource.fields.ip_address"),
        (NewResource("l1", "Licence", {}), "resource.fields.product"),
        (phone("p1", os=7), "resource.fields.os"),
        (phone("p1", os="x" * 33), "resource.fields.os"),
        (phone("p1", fields={"version": "14"}), "resource.fields.version"),
        (phone("p1", fields={"version": 14.0}), "resource.fields.version"),
        (phone("p1", fields={"version": True}), "resource.fields.version"),
        (phone("p1", fields={"version": 2**63}), "resource.fields.version"),
        (phone("p1", fields={"rooted": 1}), "resource.fields.rooted"),
        (phone("p1", fields={"rooted": "yes"}), "resource.fields.rooted"),
        (phone("p1", fields={"battery": "full"}), "resource.fields.battery"),
        (phone("p1", fields={"battery": float("inf")}), "resource.fields.battery"),
        (phone("p1", fields={"colour": "red"}), "resource.fields.colour"),
        (calc("c1", ip_address="10.0.0.256"), "resource.fields.ip_address"),
        (calc("c1", ip_address="calc.lab"), "resource.fields.ip_address"),
        (NewResource("c1", "Calculator", {"ip_address": 167772161}), "resource.fields.ip_address"),
        (phone(""), "resource.name"),
        (phone("has space"), "resource.name"),
        (phone("a/b"), "resource.name"),
        (phone("caf\u00e9"), "resource.name"),
        (phone("x" * 129), "resource.name"),
        (NewResource("p1", "", {"os": "android"}), "resource.kind"),
        (phone("p1", comment="c" * 4097), "resource.comment"),
        (phone("p1", group="g" * 129), "resource.group"),
        (phone("p1", reserved_for="r" * 129), "resource.reserved_for"),
    ],
)
def test_create_refuses_bad_input_and_changes_nothing(inventory, new, field):
    with pytest.raises(InvalidArgumentError) as error:
        inventory.create(new)
    assert field_of(error) == field
    assert Resource.select().count() == 0
    assert Event.select().count() == 0


@pytest.mark.parametrize("name", ["x" * 128, "a.b_c-1", "A9"])
def test_create_accepts_valid_names(inventory, name):
    assert inventory.create(phone(name)).name == name


def test_create_converts_an_integer_for_a_float_field(inventory):
    view = inventory.create(phone("p1", fields={"battery": 3000}))
    assert view.fields["battery"] == 3000.0
    assert isinstance(view.fields["battery"], float)


def test_create_duplicate_name_already_exists_across_kinds(inventory):
    inventory.create(phone("dut"))
    with pytest.raises(AlreadyExistsError) as error:
        inventory.create(calc("dut"))
    assert (error.value.resource_type, error.value.resource_name) == ("resource", "dut")
    assert inventory.get("dut").kind == "Phone"
    assert len(events_of(EventType.RESOURCE_CREATED)) == 1


def test_create_unknown_kind_is_not_found(inventory):
    with pytest.raises(NotFoundError) as error:
        inventory.create(NewResource("t1", "Toaster", {}))
    assert (error.value.resource_type, error.value.resource_name) == ("kind", "Toaster")


def test_list_kinds_describes_every_kind(inventory):
    kinds = inventory.list_kinds()
    assert [kind.name for kind in kinds] == ["Calculator", "Licence", "Phone"]
    assert [kind.ownable for kind in kinds] == [True, False, True]


# ------------------------------------------------------------ get, list


def test_get_unknown_or_malformed_name(inventory):
    with pytest.raises(NotFoundError) as error:
        inventory.get("nothing")
    assert error.value.resource_type == "resource"
    with pytest.raises(InvalidArgumentError) as invalid:
        inventory.get("no such/name")
    assert field_of(invalid) == "name"


@pytest.fixture
def stocked(inventory):
    """Calculators, phones and a licence, created out of name order."""
    inventory.create(phone("p2", os="ios", group="bench-1"))
    inventory.create(calc("c1", ip_address="2001:db8::1", group="bench-1"))
    inventory.create(phone("p1", os="android", fields={"version": 14}, group="bench-2"))
    inventory.create(licence("l1"))
    inventory.create(phone("p3", os="android", fields={"version": 13}))
    return inventory


def test_list_everything_by_name_with_typed_fields(stocked):
    page = stocked.list("", (), 0, "")
    assert names(page) == ["c1", "l1", "p1", "p2", "p3"]
    assert page.next_page_token == ""
    by_name = {view.name: view for view in page.items}
    assert by_name["c1"].fields == {"ip_address": "2001:db8::1", "port": None}
    assert by_name["p1"].fields["version"] == 14
    assert by_name["l1"].fields == {"product": "matlab"}


def test_list_by_kind_and_constraints(stocked):
    assert names(stocked.list("Phone", (), 0, "")) == ["p1", "p2", "p3"]
    android = (Constraint("os", ("android",)),)
    assert names(stocked.list("Phone", android, 0, "")) == ["p1", "p3"]
    both = (Constraint("os", ("android",)), Constraint("version", (13,)))
    assert names(stocked.list("Phone", both, 0, "")) == ["p3"]
    any_of = (Constraint("os", ("ios", "tizen")),)
    assert names(stocked.list("Phone", any_of, 0, "")) == ["p2"]
    by_group = (Constraint("group", ("bench-1",)),)
    assert names(stocked.list("", by_group, 0, "")) == ["c1", "p2"]


def test_list_normalises_an_address_constraint(stocked):
    constraint = (Constraint("ip_address", ("2001:DB8:0::1",)),)
    assert names(stocked.list("Calculator", constraint, 0, "")) == ["c1"]


@pytest.mark.parametrize(
    ("kind", "constraint", "field"),
    [
        ("", Constraint("os", ("android",)), "constraints[0]"),
        ("Phone", Constraint("colour", ("red",)), "constraints[0]"),
        ("Phone", Constraint("version", ("14",)), "constraints[0].equals"),
        ("Phone", Constraint("os", ()), "constraints[0]"),
        ("Phone", Constraint("", ("x",)), "constraints[0].field"),
    ],
)
def test_list_refuses_bad_constraints(stocked, kind, constraint, field):
    with pytest.raises(InvalidArgumentError) as error:
        stocked.list(kind, (constraint,), 0, "")
    assert field_of(error) == field


def test_list_unknown_kind_is_not_found(stocked):
    with pytest.raises(NotFoundError):
        stocked.list("Toaster", (), 0, "")


def test_list_pages(stocked):
    seen, token, pages = [], "", 0
    while True:
        page = stocked.list("", (), 2, token)
        assert len(page.items) <= 2
        seen += names(page)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ["c1", "l1", "p1", "p2", "p3"]
    assert pages == 3
    first = stocked.list("Phone", (), 2, "")
    rest = stocked.list("Phone", (), 2, first.next_page_token)
    assert (names(first), names(rest), rest.next_page_token) == (["p1", "p2"], ["p3"], "")


@pytest.mark.parametrize(
    ("size", "token", "field"),
    [
        pytest.param(0, "%%%", "page_token", id="garbage"),
        pytest.param(0, paging.encode_token({"time": 1.0, "id": "x"}), "page_token", id="lease"),
        pytest.param(0, paging.encode_token({"after": 5}), "page_token", id="after-int"),
        pytest.param(0, paging.encode_token({"after": None}), "page_token", id="after-null"),
        pytest.param(0, paging.encode_token({"after": ["a", "b"]}), "page_token", id="after-list"),
        pytest.param(0, paging.encode_token({"after": {"a": 1}}), "page_token", id="after-dict"),
        pytest.param(-1, "", "page_size", id="negative-size"),
        pytest.param(1001, "", "page_size", id="size-too-big"),
    ],
)
def test_list_refuses_bad_paging(stocked, size, token, field):
    with pytest.raises(InvalidArgumentError) as error:
        stocked.list("", (), size, token)
    assert field_of(error) == field


# --------------------------------------------------------------- update


def test_update_changes_only_the_masked_common_fields(inventory, clock):
    before = inventory.create(phone("p1", group="bench-1"))
    clock.advance(10)
    after = inventory.update(patch("p1", "comment", comment="flaky usb", group="ignored"))
    assert after.comment == "flaky usb"
    assert after.group == "bench-1"
    assert after.etag != before.etag
    assert (after.create_time, after.update_time) == (before.create_time, clock.now)
    [event] = events_of(EventType.RESOURCE_UPDATED)
    assert (event.resource, json.loads(event.detail)) == ("p1", {"paths": ["comment"]})


def test_update_typed_fields_by_name(inventory):
    inventory.create(phone("p1", fields={"version": 13, "battery": 3000.0}))
    view = inventory.update(
        patch("p1", "fields.version", "fields.battery", fields={"version": 14, "os": "ios"})
    )
    # `battery` is named without a value: cleared; `os` is given but not named: kept.
    assert view.fields == {"os": "android", "version": 14, "rooted": False, "battery": None}


def test_update_fields_path_sets_every_given_field(inventory):
    inventory.create(phone("p1", fields={"version": 13, "battery": 3000.0}))
    view = inventory.update(patch("p1", "fields", fields={"os": "ios", "rooted": True}))
    assert view.fields == {"os": "ios", "version": 13, "rooted": True, "battery": 3000.0}


def test_update_normalises_an_address(inventory):
    inventory.create(calc("c1"))
    view = inventory.update(patch("c1", "fields.ip_address", fields={"ip_address": "FE80::1"}))
    assert view.fields["ip_address"] == "fe80::1"


def test_marking_unusable_records_an_event_once(inventory):
    inventory.create(phone("p1"))
    view = inventory.update(patch("p1", "is_usable", "comment", is_usable=False, comment="dead"))
    assert (view.is_usable, view.comment) == (False, "dead")
    [event] = events_of(EventType.RESOURCE_MARKED_UNUSABLE)
    assert (event.resource, json.loads(event.detail)) == ("p1", {"comment": "dead"})
    inventory.update(patch("p1", "is_usable", is_usable=False))
    assert len(events_of(EventType.RESOURCE_MARKED_UNUSABLE)) == 1
    assert inventory.update(patch("p1", "is_usable", is_usable=True)).is_usable is True


def test_update_with_the_current_etag_succeeds(inventory):
    view = inventory.create(phone("p1"))
    assert inventory.update(patch("p1", "group", group="g", etag=view.etag)).group == "g"


def test_update_with_a_stale_etag_conflicts_and_changes_nothing(inventory):
    stale = inventory.create(phone("p1")).etag
    current = inventory.update(patch("p1", "comment", comment="first"))
    with pytest.raises(ConflictError):
        inventory.update(
            patch(
                "p1",
                "comment",
                "is_usable",
                "fields.version",
                fields={"version": 99},
                comment="second",
                is_usable=False,
                etag=stale,
            )
        )
    assert inventory.get("p1") == current
    assert len(events_of(EventType.RESOURCE_UPDATED)) == 1
    assert events_of(EventType.RESOURCE_MARKED_UNUSABLE) == []


@pytest.mark.parametrize(
    ("resource_patch", "field"),
    [
        (patch("p1"), "update_mask"),
        (patch("p1", "name"), "update_mask"),
        (patch("p1", "kind"), "update_mask"),
        (patch("p1", "fencing_token"), "update_mask"),
        (patch("p1", "comment.text"), "update_mask"),
        (patch("p1", "fields.colour", fields={"colour": "red"}), "update_mask"),
        (patch("p1", "fields", fields={"colour": "red"}), "resource.fields.colour"),
        (patch("p1", "fields.version", fields={"version": "x"}), "resource.fields.version"),
        (patch("p1", "fields.os"), "resource.fields.os"),
        (patch("p1", "comment", comment="c" * 4097), "resource.comment"),
        (patch("bad name", "comment"), "resource.name"),
    ],
)
def test_update_refuses_bad_input_and_changes_nothing(inventory, resource_patch, field):
    before = inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        inventory.update(resource_patch)
    assert field_of(error) == field
    assert inventory.get("p1") == before
    assert events_of(EventType.RESOURCE_UPDATED) == []


def test_update_unknown_resource_is_not_found(inventory):
    with pytest.raises(NotFoundError):
        inventory.update(patch("ghost", "comment", comment="x"))


def test_update_of_a_held_resource_keeps_its_holder(inventory, leases):
    inventory.create(phone("p1"))
    granted = grant(leases, need("Phone"))
    view = inventory.update(patch("p1", "comment", comment="in use"))
    assert view.lease_ids == (granted.lease.lease_id,)
    assert view.owner == "alice"


# --------------------------------------------------------------- delete


def test_delete_removes_the_resource_and_records_it(inventory):
    view = inventory.create(phone("p1"))
    inventory.delete("p1", view.etag)
    with pytest.raises(NotFoundError):
        inventory.get("p1")
    assert [e.resource for e in events_of(EventType.RESOURCE_DELETED)] == ["p1"]
    # The name is free again, and the kind's row went with the resource.
    assert inventory.create(phone("p1", os="ios")).fields["os"] == "ios"


def test_delete_is_refused_while_leased_and_allowed_after_release(inventory, leases):
    inventory.create(phone("p1"))
    granted = grant(leases, need("Phone"))
    with pytest.raises(FailedPreconditionError) as error:
        inventory.delete("p1", "")
    violation = error.value.violations[0]
    assert (violation.type, violation.subject) == ("RESOURCE_LEASED", "resources/p1")
    assert granted.lease.lease_id in violation.description
    assert inventory.get("p1").lease_ids == (granted.lease.lease_id,)
    leases.release(granted.lease.lease_id, granted.secret)
    inventory.delete("p1", "")
    assert Resource.select().count() == 0


def test_delete_of_a_shared_resource_held_by_a_lease_is_refused(inventory, leases):
    inventory.create(licence("l1"))
    first = grant(leases, need("Licence"), holder="alice")
    second = grant(leases, need("Licence"), holder="bob")
    leases.release(first.lease.lease_id, first.secret)
    with pytest.raises(FailedPreconditionError) as error:
        inventory.delete("l1", "")
    assert error.value.violations[0].type == "RESOURCE_LEASED"
    assert second.lease.lease_id in error.value.violations[0].description
    leases.revoke(second.lease.lease_id, "decommissioning")
    inventory.delete("l1", "")
    assert events_of(EventType.RESOURCE_DELETED)[0].resource == "l1"


def test_delete_with_a_stale_etag_conflicts(inventory):
    stale = inventory.create(phone("p1")).etag
    inventory.update(patch("p1", "comment", comment="changed"))
    with pytest.raises(ConflictError):
        inventory.delete("p1", stale)
    assert inventory.get("p1").comment == "changed"
    assert events_of(EventType.RESOURCE_DELETED) == []


def test_delete_unknown_or_malformed_name(inventory):
    with pytest.raises(NotFoundError):
        inventory.delete("ghost", "")
    with pytest.raises(InvalidArgumentError) as error:
        inventory.delete("", "")
    assert field_of(error) == "name"
