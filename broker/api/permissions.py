"""THE table of which role may call which method. Each role includes the
ones below it (viewer < user < admin). A method missing from the table is
for administrators only, so a new method is never open by mistake."""

from __future__ import annotations

from broker.domain.errors import PermissionDeniedError
from broker.domain.values import Principal, Role

_INVENTORY = "/broker.v1.InventoryService/"
_LEASES = "/broker.v1.LeaseService/"
_EVENTS = "/broker.v1.EventService/"
_ACCESS = "/broker.v1.AccessService/"

METHOD_ROLES: dict[str, Role] = {
    _INVENTORY + "ListKinds": Role.VIEWER,
    _INVENTORY + "GetResource": Role.VIEWER,
    _INVENTORY + "ListResources": Role.VIEWER,
    _INVENTORY + "CreateResource": Role.ADMIN,
    _INVENTORY + "UpdateResource": Role.ADMIN,
    _INVENTORY + "DeleteResource": Role.ADMIN,
    _INVENTORY + "SetOutOfService": Role.ADMIN,
    _INVENTORY + "ReturnToService": Role.ADMIN,
    _LEASES + "GetLease": Role.VIEWER,
    _LEASES + "ListLeases": Role.VIEWER,
    _LEASES + "ListWaiters": Role.VIEWER,
    _EVENTS + "ListEvents": Role.VIEWER,
    _EVENTS + "WatchEvents": Role.VIEWER,
    _EVENTS + "GetUsageStats": Role.VIEWER,
    _ACCESS + "GetCaller": Role.VIEWER,
    # A user's own leases: renew and release also need the lease's secret
    # and its principal (`broker.domain.leasing`).
    _LEASES + "AcquireLease": Role.USER,
    _LEASES + "WatchAcquireLease": Role.USER,
    _LEASES + "OpenSession": Role.USER,
    _LEASES + "RenewLease": Role.USER,
    _LEASES + "ReleaseLease": Role.USER,
    _LEASES + "ReleaseResources": Role.USER,
    # Also needs the lease's secret and its principal.
    _LEASES + "ReportSetup": Role.USER,
    _LEASES + "RevokeLease": Role.ADMIN,
}


def required_role(method: str) -> Role:
    """The least role that may call `method` (its full gRPC path)."""
    return METHOD_ROLES.get(method, Role.ADMIN)


def authorize(method: str, principal: Principal) -> None:
    """PERMISSION_DENIED unless the principal's role allows the method,
    decided from the method alone, before anything it names is looked up."""
    needed = required_role(method)
    if principal.role.rank < needed.rank:
        name = method.rsplit("/", 1)[-1]
        raise PermissionDeniedError(
            f"{principal.name} has the role {principal.role.value}, and {name} needs "
            f"{needed.value} or above: ask an administrator for a token with that role",
            "ROLE_NOT_ALLOWED",
        )
