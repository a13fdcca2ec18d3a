"""A watcher resuming from its cursor sees every event exactly once and in
order across a broker killed with SIGKILL and started again on the same
database (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import signal

import grpc
import pytest

from broker.v1 import inventory_service_pb2, lease_service_pb2
from tests.integration.helpers import (
    acquire,
    calculator,
    requirement,
    wait_until,
    write_config,
)
from tests.integration.test_events_api import WAIT, Collector, Stubs, all_events

CALCULATOR_KIND = "resources.calculator.data.CalculatorData"


@pytest.fixture
def serve_args(tmp_path, database_url):
    """`broker serve` arguments on the test's database; the safety poll is
    off (an hour), so only wake-ups deliver live events."""
    config = write_config(
        tmp_path / "broker.yml",
        {"kinds": [CALCULATOR_KIND], "events": {"poll_interval": 3600.0}},
    )

    def args() -> tuple[str, ...]:
        return ("--config", str(config), "--address", "127.0.0.1:0", "--database", database_url)

    return args


def started(start_broker, serve_args) -> tuple:
    process = start_broker(*serve_args())
    stubs = Stubs(process.wait_listening())
    return process, stubs


def change(stubs: Stubs, tag: str) -> None:
    """Three events: created, granted, released."""
    stubs.inventory.CreateResource(
        inventory_service_pb2.CreateResourceRequest(resource=calculator(f"calc-{tag}")),
        timeout=WAIT,
    )
    granted = acquire(stubs.leases, requirement("Calculator", name=f"calc-{tag}"), holder=tag)
    stubs.leases.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(
            lease_id=granted.lease.lease_id, secret=granted.secret
        ),
        timeout=WAIT,
    )


def test_a_watch_resumes_exactly_once_across_a_sigkill_and_restart(start_broker, serve_args):
    first, stubs = started(start_broker, serve_args)
    watch = Collector(stubs.events)
    for n in range(4):
        change(stubs, f"a{n}")
    watch.wait_for(6)  # part of what was made; more may be in flight
    assert first.kill() == -signal.SIGKILL
    wait_until(lambda: watch.error is not None, WAIT, "the watch to break")
    assert watch.error.code() == grpc.StatusCode.UNAVAILABLE
    seen = list(watch.events)
    stubs.channel.close()

    second, stubs = started(start_broker, serve_args)
    resumed = Collector(stubs.events, after=seen[-1].sequence)
    for n in range(3):
        change(stubs, f"b{n}")
    stored = all_events(stubs.events)
    assert len(stored) == 7 * 3
    together = seen + resumed.wait_for(len(stored) - len(seen))
    assert together == stored
    sequences = [event.sequence for event in together]
    assert sequences == sorted(set(sequences))
    resumed.stop()
    second.kill()
