"""Fixtures of the integration suite: a seeded inventory for the in-process
broker, and `broker serve` subprocesses that are always killed."""

from __future__ import annotations

import pytest

from tests.integration.helpers import BrokerProcess, create_calculators


@pytest.fixture
def calculators(inventory_stub) -> list[str]:
    """Three usable calculators `calc-1`, `calc-2`, `calc-3` on bench-1."""
    return create_calculators(inventory_stub)


@pytest.fixture
def start_broker(tmp_path):
    """Starts `broker serve <args>` subprocesses in `tmp_path`; each one still
    running at the end of the test is killed by its pid."""
    started: list[BrokerProcess] = []

    def start(*args: str) -> BrokerProcess:
        process = BrokerProcess(args, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
