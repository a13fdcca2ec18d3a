"""The role table covers every method the broker serves, and decides by
role alone."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import broker.v1
from broker.api.contract import SERVICE_NAMES
from broker.api.permissions import METHOD_ROLES, authorize, required_role
from broker.domain.errors import PermissionDeniedError
from broker.domain.values import Principal, Role

# Every method of every service the generated package holds, found by
# walking it, so a service added to the contract is caught here.
SERVED = {
    f"/{service.full_name}/{method.name}"
    for info in pkgutil.iter_modules(broker.v1.__path__)
    if info.name.endswith("_pb2")
    for service in importlib.import_module(
        f"broker.v1.{info.name}"
    ).DESCRIPTOR.services_by_name.values()
    for method in service.methods
}


def test_every_served_method_is_in_the_table_and_nothing_else():
    assert {path.split("/")[1] for path in SERVED} == set(SERVICE_NAMES)
    assert set(METHOD_ROLES) == SERVED


def test_a_method_missing_from_the_table_is_for_administrators():
    assert required_role("/broker.v1.LeaseService/SomethingNew") == Role.ADMIN


@pytest.mark.parametrize("method", sorted(METHOD_ROLES))
@pytest.mark.parametrize("role", list(Role))
def test_a_role_may_call_what_its_rank_reaches(method, role):
    principal = Principal("p", role)
    if role.rank >= METHOD_ROLES[method].rank:
        authorize(method, principal)
    else:
        with pytest.raises(PermissionDeniedError) as raised:
            authorize(method, principal)
        assert raised.value.reason == "ROLE_NOT_ALLOWED"
        assert role.value in raised.value.message
