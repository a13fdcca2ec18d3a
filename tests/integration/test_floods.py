"""Floods of calls from one client: a thousand waiting calls started at once
all queue, each waiting request costs the broker little memory, which it
gets back when the calls end, and a burst of calls larger than gRPC's own
backlog of unanswered calls is served whole (no call CANCELLED or INTERNAL).
Memory is measured as the Python heap the broker allocates (tracemalloc),
with the client in a subprocess of its own."""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.api import waits
from broker.api.server import backlog_options, build_server
from broker.config import ServerConfig
from broker.domain.values import SessionState
from broker.models.session import Session
from broker.v1 import lease_service_pb2, lease_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.helpers import (
    acquire,
    calculator,
    create_resource,
    detail,
    requirement,
    subprocess_env,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
WAITERS = 500
CROWD = 1_000  # waiting calls started at once
BURST = 3_000  # more than gRPC's default backlog of calls not yet picked up
MAX_BYTES_PER_WAITER = 10 * 1024
# Dicts and sets keep the size their tables grew to: what stays is that, not
# the waiters.
MAX_RETAINED_PER_WAITER = 2 * 1024
FLOOD_TIMEOUT = 90.0
SMALL_LIMIT = 5


class Flood:
    """`tests.integration.flood_client` in a subprocess, stopped by closing
    its stdin (and killed if it outlives the test)."""

    def __init__(self, address: str, kind: str, calls: int, channels: int):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.flood_client",
                "--address",
                address,
                "--kind",
                kind,
                "--calls",
                str(calls),
                "--channels",
                str(channels),
            ],
            cwd=ROOT,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def outcomes(self) -> dict[str, int]:
        line = self.process.stdout.readline()
        assert line, f"the flood client exited with {self.process.wait(FLOOD_TIMEOUT)}"
        return json.loads(line)

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(FLOOD_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


@pytest.fixture
def flood(broker):
    floods: list[Flood] = []

    def start(kind: str, calls: int, channels: int = 1) -> Flood:
        floods.append(Flood(broker.address, kind, calls, channels))
        return floods[-1]

    yield start
    for started in floods:
        started.end()


def waiting_count(lease_stub) -> int:
    # Bounded by the flood's timeout: right after a flood leaves, the
    # listing waits behind every departure's transaction.
    response = lease_stub.ListWaiters(
        lease_service_pb2.ListWaitersRequest(page_size=1000), timeout=FLOOD_TIMEOUT
    )
    return len(response.waiters)


def test_waiting_requests_cost_little_memory_and_give_it_back(
    broker, inventory_stub, lease_stub, flood, monkeypatch
):
    # What a waiting request holds, not what the board's safety poll of
    # every request allocates and frees while memory is measured.
    monkeypatch.setattr(waits, "SAFETY_POLL_SECONDS", FLOOD_TIMEOUT)
    create_resource(inventory_stub, calculator("calc"))
    acquire(lease_stub, requirement("Calculator"), holder="keeper")
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        waiters = flood("waiters", WAITERS)
        assert waiters.outcomes() == {"waiting": WAITERS}
        wait_until(
            lambda: broker.board.waiting_calls() == WAITERS,
            FLOOD_TIMEOUT,
            "every waiting call followed",
        )
        gc.collect()
        per_waiter = (tracemalloc.get_traced_memory()[0] - base) / WAITERS

        waiters.end()
        wait_until(
            lambda: broker.board.waiting_calls() == 0 and waiting_count(lease_stub) == 0,
            FLOOD_TIMEOUT,
            "every waiter left",
        )
        gc.collect()
        retained = (tracemalloc.get_traced_memory()[0] - base) / WAITERS
    finally:
        tracemalloc.stop()

    assert per_waiter <= MAX_BYTES_PER_WAITER, f"{per_waiter:.0f} bytes per waiting request"
    assert retained <= MAX_RETAINED_PER_WAITER, f"{retained:.0f} bytes per waiter kept"


def test_a_thousand_waiting_calls_started_at_once_all_queue(
    broker, inventory_stub, lease_stub, flood
):
    create_resource(inventory_stub, calculator("calc"))
    acquire(lease_stub, requirement("Calculator"), holder="keeper")

    crowd = flood("waiters", CROWD, channels=4)

    assert crowd.outcomes() == {"waiting": CROWD}
    wait_until(
        lambda: broker.board.waiting_calls() == CROWD,
        FLOOD_TIMEOUT,
        "every waiting call followed",
    )
    assert waiting_count(lease_stub) == CROWD
    crowd.end()
    wait_until(
        lambda: broker.board.waiting_calls() == 0 and waiting_count(lease_stub) == 0,
        FLOOD_TIMEOUT,
        "every waiter left",
    )


@pytest.mark.slow
def test_a_burst_of_sessions_is_served_whole(broker, flood):
    sessions = flood("sessions", BURST, channels=4)

    assert sessions.outcomes() == {"session": BURST}
    sessions.end()
    wait_until(lambda: open_sessions() == 0, FLOOD_TIMEOUT, "every session closed")


def open_sessions() -> int:
    """Sessions still open, as the broker in this process stored them."""
    return Session.select().where(Session.state == SessionState.OPEN).count()


@pytest.mark.parametrize("limit", [10, 4096, 20_000])
def test_grpc_keeps_every_call_up_to_the_limit_waiting_to_be_served(limit):
    # Past its backlog gRPC would cancel calls at random instead of leaving
    # them to the broker's own limit of calls at once.
    options = dict(backlog_options(limit))

    assert options["grpc.server.max_pending_requests"] >= limit
    assert options["grpc.server.max_pending_requests_hard_limit"] >= limit


@pytest.fixture
def small_broker(config):
    """A broker that serves at most `SMALL_LIMIT` calls at once."""
    limited = dataclasses.replace(
        config, server=ServerConfig(max_concurrent_rpcs=SMALL_LIMIT), base_dir="."
    )
    server = build_server(limited, "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    yield server
    server.stop(0)


def test_past_the_call_limit_a_call_is_refused_naming_the_limit(small_broker):
    stop = threading.Event()

    def quiet_session(n: int):
        yield lease_service_pb2.OpenSessionRequest(holder=f"s{n}")
        stop.wait(FLOOD_TIMEOUT)

    with grpc.insecure_channel(small_broker.address) as channel:
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        sessions = [stub.OpenSession(quiet_session(n)) for n in range(SMALL_LIMIT)]
        try:
            for session in sessions:
                next(session)

            with pytest.raises(grpc.RpcError) as refused:
                stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=RPC_TIMEOUT)
            # Health still answers a full broker.
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        finally:
            stop.set()
            for session in sessions:
                session.cancel()

        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_concurrent_rpcs" in refused.value.details()
        [violation] = detail(refused.value, error_details_pb2.QuotaFailure).violations
        assert violation.subject == "server.max_concurrent_rpcs"
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        wait_until(
            lambda: small_broker.interceptor.limit.running == 0,
            FLOOD_TIMEOUT,
            "the sessions' places freed",
        )
        assert stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=RPC_TIMEOUT)
