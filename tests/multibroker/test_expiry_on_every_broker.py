"""Leases that are not renewed expire once, whichever broker's sweep finds
them (semantics 4 and 8): two brokers sweep every 0.2 s on one schema, and
every grant of a 1 s lease ends in exactly one `lease_expired` event, its
resources freed exactly once."""

from __future__ import annotations

import re
from collections import Counter

from broker.v1 import lease_pb2
from tests.integration.helpers import (
    acquire,
    calculator,
    create_resource,
    get_lease,
    get_resource,
    requirement,
    wait_until,
)
from tests.multibroker.fleet import recorded_events

ROUNDS = 3
RESOURCES = 6
TTL = 1.0
EXPIRY_TIMEOUT = TTL + 4.0
SWEPT = re.compile(r"expired (\d+) lease\(s\)")


def test_every_expired_lease_is_freed_and_recorded_once(make_fleet, postgres_admin, postgres_url):
    fleet = make_fleet(leases={"expiry_interval": 0.2})
    brokers = fleet.start_many(2)
    names = [f"calc-{n}" for n in range(1, RESOURCES + 1)]
    for n, name in enumerate(names, start=1):
        create_resource(brokers[n % 2].inventory, calculator(name, f"10.0.0.{n}"))

    lease_ids: list[str] = []
    for round_ in range(ROUNDS):
        # Nothing acquires while a round expires, so only the sweeps end leases.
        round_ids = [
            acquire(
                brokers[n % 2].leases, requirement("Calculator", name=name), ttl=TTL, holder="gone"
            ).lease.lease_id
            for n, name in enumerate(names)
        ]
        lease_ids += round_ids

        def all_expired(round_ids=round_ids):
            return all(
                get_lease(brokers[n % 2].leases, lease_id).state == lease_pb2.LEASE_STATE_EXPIRED
                for n, lease_id in enumerate(round_ids)
            )

        wait_until(all_expired, EXPIRY_TIMEOUT, f"round {round_}'s leases to expire")
        for n, name in enumerate(names):
            # Free on either broker, granted once per round (the token counts grants).
            resource = get_resource(brokers[n % 2].inventory, name)
            assert (resource.owner, list(resource.lease_ids)) == ("", []), resource
            assert resource.fencing_token == round_ + 1, resource

    events = [
        e for e in recorded_events(postgres_admin, postgres_url) if e.type.startswith("lease_")
    ]
    granted = Counter(
        (e.lease_id, e.resource, e.fencing_token) for e in events if e.type == "lease_granted"
    )
    expired = Counter(
        (e.lease_id, e.resource, e.fencing_token) for e in events if e.type == "lease_expired"
    )
    assert len(granted) == ROUNDS * RESOURCES
    assert set(granted.values()) == {1}
    assert expired == granted, "not exactly one lease_expired per grant"
    assert {e.type for e in events} == {"lease_granted", "lease_expired"}
    assert {e.lease_id for e in events} == set(lease_ids)

    # Each broker logs how many it expired: together, each lease exactly once.
    swept = [sum(int(m) for m in SWEPT.findall(p.stderr)) for p in fleet.processes]
    assert sum(swept) == ROUNDS * RESOURCES, (swept, fleet.logs())
