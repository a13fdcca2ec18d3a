"""Who is calling. With authentication on, the verified principal of the
call's credential, a token or a client certificate (set by the interceptor,
`broker.api.auth`); the request's `holder` is then only a description. With
it off, a caller names itself: the request's `holder` field, else the
`x-broker-holder` metadata."""

from __future__ import annotations

import contextvars

import grpc

from broker.domain.values import Principal, Role

HOLDER_METADATA = "x-broker-holder"

# The verified principal of the call being served; None with authentication
# off. Each call runs in a task of its own, so each sees only its own.
current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "broker_principal", default=None
)


def verified() -> Principal | None:
    """The call's verified principal, None with authentication off."""
    return current.get()


def named(context: grpc.ServicerContext) -> str:
    """The name the caller gave in its metadata, or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == HOLDER_METADATA:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def caller(context: grpc.ServicerContext) -> str:
    """Who acts, as events record it: the verified principal, else the
    name the caller gave."""
    principal = verified()
    return principal.name if principal is not None else named(context)


def holder(requested: str, context: grpc.ServicerContext) -> str:
    """The holder's description a lease is recorded with."""
    return requested or named(context)


def principal_name(requested: str, context: grpc.ServicerContext) -> str:
    """Whom a lease is for: the verified principal, else the holder."""
    principal = verified()
    return principal.name if principal is not None else holder(requested, context)


def acting_principal() -> str | None:
    """The principal a lease must belong to for its holder's calls (renew,
    release); None with authentication off, where the secret suffices."""
    principal = verified()
    return None if principal is None else principal.name


def visible_groups() -> tuple[str, ...] | None:
    """The groups whose resources the caller may see and be granted (and
    every resource without a group); None: all of them, for an
    administrator, or with authentication off (there are no groups then)."""
    principal = verified()
    if principal is None or principal.role == Role.ADMIN:
        return None
    return principal.groups
