"""Per-principal quotas: how many resources one principal may hold at once
(`quotas.max_resources`, overridden per principal by `quotas.principals`;
0 means no limit).

What counts: every resource granted to the principal's active leases,
ownable or not (a shared licence counts as much as a phone); a request
counts the resources it asks for. A request bigger than the limit by itself
could never be granted; one that would pass the limit now waits (reserving
nothing, so it holds up no other principal's request) or is refused, as
its caller chose. Counting is one indexed read, made only for a principal
that has a limit. Leases recorded before principals were (schema 3 and
older) count for nobody.

Everything here runs inside the caller's write transaction, which the
brokers take one at a time, so two grants to one principal cannot both
see room for themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from broker.domain.errors import (
    FailedPreconditionError,
    PreconditionViolation,
    QuotaExceededError,
    clip,
)
from broker.domain.values import LeaseState
from broker.models import lease as lease_model


@dataclasses.dataclass(frozen=True)
class Standing:
    """Where a principal stands against its quota, for one request."""

    principal: str
    limit: int
    held: int
    needed: int

    @property
    def over(self) -> bool:
        """Whether granting the request now would pass the quota."""
        return self.held + self.needed > self.limit

    def text(self) -> str:
        return (
            f"waiting for its quota: principal {clip(self.principal)!r} holds {self.held} of "
            f"the {self.limit} resources its quota allows and this request needs {self.needed}"
        )

    def exceeded(self) -> QuotaExceededError:
        return QuotaExceededError(self.principal, self.limit, self.held, self.needed)


class Quotas:
    """The configured limits and the counting behind them."""

    def __init__(self, max_resources: int = 0, principals: Mapping[str, int] | None = None):
        self.max_resources = max_resources
        self.principals = dict(principals or {})

    def limit_of(self, principal: str) -> int:
        """The principal's limit; 0: none."""
        return self.principals.get(principal, self.max_resources)

    def never(self, principal: str, needed: int) -> FailedPreconditionError | None:
        """FAILED_PRECONDITION for a request bigger than the principal's
        whole quota; None if it could be granted some day."""
        limit = self.limit_of(principal)
        if not limit or needed <= limit:
            return None
        return FailedPreconditionError(
            PreconditionViolation(
                "OVER_QUOTA",
                f"principals/{clip(principal)}",
                f"the request needs {needed} resources, more than the {limit} that principal "
                f"{clip(principal)!r} may hold at once (quotas.max_resources): it could never "
                "be granted; ask for fewer",
            )
        )

    def standing(
        self, principal: str, needed: int, held: dict[str, int] | None = None
    ) -> Standing | None:
        """The principal's standing for a request of `needed` resources;
        None if it has no limit. `held` caches the counts within one queue
        pass (the pass keeps it up to date as it grants)."""
        limit = self.limit_of(principal)
        if not limit:
            return None
        if held is None:
            count = lease_model.resources_held(principal, LeaseState.ACTIVE)
        else:
            if principal not in held:
                held[principal] = lease_model.resources_held(principal, LeaseState.ACTIVE)
            count = held[principal]
        return Standing(principal, limit, count, needed)
