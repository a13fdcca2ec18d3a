"""Freed heap goes back to the system when the broker trims it."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading

import pytest

from broker.api import memory
from broker.api.server import build_server
from tests.integration.helpers import wait_until

BLOCK = 16 * 1024
BLOCKS = 8_000  # 125 MiB in blocks too small for their own mapping


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not memory.available(), reason="the C library cannot trim its heap")
def test_trimming_returns_the_holes_a_burst_left():
    blocks = [ctypes.create_string_buffer(BLOCK) for _ in range(BLOCKS)]
    # Every tenth block stays, as long-lived calls do: the freed ones are
    # holes the allocator keeps, not a heap top it gives back by itself.
    kept = blocks[::10]
    del blocks
    before = resident_bytes()

    assert memory.trim()

    returned = before - resident_bytes()
    assert returned > BLOCK * BLOCKS // 2, f"only {returned} bytes went back"
    assert len(kept) == BLOCKS // 10


def test_a_running_broker_trims_its_heap_now_and_then(config, monkeypatch):
    trims = []
    real_trim = memory.trim

    def counted_trim() -> bool:
        trims.append(threading.get_ident())
        return real_trim()

    monkeypatch.setattr(memory, "TRIM_INTERVAL", 0.05)
    monkeypatch.setattr(memory, "trim", counted_trim)
    server = build_server(dataclasses.replace(config, base_dir="."), "127.0.0.1:0")
    server.start()
    try:
        wait_until(lambda: len(trims) >= 2, 10.0, "two trims")
    finally:
        server.stop(0)

    # Off the event loop: on a worker thread, never the loop's.
    assert server._thread.ident not in trims
