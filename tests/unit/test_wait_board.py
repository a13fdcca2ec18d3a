"""The board of waiting calls on its own event loop, over `Leases` on each
backend: however many queue changes come at once, it reads the places of
its calls once, and the next read waits `REFRESH_SECONDS`; a grant it was
never told of is found by its safety poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker.api import waits
from broker.api.server import runner_for
from broker.api.waits import WaitBoard
from broker.domain.values import Granted
from tests.unit.builders import calc, need
from tests.unit.test_queue import hold, release, wait

BURST = 100
PATIENCE = 5.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_burst_of_queue_changes_makes_one_read_and_the_next_waits_its_turn(
    database, inventory, leases, monkeypatch
):
    inventory.create(calc("calc-1"))
    held = hold(leases, need("Calculator"))
    waiting = wait(leases, need("Calculator"), holder="waiter")
    reads: list[float] = []
    read = leases.wait_positions

    def counted(waiter_ids):
        reads.append(time.monotonic())
        return read(waiter_ids)

    monkeypatch.setattr(leases, "wait_positions", counted)

    async def scenario() -> Granted | object:
        board = WaitBoard(asyncio.get_running_loop(), leases, runner)
        leases.on_granted = board.notify
        following = board.follow(waiting, stream=True)
        outcome = asyncio.ensure_future(anext(following))
        await until(lambda: board.waiting_calls() == 1, "the call to be followed")
        for _ in range(BURST):
            board.queue_changed()
        await until(lambda: len(reads) == 1, "the first read")
        for _ in range(BURST):
            board.queue_changed()
        await until(lambda: len(reads) == 2, "the second read")
        release(leases, held)
        granted = await asyncio.wait_for(outcome, PATIENCE)
        await following.aclose()
        return granted

    runner = runner_for(database)
    try:
        granted = asyncio.run(scenario())
    finally:
        runner.close()

    assert isinstance(granted, Granted)
    assert granted.lease.holder == "waiter"
    assert len(reads) == 2
    # The board starts the second read REFRESH_SECONDS after the first; the
    # reads are timed on the database thread, whose start of the first may
    # lag the board's by a thread's wake-up.
    assert reads[1] - reads[0] >= waits.REFRESH_SECONDS * 0.9


def test_a_grant_the_board_was_never_told_of_is_found_by_its_safety_poll(
    database, inventory, leases, monkeypatch
):
    monkeypatch.setattr(waits, "SAFETY_POLL_SECONDS", 0.2)
    inventory.create(calc("calc-1"))
    held = hold(leases, need("Calculator"))
    waiting = wait(leases, need("Calculator"), holder="waiter")

    async def scenario() -> Granted | object:
        # Nothing wires the board to `leases`: no grant or queue change
        # reaches it but by its own look.
        board = WaitBoard(asyncio.get_running_loop(), leases, runner)
        following = board.follow(waiting, stream=False)
        outcome = asyncio.ensure_future(anext(following))
        await until(lambda: board.waiting_calls() == 1, "the call to be followed")
        release(leases, held)
        granted = await asyncio.wait_for(outcome, PATIENCE)
        await following.aclose()
        return granted

    runner = runner_for(database)
    try:
        granted = asyncio.run(scenario())
    finally:
        runner.close()

    assert isinstance(granted, Granted)
    assert granted.lease.holder == "waiter"
