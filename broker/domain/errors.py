"""What can go wrong, in the domain's words. `broker.api.errors` maps each class
to a status code and its details; nothing else decides codes."""

from __future__ import annotations

import dataclasses

from broker.domain.values import HolderView, Obstacle

# The most of any caller's input an error quotes: an error travels in the
# response's trailing metadata, which is small.
QUOTE_LIMIT = 64


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as an error may quote it: at most `limit` characters, then "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


class BrokerError(Exception):
    """Base of every error the broker reports to a caller."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, named by its path (`requirements[0].count`);
    an empty path means the request as a whole."""

    field: str
    description: str


class InvalidArgumentError(BrokerError):
    """The request is malformed; nothing was changed."""

    def __init__(self, violations: list[FieldViolation] | FieldViolation):
        self.violations = violations if isinstance(violations, list) else [violations]
        super().__init__(
            "; ".join(
                f"{v.field}: {v.description}" if v.field else v.description for v in self.violations
            )
        )

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgumentError:
        return cls(FieldViolation(field, description))


class NotFoundError(BrokerError):
    """The named kind, resource or lease does not exist (its name clipped,
    like any input an error quotes)."""

    def __init__(self, resource_type: str, resource_name: str):
        self.resource_type = resource_type
        self.resource_name = clip(resource_name)
        super().__init__(f"{resource_type} {self.resource_name!r} not found")


class AlreadyExistsError(BrokerError):
    """A resource with that name exists already."""

    def __init__(self, resource_type: str, resource_name: str):
        self.resource_type = resource_type
        self.resource_name = clip(resource_name)
        super().__init__(f"{resource_type} {self.resource_name!r} already exists")


class UnauthenticatedError(BrokerError):
    """The call carries no credential the broker accepts; `reason` says why
    (`NO_CREDENTIAL`, `BAD_CREDENTIAL`, `TOKEN_EXPIRED`, `TOKEN_REVOKED`;
    for OIDC tokens also `WRONG_AUDIENCE`, `WRONG_ISSUER`, `BAD_SIGNATURE`,
    `UNKNOWN_KEY`, `JWKS_UNAVAILABLE`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class PermissionDeniedError(BrokerError):
    """The caller may not do this: not the holder (missing or wrong lease
    secret, another principal's lease), or its role does not allow it."""

    def __init__(self, message: str, reason: str = "NOT_HOLDER"):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PreconditionViolation:
    """Why the system's state refuses the request: `type` is a short code
    (`UNKNOWN_KIND`, `LEASE_EXPIRED`, …), `subject` what it is about."""

    type: str
    subject: str
    description: str


class FailedPreconditionError(BrokerError):
    """The request can never succeed in the present state; waiting won't help."""

    def __init__(self, violation: PreconditionViolation, *more: PreconditionViolation):
        super().__init__(violation.description)
        self.violations = [violation, *more]


class ResourceBusyError(BrokerError):
    """The resources exist but cannot be had now: held, reserved for a
    while, kept for a request ahead; `obstacles` says why, resource by
    resource."""

    def __init__(
        self,
        requirement_index: int,
        label: str,
        kind: str,
        holders: list[HolderView],
        obstacles: list[Obstacle] | None = None,
    ):
        obstacles = obstacles or []
        who = ", ".join(f"{h.resource} by {h.holder or h.lease_id}" for h in holders[:3])
        why = "; ".join(o.text for o in obstacles[:3])
        super().__init__(
            f"requirements[{requirement_index}] ({label or kind}) cannot be satisfied now"
            + (f": {why}" if why else f": held ({who})" if who else "")
        )
        self.requirement_index = requirement_index
        self.label = label
        self.kind = kind
        self.holders = holders
        self.obstacles = obstacles


class QuotaExceededError(BrokerError):
    """A principal holds so many resources that granting the request would
    pass its quota; it may wait for its own releases."""

    def __init__(self, principal: str, limit: int, held: int, needed: int):
        self.principal = clip(principal)
        self.limit = limit
        self.held = held
        self.needed = needed
        super().__init__(
            f"principal {self.principal!r} holds {held} of the {limit} resources its quota "
            f"allows (quotas.max_resources) and this request needs {needed} more: release "
            "some, or let the request wait (max_wait)"
        )


class LimitExceededError(BrokerError):
    """A limit of the broker's own was reached; `limit` names its setting."""

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit


class DeadlineExceededError(BrokerError):
    """The caller's wait ended before its request could be granted."""


class ConflictError(BrokerError):
    """An optimistic check failed (stale etag, lost race); re-read and retry."""


class UnavailableError(BrokerError):
    """The broker cannot serve now (shutting down, database unreachable)."""


class OutOfRangeError(BrokerError):
    """A position the caller gave lies outside what is kept (an event cursor
    older than retention)."""
