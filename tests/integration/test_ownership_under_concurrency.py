"""Exclusive ownership under concurrency (semantics 1 and 6 of the design).

Several clients, each on its own channel, loop acquire -> release over three
calculators. Every grant's client-side holding interval is recorded: it starts
after the acquire returned and ends before the release is sent, so it lies
inside the broker's true holding interval, and any overlap between two of them
on one resource is a double grant. A pure checker reads that history, and
another reads the broker's own event table; both are shown to fail on a
hand-made bad history, so a double grant cannot pass unnoticed.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import grpc
import pytest

from broker.models.event import Event
from broker.v1 import lease_service_pb2, lease_service_pb2_grpc
from tests.integration.helpers import acquire_request, requirement

CLIENTS = 8
CYCLES = 60
CALL_TIMEOUT = 5.0
TEST_DEADLINE = 60.0


@dataclasses.dataclass(frozen=True)
class Hold:
    """One grant as a client saw it: `tokens` maps each resource to its
    fencing token; `end` is None if the release never succeeded."""

    lease_id: str
    tokens: dict[str, int]
    start: float
    end: float | None


def ownership_violations(holds: Sequence[Hold]) -> list[str]:
    """What is wrong with a client-side history: overlapping holds of one
    resource, fencing tokens that do not strictly grow in grant order, holds
    never released."""
    problems = [f"lease {h.lease_id} was never released" for h in holds if h.end is None]
    by_resource: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        for name in hold.tokens:
            by_resource[name].append(hold)
    for name, resource_holds in by_resource.items():
        ordered = sorted(resource_holds, key=lambda h: h.start)
        latest = ordered[0]
        for previous, hold in itertools.pairwise(ordered):
            latest_end = float("inf") if latest.end is None else latest.end
            if hold.start < latest_end:
                problems.append(
                    f"{name}: lease {hold.lease_id} got it at {hold.start:.6f} while lease "
                    f"{latest.lease_id} held it until {latest_end:.6f}"
                )
            if hold.tokens[name] <= previous.tokens[name]:
                problems.append(
                    f"{name}: fencing token {hold.tokens[name]} of lease {hold.lease_id} does "
                    f"not exceed {previous.tokens[name]} of the earlier lease {previous.lease_id}"
                )
            hold_end = float("inf") if hold.end is None else hold.end
            if hold_end > latest_end:
                latest = hold
    return problems


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One row of the broker's event table."""

    type: str
    resource: str
    lease_id: str
    fencing_token: int


def event_violations(events: Sequence[Recorded]) -> list[str]:
    """What is wrong with the broker's own history (in id order): a grant of a
    resource before the previous grant's release, a renewal or release by a
    lease that did not hold it, an ending other than a release, a fencing
    token that does not grow, a resource still held at the end."""
    problems = []
    holding: dict[str, Recorded] = {}
    last_token: dict[str, int] = {}
    for event in events:
        if event.type == "lease_granted":
            if event.resource in holding:
                problems.append(
                    f"{event.resource}: granted to {event.lease_id} while "
                    f"{holding[event.resource].lease_id} held it"
                )
            if event.fencing_token <= last_token.get(event.resource, 0):
                problems.append(
                    f"{event.resource}: fencing token {event.fencing_token} after "
                    f"{last_token[event.resource]}"
                )
            holding[event.resource] = event
            last_token[event.resource] = max(event.fencing_token, last_token.get(event.resource, 0))
        elif event.type == "lease_renewed":
            held = holding.get(event.resource)
            if held is None or held.lease_id != event.lease_id:
                problems.append(
                    f"{event.resource}: renewed by {event.lease_id}, which did not hold it"
                )
        elif event.type.startswith("lease_"):
            held = holding.get(event.resource)
            if event.type != "lease_released":
                problems.append(f"{event.resource}: {event.type} of {event.lease_id}")
            if held is None or held.lease_id != event.lease_id:
                problems.append(
                    f"{event.resource}: {event.type} by {event.lease_id}, which did not hold it"
                )
            else:
                del holding[event.resource]
    problems.extend(
        f"{name}: still held by {event.lease_id} at the end" for name, event in holding.items()
    )
    return problems


# ------------------------------------------------------ the checkers can fail


def test_ownership_checker_accepts_a_clean_history():
    holds = [
        Hold("a", {"calc-1": 1}, 1.0, 2.0),
        Hold("b", {"calc-1": 2, "calc-2": 1}, 2.0, 3.0),
        Hold("c", {"calc-2": 2}, 3.5, 4.0),
    ]

    assert ownership_violations(holds) == []


@pytest.mark.parametrize(
    ("holds", "problem"),
    [
        pytest.param(
            [Hold("a", {"calc-1": 1}, 1.0, 3.0), Hold("b", {"calc-1": 2}, 2.0, 4.0)],
            "calc-1: lease b got it at 2.000000 while lease a held it",
            id="overlap",
        ),
        pytest.param(
            [
                Hold("a", {"calc-1": 1}, 1.0, 10.0),
                Hold("b", {"calc-1": 2}, 2.0, 3.0),
                Hold("c", {"calc-1": 3}, 5.0, 6.0),
            ],
            "calc-1: lease c got it at 5.000000 while lease a held it",
            id="overlap-hidden-by-a-short-hold",
        ),
        pytest.param(
            [Hold("a", {"calc-1": 2}, 1.0, 2.0), Hold("b", {"calc-1": 2}, 3.0, 4.0)],
            "calc-1: fencing token 2 of lease b does not exceed 2",
            id="reused-token",
        ),
        pytest.param(
            [Hold("a", {"calc-1": 5}, 1.0, 2.0), Hold("b", {"calc-1": 4}, 3.0, 4.0)],
            "calc-1: fencing token 4 of lease b does not exceed 5",
            id="shrinking-token",
        ),
        pytest.param(
            [Hold("a", {"calc-1": 1}, 1.0, None)], "lease a was never released", id="unreleased"
        ),
    ],
)
def test_ownership_checker_reports_a_bad_history(holds, problem):
    assert any(found.startswith(problem) for found in ownership_violations(holds)), (
        ownership_violations(holds)
    )


def test_event_checker_accepts_a_clean_history():
    events = [
        Recorded("resource_created", "calc-1", "", 0),
        Recorded("lease_granted", "calc-1", "a", 1),
        Recorded("lease_released", "calc-1", "a", 1),
        Recorded("lease_granted", "calc-1", "b", 2),
        Recorded("lease_released", "calc-1", "b", 2),
    ]

    assert event_violations(events) == []


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        pytest.param(
            [
                Recorded("lease_granted", "calc-1", "a", 1),
                Recorded("lease_granted", "calc-1", "b", 2),
                Recorded("lease_released", "calc-1", "a", 1),
                Recorded("lease_released", "calc-1", "b", 2),
            ],
            "calc-1: granted to b while a held it",
            id="double-grant",
        ),
        pytest.param(
            [
                Recorded("lease_granted", "calc-1", "a", 3),
                Recorded("lease_released", "calc-1", "a", 3),
                Recorded("lease_granted", "calc-1", "b", 3),
                Recorded("lease_released", "calc-1", "b", 3),
            ],
            "calc-1: fencing token 3 after 3",
            id="reused-token",
        ),
        pytest.param(
            [
                Recorded("lease_granted", "calc-1", "a", 1),
                Recorded("lease_released", "calc-1", "b", 1),
            ],
            "calc-1: lease_released by b, which did not hold it",
            id="release-by-another",
        ),
        pytest.param(
            [
                Recorded("lease_granted", "calc-1", "a", 1),
                Recorded("lease_renewed", "calc-1", "b", 1),
                Recorded("lease_released", "calc-1", "a", 1),
            ],
            "calc-1: renewed by b, which did not hold it",
            id="renewal-by-another",
        ),
        pytest.param(
            [
                Recorded("lease_granted", "calc-1", "a", 1),
                Recorded("lease_expired", "calc-1", "a", 1),
            ],
            "calc-1: lease_expired of a",
            id="expired-instead-of-released",
        ),
        pytest.param(
            [Recorded("lease_granted", "calc-1", "a", 1)],
            "calc-1: still held by a",
            id="never-released",
        ),
    ],
)
def test_event_checker_reports_a_bad_history(events, problem):
    assert any(found.startswith(problem) for found in event_violations(events)), event_violations(
        events
    )


# ----------------------------------------------------------- the real thing


def request_for(client: int, cycle: int) -> lease_service_pb2.AcquireLeaseRequest:
    """Half the requests name one calculator, half want any two."""
    if (client + cycle) % 2:
        return acquire_request(
            requirement("Calculator", name=f"calc-{(client + cycle) % 3 + 1}"),
            holder=f"client-{client}",
        )
    return acquire_request(requirement("Calculator", count=2), holder=f"client-{client}")


@dataclasses.dataclass
class History:
    """What the clients saw, appended to from their threads."""

    holds: list[Hold] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    busy: list[int] = dataclasses.field(default_factory=list)


def run_client(address: str, client: int, deadline: float, history: History) -> None:
    """Loops acquire -> renew -> release, retrying acquires that find the
    resources held (RESOURCE_EXHAUSTED)."""
    with grpc.insecure_channel(address) as channel:
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        for cycle in range(CYCLES):
            request = request_for(client, cycle)
            while True:
                if time.monotonic() > deadline:
                    history.errors.append(f"client {client} timed out in cycle {cycle}")
                    return
                try:
                    granted = stub.AcquireLease(request, timeout=CALL_TIMEOUT)
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        history.errors.append(
                            f"client {client} acquire: {error.code()} {error.details()}"
                        )
                        return
                    history.busy.append(client)
            start = time.monotonic()
            tokens = {g.resource.name: g.fencing_token for g in granted.lease.grants}
            lease_id, secret = granted.lease.lease_id, granted.secret
            end: float | None = None
            try:
                # Using the lease: the holder renews it, a round trip during
                # which another client could wrongly be granted the same.
                stub.RenewLease(
                    lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret),
                    timeout=CALL_TIMEOUT,
                )
                end = time.monotonic()
                stub.ReleaseLease(
                    lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as error:
                history.errors.append(f"client {client}: {error.code()} {error.details()}")
                end = None
            history.holds.append(Hold(lease_id, tokens, start, end))
            if end is None:
                return


def test_no_resource_is_ever_held_twice_and_fencing_tokens_only_grow(broker, calculators):
    history = History()
    deadline = time.monotonic() + TEST_DEADLINE
    clients = [
        threading.Thread(
            target=run_client, args=(broker.address, n, deadline, history), daemon=True
        )
        for n in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()) + CALL_TIMEOUT)

    assert not any(client.is_alive() for client in clients), "a client is stuck"
    assert history.errors == []
    holds = history.holds
    assert len(holds) == CLIENTS * CYCLES
    assert ownership_violations(holds) == []
    assert {name for hold in holds for name in hold.tokens} == set(calculators)
    assert len(set(history.busy)) > 1, "the clients never contended: the test proves nothing"

    recorded = [
        Recorded(e.type, e.resource, e.lease_id, e.fencing_token)
        for e in Event.select().order_by(Event.id)
    ]
    assert event_violations(recorded) == []
    # The broker granted exactly what the clients saw, token for token.
    broker_grants = sorted(
        (e.lease_id, e.resource, e.fencing_token) for e in recorded if e.type == "lease_granted"
    )
    client_grants = sorted(
        (hold.lease_id, name, token) for hold in holds for name, token in hold.tokens.items()
    )
    assert broker_grants == client_grants
