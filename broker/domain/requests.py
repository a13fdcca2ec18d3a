"""Checking a request: its requirements against the configured kinds and
the limits of one request, before anything is read or written; and the
requirements as the queue keeps them (JSON)."""

from __future__ import annotations

import dataclasses
import json

from broker.domain import filters
from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PreconditionViolation,
    clip,
)
from broker.domain.kinds import Kind, KindRegistry
from broker.domain.values import AcquireRequest, Check, Constraint, Requirement
from broker.models.resource import Filter

MAX_REQUIREMENTS = 16
MAX_RESOURCES = 64
MIN_TTL = 1.0
MAX_LABEL = 64
MAX_HOLDER = 128


@dataclasses.dataclass(frozen=True)
class Need:
    """One checked requirement, ready for the candidate query."""

    index: int
    kind: Kind
    filters: list[Filter]
    count: int
    label: str


class Requests:
    """The checks of semantics 1 and 2 on what a request asks for."""

    def __init__(self, kinds: KindRegistry, default_ttl: float, max_ttl: float):
        self.kinds = kinds
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    def check(self, request: AcquireRequest) -> tuple[list[Need], float]:
        """INVALID_ARGUMENT for a malformed request, FAILED_PRECONDITION for a
        kind or field that does not exist; else the needs and the TTL."""
        if not request.requirements:
            raise InvalidArgumentError.of("requirements", "at least one requirement is required")
        if len(request.requirements) > MAX_REQUIREMENTS:
            raise InvalidArgumentError.of(
                "requirements",
                f"at most {MAX_REQUIREMENTS} requirements, not {len(request.requirements)}",
            )
        if len(request.holder) > MAX_HOLDER:
            raise InvalidArgumentError.of("holder", f"is longer than {MAX_HOLDER} characters")
        ttl = self.default_ttl if request.ttl is None else request.ttl
        if not MIN_TTL <= ttl <= self.max_ttl:
            raise InvalidArgumentError.of(
                "ttl", f"must be {MIN_TTL:g} s to {self.max_ttl:g} s, not {ttl:g} s"
            )
        needs = [self._need(index, r) for index, r in enumerate(request.requirements)]
        total = sum(need.count for need in needs)
        if total > MAX_RESOURCES:
            raise InvalidArgumentError.of(
                "requirements", f"at most {MAX_RESOURCES} resources in all, not {total}"
            )
        return needs, float(ttl)

    def _need(self, index: int, requirement: Requirement) -> Need:
        path = f"requirements[{index}]"
        if not requirement.kind:
            raise InvalidArgumentError.of(f"{path}.kind", "is required")
        if not 0 <= requirement.count <= MAX_RESOURCES:
            raise InvalidArgumentError.of(
                f"{path}.count", f"must be 0 to {MAX_RESOURCES}, not {requirement.count}"
            )
        if len(requirement.label) > MAX_LABEL:
            raise InvalidArgumentError.of(f"{path}.label", f"is longer than {MAX_LABEL} characters")
        kind = self.kinds.find(requirement.kind)
        if kind is None:
            known = ", ".join(k.name for k in self.kinds) or "none"
            raise FailedPreconditionError(
                PreconditionViolation(
                    "UNKNOWN_KIND",
                    path,
                    f"{path}: no kind {clip(requirement.kind)!r} (kinds: {known})",
                )
            )
        resolved = filters.resolve(
            kind,
            requirement.constraints,
            f"{path}.constraints",
            lambda where, text: FailedPreconditionError(
                PreconditionViolation("UNKNOWN_FIELD", where, f"{where}: {text}")
            ),
            self.kinds,
        )
        return Need(index, kind, resolved, requirement.count or 1, requirement.label)


def encode_requirements(requirements: tuple[Requirement, ...]) -> str:
    return json.dumps(
        [
            {
                "kind": r.kind,
                "constraints": [
                    # `any_of` too, for brokers of before tests were named.
                    {
                        "field": c.field,
                        "values": list(c.values),
                        "any_of": c.any_of,
                        "test": c.test.value,
                    }
                    | ({"negate": True} if c.negate else {})
                    for c in r.constraints
                ],
                "count": r.count,
                "label": r.label,
            }
            for r in requirements
        ],
        separators=(",", ":"),
    )


def _stored_check(stored: dict) -> Check:
    if "test" in stored:
        return Check(stored["test"])
    return Check.ANY_OF if stored["any_of"] else Check.EQUALS


def decode_requirements(text: str) -> tuple[Requirement, ...]:
    """Requirements as stored; those a broker stored before constraints had
    tests of their own name only `any_of` (else they are `EQUALS`)."""
    return tuple(
        Requirement(
            kind=item["kind"],
            constraints=tuple(
                Constraint(
                    c["field"],
                    tuple(c["values"]),
                    _stored_check(c),
                    c.get("negate", False),
                )
                for c in item["constraints"]
            ),
            count=item["count"],
            label=item["label"],
        )
        for item in json.loads(text)
    )
