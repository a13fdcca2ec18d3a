"""Pure matching: distinct resources for every slot whenever an assignment
exists (semantics 2), with no database."""

from __future__ import annotations

import itertools
import random

import pytest

from broker.domain.matching import expand_slots, match


def is_valid(slots, assignment) -> bool:
    """Every chosen candidate is one of its slot's, and no two slots share one."""
    chosen = [c for c in assignment if c is not None]
    return len(chosen) == len(set(chosen)) and all(
        c is None or c in slots[i] for i, c in enumerate(assignment)
    )


def brute_max_matching(slots) -> int:
    """The size of a maximum matching, by trying every subset of slots."""
    for size in range(len(slots), 0, -1):
        for subset in itertools.combinations(range(len(slots)), size):
            for choice in itertools.product(*(slots[i] for i in subset)):
                if len(set(choice)) == size:
                    return size
    return 0


def brute_complete(slots) -> bool:
    """Whether some permutation of the candidates serves every slot."""
    pool = sorted({c for candidates in slots for c in candidates})
    return any(
        all(choice in slots[i] for i, choice in enumerate(permutation))
        for permutation in itertools.permutations(pool, len(slots))
    )


def test_complete_assignment_uses_distinct_candidates():
    result = match([["a", "b"], ["a", "b"], ["c"]])
    assert result.complete
    assert result.first_unmatched is None
    assert sorted(result.assignment) == ["a", "b", "c"]
    assert is_valid([["a", "b"], ["a", "b"], ["c"]], result.assignment)


def test_earlier_candidates_are_preferred():
    assert match([["a", "b"]]).assignment == ("a",)
    assert match([["b", "a"]]).assignment == ("b",)


def test_finds_the_assignment_that_greedy_first_match_misses():
    # Greedy gives slot 0 "a" and then has nothing for slot 1.
    result = match([["a", "b"], ["a"]])
    assert result.complete
    assert result.assignment == ("b", "a")


def test_follows_a_long_augmenting_path():
    # Slot 2 takes "a" from slot 0, which takes "b" from slot 1, which takes "c".
    result = match([["a", "b"], ["b", "c"], ["a"]])
    assert result.assignment == ("b", "c", "a")


def test_no_slots_is_trivially_complete():
    result = match([])
    assert result.complete
    assert result.assignment == ()
    assert result.first_unmatched is None


@pytest.mark.parametrize(
    ("slots", "first_unmatched"),
    [
        ([["a"], ["a"]], 1),
        ([[], ["a"]], 0),
        ([["a", "b"], ["a", "b"], ["a", "b"]], 2),
        ([["a"], ["b"], ["c"], []], 3),
    ],
)
def test_infeasible_requests_report_the_first_unmatched_slot(slots, first_unmatched):
    result = match(slots)
    assert not result.complete
    assert result.first_unmatched == first_unmatched
    assert result.assignment[first_unmatched] is None
    assert is_valid(slots, result.assignment)


def test_candidates_may_be_any_hashable():
    result = match([[1, 2], [1], [(3, "x")]])
    assert result.assignment == (2, 1, (3, "x"))


@pytest.mark.parametrize(
    ("counts", "slots"),
    [
        ((2, 1), [0, 0, 1]),
        ((1, 1, 1), [0, 1, 2]),
        ((0, 2), [1, 1]),
        ((3,), [0, 0, 0]),
        ((), []),
    ],
)
def test_expand_slots(counts, slots):
    assert expand_slots(counts) == slots


def test_match_agrees_with_brute_force_on_random_small_graphs():
    rng = random.Random(20240501)
    pool = "abcdef"
    for _ in range(400):
        slots = [rng.sample(pool, rng.randint(0, len(pool) - 1)) for _ in range(rng.randint(1, 5))]
        result = match(slots)
        assert is_valid(slots, result.assignment), slots
        assert result.complete == brute_complete(slots), slots
        matched = sum(choice is not None for choice in result.assignment)
        assert matched == brute_max_matching(slots), slots
