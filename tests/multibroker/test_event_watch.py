"""Watching events across brokers on one PostgreSQL: a watcher on one
broker sees the changes made on another, woken by NOTIFY (the safety poll
is off), and resumes on the other broker from its cursor when its own is
killed, seeing every event exactly once and in order."""

from __future__ import annotations

import signal

import grpc
import pytest

from tests.integration.helpers import BrokerProcess, wait_until, write_config
from tests.integration.test_event_resume import CALCULATOR_KIND, change
from tests.integration.test_events_api import WAIT, Collector, Stubs, all_events


@pytest.fixture
def start(tmp_path, postgres_url):
    """Starts `broker serve` processes on the test's schema; each is
    SIGKILLed by its pid at the end."""
    config = write_config(
        tmp_path / "broker.yml",
        {"kinds": [CALCULATOR_KIND], "events": {"poll_interval": 3600.0}},
    )
    processes: list[BrokerProcess] = []
    opened: list[Stubs] = []

    def start_one() -> tuple[BrokerProcess, Stubs]:
        args = ("--config", str(config), "--address", "127.0.0.1:0", "--database", postgres_url)
        process = BrokerProcess(args, cwd=tmp_path)
        processes.append(process)
        stubs = Stubs(process.wait_listening())
        opened.append(stubs)
        return process, stubs

    yield start_one
    for stubs in opened:
        stubs.channel.close()
    for process in processes:
        process.kill()


def test_a_watch_follows_another_brokers_changes_and_resumes_on_it(start):
    first, on_first = start()
    _, on_second = start()
    watch = Collector(on_first.events)
    for n in range(3):
        change(on_second, f"b{n}")  # made on the other broker
        change(on_first, f"a{n}")
    stored = all_events(on_second.events)
    assert len(stored) == 18
    assert watch.wait_for(18) == stored
    assert first.kill() == -signal.SIGKILL
    wait_until(lambda: watch.error is not None, WAIT, "the watch to break")
    assert watch.error.code() == grpc.StatusCode.UNAVAILABLE
    seen = list(watch.events)
    resumed = Collector(on_second.events, after=seen[-1].sequence)
    for n in range(2):
        change(on_second, f"c{n}")
    stored = all_events(on_second.events)
    together = seen + resumed.wait_for(len(stored) - len(seen))
    assert together == stored
    assert [e.sequence for e in together] == sorted({e.sequence for e in together})
    resumed.stop()
