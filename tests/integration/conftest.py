"""Fixtures of the integration suite: a seeded inventory for the in-process
broker, and `broker serve` subprocesses that are always killed."""

from __future__ import annotations

import dataclasses

import pytest

from broker.api.server import build_server
from broker.config import AuthConfig
from tests.conftest import wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
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


@pytest.fixture
def auth_broker(config):
    """A broker with authentication on, and a token for each caller of
    `tests.integration.auth_helpers`."""
    config = dataclasses.replace(
        config, base_dir=".", auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS)
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    yield server, make_tokens()
    server.stop(0)
