"""Nothing held forever by the dead (semantic 4 of the design), with a
`broker serve` subprocess and clients that are real processes
(`tests.multiprocess.client`): a client killed while holding through a
session is freed within seconds, a frozen one (its TCP connection still up)
once its keep-alives are missed, a client killed while waiting leaves the
queue to the next, and a holder without a session still expires by TTL.

Times are read from the broker's own record of each lease (`end_time`),
against the instant the test signalled the client."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from broker.v1 import inventory_service_pb2_grpc, lease_pb2, lease_service_pb2_grpc
from tests.conftest import wait_serving
from tests.integration.helpers import (
    EXIT_TIMEOUT,
    BrokerProcess,
    acquire,
    all_leases,
    create_calculators,
    get_lease,
    requirement,
    subprocess_env,
    wait_until,
    write_config,
)
from tests.integration.test_queue_api import all_waiters, release

pytestmark = [pytest.mark.slow, pytest.mark.timeout(20)]

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEPALIVE_TIMEOUT = 3.0
KEEPALIVE_INTERVAL = KEEPALIVE_TIMEOUT / 6  # as the client sends them
SWEEP_INTERVAL = 0.2
CLIENT_READY_TIMEOUT = 10.0
# How long after a broken stream the broker may take to free its leases.
BROKEN_STREAM_BOUND = 2.0
# Slack for a loaded machine on top of the broker's own deadlines.
MARGIN = 2.0


class ClientProcess:
    """A `tests.multiprocess.client` subprocess; a thread reads its stdout
    lines into a queue so `expect` can wait for one with a deadline."""

    def __init__(self, address: str, holder: str, *args: str):
        self.holder = holder
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.multiprocess.client",
                "--address",
                address,
                "--holder",
                holder,
                *args,
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self._lines.put)),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._stderr.append)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _drain(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def expect(self, word: str, timeout: float = CLIENT_READY_TIMEOUT) -> str:
        """Waits for the line `<word> <value>`; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.holder} did not say {word!r} within {timeout} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                status = self.process.wait(EXIT_TIMEOUT)
                stderr = "\n".join(s for s in self._stderr if s is not None)
                raise AssertionError(f"{self.holder} exited with {status}; stderr:\n{stderr}")
            found, _, value = line.partition(" ")
            if found == word:
                return value

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too), then reap."""
        self.signal(signal.SIGKILL)
        self.process.wait(EXIT_TIMEOUT)
        for reader in self._readers:
            reader.join(EXIT_TIMEOUT)


@pytest.fixture
def broker_process(tmp_path, database_url):
    """A `broker serve` subprocess with 3 s session keep-alives and a sweep
    five times a second, killed by its pid at the end."""
    config = write_config(
        tmp_path / "broker.yml",
        {
            "database": {"url": database_url},
            "kinds": ["resources.calculator.data.CalculatorData"],
            "leases": {"expiry_interval": SWEEP_INTERVAL},
            "sessions": {"keepalive_timeout": KEEPALIVE_TIMEOUT},
        },
    )
    process = BrokerProcess(("--config", str(config), "--address", "127.0.0.1:0"), tmp_path)
    try:
        process.wait_listening()
        wait_serving(process.address)
        yield process
    finally:
        process.kill()


@pytest.fixture
def channel(broker_process):
    with grpc.insecure_channel(broker_process.address) as channel:
        yield channel


@pytest.fixture
def lease_stub(channel):
    return lease_service_pb2_grpc.LeaseServiceStub(channel)


@pytest.fixture
def calculators(channel) -> list[str]:
    return create_calculators(inventory_service_pb2_grpc.InventoryServiceStub(channel))


@pytest.fixture
def start_client(broker_process):
    """Starts client subprocesses; each is killed by its pid at the end."""
    started: list[ClientProcess] = []

    def start(holder: str, *args: str) -> ClientProcess:
        client = ClientProcess(broker_process.address, holder, *args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


def seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def ended_lease(lease_stub, lease_id: str) -> lease_pb2.Lease | None:
    lease = get_lease(lease_stub, lease_id)
    return None if lease.state == lease_pb2.LEASE_STATE_ACTIVE else lease


def waiting_holders(lease_stub) -> list[str]:
    return [waiter.holder for waiter in all_waiters(lease_stub)]


def test_a_killed_holder_with_a_session_is_freed_within_seconds(
    lease_stub, calculators, start_client
):
    client = start_client("doomed", "--session", str(KEEPALIVE_TIMEOUT), "--ttl", "300")
    session_id = client.expect("session")
    lease_id = client.expect("holding")
    assert get_lease(lease_stub, lease_id).session_id == session_id

    killed_at = time.time()
    client.kill()
    lease = wait_until(
        lambda: ended_lease(lease_stub, lease_id), BROKEN_STREAM_BOUND + MARGIN, "the lease ended"
    )

    assert lease.state == lease_pb2.LEASE_STATE_EXPIRED
    assert "stream broke" in lease.end_reason
    freed_after = seconds(lease.end_time) - killed_at
    assert 0 <= freed_after <= BROKEN_STREAM_BOUND, f"freed {freed_after:.3f} s after the kill"
    assert acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="next")


def test_a_frozen_holder_is_freed_after_its_keep_alive_timeout(
    lease_stub, calculators, start_client
):
    client = start_client("frozen", "--session", str(KEEPALIVE_TIMEOUT), "--ttl", "300")
    client.expect("session")
    lease_id = client.expect("holding")

    stopped_at = time.time()
    client.signal(signal.SIGSTOP)
    try:
        lease = wait_until(
            lambda: ended_lease(lease_stub, lease_id),
            KEEPALIVE_TIMEOUT + MARGIN,
            "the frozen client's lease ended",
        )
    finally:
        client.signal(signal.SIGCONT)
        client.kill()

    assert lease.state == lease_pb2.LEASE_STATE_EXPIRED
    assert "keep-alives stopped" in lease.end_reason
    freed_after = seconds(lease.end_time) - stopped_at
    # Its last keep-alive came at most one interval before it froze.
    lowest = KEEPALIVE_TIMEOUT - KEEPALIVE_INTERVAL - 0.25
    assert lowest <= freed_after <= KEEPALIVE_TIMEOUT + MARGIN, (
        f"freed {freed_after:.3f} s after the freeze"
    )


@pytest.mark.parametrize("session", [False, True], ids=["plain", "in-session"])
def test_a_client_killed_while_waiting_leaves_the_queue_to_the_next(
    lease_stub, calculators, start_client, session
):
    keeper = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="keeper")
    session_args = ("--session", str(KEEPALIVE_TIMEOUT)) if session else ()
    dead = start_client("dead-waiter", "--max-wait", "60", *session_args)
    dead.expect("waiting")
    assert waiting_holders(lease_stub) == ["dead-waiter"]
    survivor = start_client("next-waiter", "--max-wait", "60")
    survivor.expect("waiting")
    assert waiting_holders(lease_stub) == ["dead-waiter", "next-waiter"]

    killed_at = time.monotonic()
    dead.kill()
    wait_until(
        lambda: waiting_holders(lease_stub) == ["next-waiter"],
        BROKEN_STREAM_BOUND + MARGIN,
        "the dead waiter to leave the queue",
    )
    left_after = time.monotonic() - killed_at
    assert left_after <= BROKEN_STREAM_BOUND, f"left the queue {left_after:.3f} s after the kill"

    release(lease_stub, keeper)
    lease_id = survivor.expect("holding")
    lease = get_lease(lease_stub, lease_id)
    assert lease.holder == "next-waiter"
    assert [g.resource.name for g in lease.grants] == ["calc-1"]
    assert all_leases(lease_stub, holder="dead-waiter") == []


def test_a_killed_holder_without_a_session_expires_by_ttl(lease_stub, calculators, start_client):
    ttl = 2.0
    client = start_client("no-session", "--ttl", str(ttl))
    lease_id = client.expect("holding")
    client.kill()
    assert get_lease(lease_stub, lease_id).state == lease_pb2.LEASE_STATE_ACTIVE

    lease = wait_until(
        lambda: ended_lease(lease_stub, lease_id), ttl + MARGIN, "the lease's TTL to run out"
    )

    assert lease.state == lease_pb2.LEASE_STATE_EXPIRED
    assert lease.session_id == ""
    assert "TTL" in lease.end_reason
    lived = seconds(lease.end_time) - seconds(lease.create_time)
    assert ttl <= lived <= ttl + MARGIN, f"expired {lived:.3f} s after its grant"
