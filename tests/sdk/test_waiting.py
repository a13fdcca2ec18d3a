"""Waiting in the broker's queue through the SDK, against a real broker and
the calculator device: a lease granted as soon as its holder releases, the
statuses reported while waiting, not waiting, a wait that ends, priority,
and Ctrl-C while waiting."""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import BrokerClient, DeadlineExceededError, Granted, ResourceBusyError, Waiting
from tests.sdk.helpers import WAIT, WaitRecorder, calc_requirement, wait_until


def utc(timestamp) -> datetime.datetime:
    return timestamp.ToDatetime(tzinfo=datetime.UTC)


@pytest.fixture
def other(broker):
    """A second client, under another holder."""
    with BrokerClient(broker.address, holder="other@bench") as other:
        yield other


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def test_a_waiting_lease_is_granted_when_the_holder_releases(client, other, calc, pool, caplog):
    recorder = WaitRecorder()
    first = client.lease(Calculator, name="calc")

    def second_lease() -> tuple[str, int]:
        held = other.lease(Calculator, name="calc", wait=WAIT, on_wait=recorder)
        with held as calculator:
            return held.lease_id, calculator.calculate("20 + 22")

    with caplog.at_level(logging.INFO, logger="sdk.lease"), first:
        waiting = pool.submit(second_lease)
        recorder.wait()
        assert not waiting.done()
    second_id, answer = waiting.result(WAIT)

    assert answer == 42
    released, granted = client.get_lease(first.lease_id), client.get_lease(second_id)
    assert released.state == lease_pb2.LEASE_STATE_RELEASED
    assert granted.holder == "other@bench"
    assert utc(granted.create_time) >= utc(released.end_time)
    status = recorder.statuses[0]
    assert status.position == 0
    assert status.holders == ["tester@bench"]
    assert [holder.lease_id for holder in status.blocked.holders] == [first.lease_id]
    assert status.blocked.label == "Calculator"
    logged = [record.getMessage() for record in caplog.records if record.name == "sdk.lease"]
    assert any("waiting at position 0" in line and "tester@bench" in line for line in logged)


@pytest.mark.parametrize("wait", [0, None])
def test_not_waiting_is_busy_at_once(client, other, calc, wait):
    recorder = WaitRecorder()
    with client.lease(Calculator, name="calc") as held:
        started = time.monotonic()
        with (
            pytest.raises(ResourceBusyError) as busy,
            other.lease(Calculator, name="calc", wait=wait, on_wait=recorder),
        ):
            pytest.fail("the block must not run while calc is held")

        assert time.monotonic() - started < WAIT / 2
        assert [holder.holder for holder in busy.value.blocked.holders] == ["tester@bench"]
        assert recorder.statuses == []
        assert list(client.list_waiters()) == []
        assert held.calculate("1 + 1") == 2


def test_a_wait_that_ends_raises_deadline_exceeded_and_leaves_nothing(client, other, calc):
    recorder = WaitRecorder()
    with client.lease(Calculator, name="calc") as held:
        started = time.monotonic()
        with (
            pytest.raises(DeadlineExceededError),
            other.lease(Calculator, name="calc", wait=1.5, on_wait=recorder),
        ):
            pytest.fail("the block must not run while calc is held")

        assert time.monotonic() - started >= 1.4
        assert recorder.statuses[0].position == 0
        assert list(client.list_waiters()) == []
        active = list(client.list_leases(lease_pb2.LEASE_STATE_ACTIVE))
        assert [lease.holder for lease in active] == ["tester@bench"]
        assert held.calculate("2 + 2") == 4
    assert client.get_resource("calc").owner == ""


def test_a_higher_priority_waiter_is_served_first(broker, client, calc, pool):
    served: list[str] = []
    recorders = {"low": WaitRecorder(), "high": WaitRecorder()}

    def wait_for_calc(name: str, priority: int) -> str:
        with BrokerClient(broker.address, holder=f"{name}@bench") as waiter:
            held = waiter.lease(
                Calculator, name="calc", wait=WAIT, priority=priority, on_wait=recorders[name]
            )
            with held:
                served.append(name)
            return held.lease_id

    with client.lease(Calculator, name="calc"):
        low = pool.submit(wait_for_calc, "low", -10)
        recorders["low"].wait()
        high = pool.submit(wait_for_calc, "high", 10)
        recorders["high"].wait()
        queue = [(waiter.holder, waiter.position) for waiter in client.list_waiters()]
        assert queue == [("high@bench", 0), ("low@bench", 1)]
        assert recorders["high"].statuses[0].position == 0
    high_id, low_id = high.result(WAIT), low.result(WAIT)

    assert served == ["high", "low"]
    high_lease, low_lease = client.get_lease(high_id), client.get_lease(low_id)
    assert utc(high_lease.create_time) <= utc(high_lease.end_time) <= utc(low_lease.create_time)


def test_ctrl_c_while_waiting_leaves_the_queue(client, other, calc, default_sigint):
    assert threading.current_thread() is threading.main_thread()
    recorder = WaitRecorder()

    def press_ctrl_c() -> None:
        """Sends SIGINT to the waiting (main) thread, as a terminal's Ctrl-C does."""
        if recorder.waiting.wait(WAIT):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with client.lease(Calculator, name="calc"):
        presser = threading.Thread(target=press_ctrl_c, daemon=True)
        presser.start()
        with (
            pytest.raises(KeyboardInterrupt),
            other.lease(Calculator, name="calc", wait=WAIT, on_wait=recorder),
        ):
            pytest.fail("the block must not run while calc is held")
        presser.join(WAIT)

        wait_until(lambda: list(client.list_waiters()) == [], threading.Event().wait)
        active = list(client.list_leases(lease_pb2.LEASE_STATE_ACTIVE))
        assert [lease.holder for lease in active] == ["tester@bench"]


def test_watch_acquire_yields_statuses_then_the_grant(client, other, calc, pool):
    lease, secret = client.acquire([calc_requirement()])
    events = other.watch_acquire([calc_requirement()], max_wait=WAIT, priority=5)

    first = next(events)
    assert isinstance(first, Waiting)
    assert (first.position, first.holders) == (0, ["tester@bench"])
    assert first.deadline > datetime.datetime.now(datetime.UTC)
    assert "waiting at position 0" in str(first)
    rest = pool.submit(list, events)
    client.release(lease.lease_id, secret)

    *statuses, granted = rest.result(WAIT)
    assert all(isinstance(status, Waiting) for status in statuses)
    assert isinstance(granted, Granted)
    assert granted.lease.holder == "other@bench"
    assert other.renew(granted.lease.lease_id, granted.secret).lease_id == granted.lease.lease_id
