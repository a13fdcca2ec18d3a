"""Assigning distinct resources to the slots of a request: a maximum bipartite
matching (Kuhn's augmenting paths), so that a valid assignment is found
whenever one exists, where a greedy first-match can miss it.

Pure functions over candidate lists; the database picks the candidates.

Why each requirement needs at most S candidates, S being the number of slots
in the whole request: take any complete assignment and one requirement r with
c slots, and let T be S of its candidates. If one of r's slots uses a resource
outside T, the other S - 1 slots use at most S - 1 resources of T, so one
resource of T is unused and that slot can move to it. Repeating this puts all
of r's slots inside T without touching the other requirements. So the
database is asked for at most S candidates per requirement, never for the
whole inventory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


@dataclasses.dataclass(frozen=True)
class Matching(Generic[T]):
    """The result: `assignment[i]` is the candidate given to slot i, or None
    for a slot that no augmenting path could serve."""

    assignment: tuple[T | None, ...]

    @property
    def complete(self) -> bool:
        return all(choice is not None for choice in self.assignment)

    @property
    def first_unmatched(self) -> int | None:
        return next((i for i, choice in enumerate(self.assignment) if choice is None), None)


def match(slot_candidates: Sequence[Sequence[T]]) -> Matching[T]:
    """Finds a maximum matching of slots to distinct candidates. Candidates
    are tried in the order given, so earlier ones are preferred."""
    owner_of: dict[T, int] = {}
    assignment: list[T | None] = [None] * len(slot_candidates)

    def augment(slot: int, visited: set[T]) -> bool:
        for candidate in slot_candidates[slot]:
            if candidate in visited:
                continue
            visited.add(candidate)
            holder = owner_of.get(candidate)
            if holder is None or augment(holder, visited):
                owner_of[candidate] = slot
                assignment[slot] = candidate
                return True
        return False

    for slot in range(len(slot_candidates)):
        augment(slot, set())
    return Matching(tuple(assignment))


def expand_slots(counts: Sequence[int]) -> list[int]:
    """The requirement index of each slot: counts (2, 1) give slots [0, 0, 1]."""
    return [index for index, count in enumerate(counts) for _ in range(count)]
