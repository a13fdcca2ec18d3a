"""Planning a grant: the candidates for each requirement and the best
assignment of distinct ones to the request's slots (`broker.domain.matching`).
Reads only; runs inside the caller's transaction."""

from __future__ import annotations

import dataclasses

from broker.domain.matching import Matching, expand_slots, match
from broker.domain.requests import Need
from broker.models import resource as resource_model
from broker.models.resource import Resource


@dataclasses.dataclass(frozen=True)
class Plan:
    """Candidates found for a request and the best assignment of them."""

    needs: list[Need]
    slot_needs: list[int]
    matching: Matching[int]
    by_id: dict[int, Resource]
    candidate_counts: list[int]

    @property
    def blocked_index(self) -> int:
        """The index of the first requirement left without a resource."""
        slot = self.matching.first_unmatched
        assert slot is not None, "only an incomplete plan is blocked"
        return self.needs[self.slot_needs[slot]].index

    def assigned_ownable(self) -> list[int]:
        """The free ownable resources the (partial) assignment uses."""
        return [
            resource_id
            for slot, resource_id in enumerate(self.matching.assignment)
            if resource_id is not None and self.needs[self.slot_needs[slot]].kind.ownable
        ]


def plan(
    needs: list[Need],
    holder: str,
    now: float,
    *,
    free_only: bool = True,
    rank: tuple[int, int | None] | None = None,
    groups: tuple[str, ...] | None = None,
) -> Plan:
    """The best assignment of free resources (or, without `free_only`, of
    any that could be granted once freed) visible to `groups` to the
    request's slots. Each requirement needs at most as many candidates
    as the request has slots (see `matching`). Given the `rank` of a
    request (priority, and waiter id; None for a newcomer, which ranks
    behind every waiting request of its priority), resources reserved by
    requests ranking ahead of it are left out."""
    total = sum(need.count for need in needs)
    # A request for resources and for sub-resources of their kinds: each
    # chosen parent takes its sub-resources, which no slot may take then.
    parent_slots = sum(
        need.count * len(need.kind.references) for need in needs if need.kind.references
    )
    candidates = [
        resource_model.select_candidates(
            need.kind.model,
            need.kind.name,
            need.filters,
            holder=holder,
            mode=(
                resource_model.FREE if free_only and need.kind.ownable else resource_model.USABLE
            ),
            limit=total + (parent_slots if need.kind.tree == resource_model.CHILD else 0),
            now=now,
            rank=rank,
            groups=groups,
            tree=need.kind.tree,
        )
        for need in needs
    ]
    slot_needs = expand_slots([need.count for need in needs])
    by_id = {row.id: row for rows in candidates for row in rows}
    taken: set[int] = set()
    while True:
        matching = match(
            [[row.id for row in candidates[n] if row.id not in taken] for n in slot_needs]
        )
        children = _children_of(matching, slot_needs, needs, by_id) if parent_slots else set()
        clash = {rid for rid in matching.assignment if rid in children} - taken
        if not clash:
            break
        taken |= clash
    return Plan(needs, slot_needs, matching, by_id, [len(rows) for rows in candidates])


def _children_of(
    matching: Matching[int], slot_needs: list[int], needs: list[Need], by_id: dict[int, Resource]
) -> set[int]:
    """The sub-resources of the resources an assignment chose."""
    children: set[int] = set()
    for slot, resource_id in enumerate(matching.assignment):
        kind = needs[slot_needs[slot]].kind
        if resource_id is not None and kind.references:
            ids = kind.reference_ids(by_id[resource_id].data).values()
            children.update(child for child in ids if child is not None)
    return children
