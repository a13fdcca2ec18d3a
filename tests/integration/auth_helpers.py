"""What the authentication tests share: the callers, and a token for each."""

from __future__ import annotations

import time

from broker.domain.tokens import Tokens
from broker.domain.values import Role
from broker.v1 import inventory_service_pb2
from tests.integration.helpers import calculator, resource

CACHE_SECONDS = 0.5
# Callers the broker must not let in, and the reason it gives each.
REFUSED = {
    "no credential": "NO_CREDENTIAL",
    "bad token": "BAD_CREDENTIAL",
    "expired token": "TOKEN_EXPIRED",
    "revoked token": "TOKEN_REVOKED",
}
# Callers with a live token: the role of each. `alice` holds the leases the
# calls act on; `bob` is another user.
ROLES = {"viewer": Role.VIEWER, "alice": Role.USER, "bob": Role.USER, "admin": Role.ADMIN}
OWN_LEASE_METHODS = {"RenewLease", "ReleaseLease", "ReportSetup"}


def metadata_of(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def make_tokens() -> dict[str, str]:
    """A live token for each of `ROLES`, and one of each refused kind."""
    tokens = Tokens()
    made = {name: tokens.create(name, role.value)[1] for name, role in ROLES.items()}
    made["bad token"] = "rbk_" + "x" * 43
    made["expired token"] = Tokens(clock=lambda: time.time() - 3600).create(
        "carol", "admin", expires_in=60
    )[1]
    made["revoked token"] = tokens.create("dave", "admin")[1]
    tokens.revoke("dave")
    return made


def create(name: str, kind: str, **fields) -> inventory_service_pb2.CreateResourceRequest:
    message = calculator(name) if kind == "Calculator" else resource(kind, name, fields)
    return inventory_service_pb2.CreateResourceRequest(resource=message)
