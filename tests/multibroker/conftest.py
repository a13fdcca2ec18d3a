"""Fixtures of the multi-broker suite: fleets of `broker serve` subprocesses
on one fresh PostgreSQL schema (`postgres_url`), each process SIGKILLed by
its pid when the test ends."""

from __future__ import annotations

import pytest

from tests.multibroker.fleet import Fleet


@pytest.fixture
def make_fleet(tmp_path, postgres_url):
    """`make_fleet(leases={...}, stall_timeout=...)`: a fleet on the test's
    schema (or on `database_url`)."""
    fleets: list[Fleet] = []

    def make(
        leases: dict | None = None,
        database_url: str | None = None,
        stall_timeout: float | None = None,
    ) -> Fleet:
        fleet = Fleet(tmp_path, database_url or postgres_url, leases, stall_timeout)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()


@pytest.fixture
def fleet(make_fleet) -> Fleet:
    """A fleet with the default lease settings."""
    return make_fleet()
