"""`broker events`: the audit trail on the command line, one line per event,
filtered, resumed after a sequence, and followed live (`--follow`, a real
subprocess, killed by its pid); and `broker stats`, usage from it."""

from __future__ import annotations

import queue
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.api.convert import duration
from broker.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    inventory_service_pb2,
    lease_service_pb2,
)
from sdk import cli
from tests.integration.helpers import (
    acquire,
    broker_command,
    calculator,
    create_calculators,
    requirement,
    subprocess_env,
    wait_until,
)

WAIT = 20.0


@pytest.fixture
def run(broker, capsys):
    def run_command(*argv: str) -> tuple[int, list[str], str]:
        status = cli.main(["--target", broker.address, *argv])
        out, err = capsys.readouterr()
        return status, out.splitlines(), err

    return run_command


def test_events_prints_one_line_per_event_and_filters(run, inventory_stub, lease_stub):
    create_calculators(inventory_stub, 2)
    granted = acquire(lease_stub, requirement("Calculator", name="calc-2"), holder="dana")
    status, lines, err = run("events")
    assert status == 0, err
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert lines[0].split()[2:4] == ["resource_created", "calc-1"]
    grant = lines[2].split()
    assert grant[2:5] == ["lease_granted", "calc-2", "Calculator"]
    assert "actor=dana" in grant and f"lease={granted.lease.lease_id}" in grant
    status, lines, _ = run("events", "--after", "1", "--type", "resource_created")
    assert [line.split()[3] for line in lines] == ["calc-2"]
    status, lines, _ = run("events", "--actor", "dana", "--resource", "calc-2")
    assert len(lines) == 1
    status, lines, _ = run("events", "--until", "2000-01-01T00:00")
    assert (status, lines) == (0, [])


@pytest.mark.parametrize(
    "argv",
    [
        ("--after", "-1"),
        ("--after", "x"),
        ("--type", "nonsense"),
        ("--since", "yesterday"),
    ],
)
def test_bad_events_arguments_are_usage_errors(run, argv):
    status, lines, err = run("events", *argv)
    assert status == cli.EXIT_USAGE
    assert lines == []
    assert f"argument {argv[0]}" in err


def test_a_bad_time_range_is_refused_by_the_broker_naming_it(run):
    status, _, err = run("events", "--since", "2026-01-02T00:00", "--until", "2026-01-01T00:00")
    assert status == cli.EXIT_BROKER
    assert "filter.end_time" in err


def test_events_follow_prints_new_events_as_they_happen(broker, inventory_stub):
    create_calculators(inventory_stub, 1)
    process = subprocess.Popen(
        [broker_command(), "--target", broker.address, "events", "--follow", "--after", "1"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout])
    reader.daemon = True
    reader.start()
    try:
        create_calculators_after(inventory_stub)
        first = lines.get(timeout=WAIT).split()
        second = lines.get(timeout=WAIT).split()
        assert (first[0], first[3]) == ("2", "calc-8")
        assert (second[0], second[3]) == ("3", "calc-9")
    finally:
        process.kill()
        process.wait(WAIT)


def create_calculators_after(inventory_stub) -> None:
    for name in ("calc-8", "calc-9"):
        inventory_stub.CreateResource(
            inventory_service_pb2.CreateResourceRequest(resource=calculator(name)), timeout=WAIT
        )


def test_stats_shows_usage_per_resource_and_per_kind(run, channel, inventory_stub, lease_stub):
    events_stub = event_service_pb2_grpc.EventServiceStub(channel)
    create_calculators(inventory_stub, 2)
    held = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="erin")
    waiter = ThreadPoolExecutor(1).submit(
        lease_stub.AcquireLease,
        lease_service_pb2.AcquireLeaseRequest(
            requirements=[requirement("Calculator", name="calc-1")],
            holder="frank",
            max_wait=duration(WAIT),
        ),
        timeout=WAIT,
    )
    wait_until(lambda: waiting(lease_stub) == 1, WAIT, "the request to wait")
    lease_stub.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret),
        timeout=WAIT,
    )
    granted = waiter.result(WAIT)
    lease_stub.RevokeLease(
        lease_service_pb2.RevokeLeaseRequest(lease_id=granted.lease.lease_id, reason="done"),
        timeout=WAIT,
    )
    status, lines, err = run("stats")
    assert status == 0, err
    header, *rows = [line.split() for line in lines]
    assert header[:3] == ["RESOURCE", "KIND", "GRANTS"]
    [calc] = rows
    assert (calc[0], calc[1], calc[2], calc[-3], calc[-2], calc[-1]) == (
        "calc-1",
        "Calculator",
        "2",
        "0",
        "1",
        "0",
    )
    # The waiting request's wait was recorded: it is the p95 of the two.
    [usage] = stats_of(events_stub, resource="calc-1").stats
    assert usage.wait_p95.ToNanoseconds() > 0 and usage.wait_p50.ToNanoseconds() == 0
    status, lines, _ = run("stats", "--by-kind")
    assert [line.split()[:3] for line in lines[1:]] == [["-", "Calculator", "2"]]
    status, lines, _ = run("stats", "--resource", "calc-2")
    assert lines[1:] == []


def test_stats_with_a_bad_range_names_it(run):
    status, _, err = run("stats", "--since", "2026-01-02T00:00", "--until", "2026-01-01T00:00")
    assert status == cli.EXIT_BROKER
    assert "end_time" in err


def waiting(lease_stub) -> int:
    return len(lease_stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=WAIT).waiters)


def stats_of(events_stub, **fields) -> event_service_pb2.GetUsageStatsResponse:
    return events_stub.GetUsageStats(event_service_pb2.GetUsageStatsRequest(**fields), timeout=WAIT)
