"""What the SDK suite's tests share: bounded waits on conditions, requests
for the `calc` resource, and recording the statuses of a waiting lease."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable

from broker.v1 import lease_pb2
from sdk import BrokerClient, Waiting
from sdk.requirements import to_constraints

WAIT = 10.0


def wait_until(condition: Callable[[], bool], pause, timeout: float = WAIT) -> None:
    """Polls `condition` until it holds; `pause(seconds)` waits between polls
    (an Event's `wait`, so a watched event cuts the pause short)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        pause(0.05)


def calc_requirement(name: str = "calc") -> lease_pb2.Requirement:
    """A requirement for the calculator named `name`."""
    return lease_pb2.Requirement(
        kind="Calculator", constraints=to_constraints({"name": name}), label="calc"
    )


def lease_state(client: BrokerClient, lease_id: str) -> lease_pb2.LeaseState.ValueType:
    return client.get_lease(lease_id).state


class WaitRecorder:
    """An `on_wait` callback that keeps every status and sets `waiting` at
    the first one."""

    def __init__(self) -> None:
        self.statuses: list[Waiting] = []
        self.waiting = threading.Event()

    def __call__(self, waiting: Waiting) -> None:
        self.statuses.append(waiting)
        self.waiting.set()

    def wait(self, timeout: float = WAIT) -> None:
        assert self.waiting.wait(timeout), "the lease did not start waiting in time"


def run_client(
    arguments: list[str], broker_address: str, cwd=None, **options
) -> subprocess.CompletedProcess[str]:
    """A client program in a process of its own, pointed at the broker by
    `BROKER_TARGET` (as a user's shell would), bounded in time."""
    environment = {**os.environ, "BROKER_TARGET": broker_address, **options.pop("env", {})}
    return subprocess.run(
        arguments,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **options,
    )
