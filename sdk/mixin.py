"""Rotest-style test classes under `python -m unittest`: the mixin leases
what the class declares (`sdk.declarations`) before each test and hands it
out as attributes::

    class AddTest(ResourcesMixin, unittest.TestCase):
        resources = [request("calc", Calculator, name="calc")]

        def test_add(self):
            self.assertEqual(self.calc.calculate("1 + 1"), 2)

Consecutive tests declaring the same resources keep one lease, as under
the pytest plugin (`sdk.keeper`); what is held when the process ends is
released then. Under pytest the plugin does all of this (with its options),
and the mixin steps aside. `configure()` sets what the plugin's options
would: skip-init, save-state, the state directory and overrides.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import tempfile
import threading
import unittest
from collections.abc import Iterable
from typing import Any

from sdk.client import BrokerClient
from sdk.declarations import class_requests
from sdk.keeper import ResourceKeeper
from sdk.overrides import Overrides, parse_overrides
from sdk.requirements import ResourceRequest

_lock = threading.Lock()
_keeper: ResourceKeeper | None = None
_state_root = ""


def configure(
    *,
    skip_init: bool = False,
    save_state: bool = False,
    state_dir: str = "",
    overrides: Iterable[str] = (),
) -> ResourceKeeper:
    """Sets how this process's tests hold resources (releasing what is held
    now), as the plugin's `--skip-init`, `--save-state`, `--state-dir` and
    `--resource` do; returns the keeper."""
    global _keeper, _state_root
    parsed = parse_overrides(overrides)
    with _lock:
        if _keeper is not None:
            _keeper.close()
        made = ResourceKeeper(
            BrokerClient,
            skip_init=skip_init,
            save_state=save_state,
            overrides=Overrides(parsed, lambda: made.client.list_kinds()),
        )
        _keeper = made
        _state_root = state_dir or os.path.join(tempfile.gettempdir(), "broker-states")
    return made


def keeper() -> ResourceKeeper:
    """This process's keeper, made with the defaults on first use."""
    with _lock:
        current = _keeper
    return current if current is not None else configure()


@atexit.register
def _release_at_exit() -> None:
    with _lock:
        current = _keeper
    if current is not None:
        current.close()


class ResourcesMixin:
    """Leases the resources a `unittest.TestCase` subclass declares; put it
    before `unittest.TestCase` among the bases."""

    _broker_held = False

    def setUp(self) -> None:
        if not self._broker_held:
            requests = class_requests(type(self))
            if requests:
                for label, resource in keeper().hold(requests).items():
                    setattr(self, label, resource)
                self._broker_holds = True
        super().setUp()  # type: ignore[misc]

    def request_resources(self, requests: Iterable[ResourceRequest]) -> None:
        """Leases more in the middle of the test, as Rotest's
        `request_resources` did: each named request's resource becomes an
        attribute (`request("calc2", Calculator)` -> `self.calc2`), held
        until the test ends."""
        requests = list(requests)
        if self._broker_held:
            plugin_request = getattr(self, "_broker_request", None)
            assert plugin_request is not None
            held = plugin_request(requests)
        else:
            held = keeper().request_resources(requests)
            self._broker_holds = True
        for label, resource in held.items():
            setattr(self, label, resource)

    def release_resources(self, labels: Iterable[str]) -> None:
        """Gives back the resources held under `labels` in the middle of the
        test and keeps the others, as Rotest's `release_resources` did."""
        labels = list(labels)
        if self._broker_held:
            plugin_release = getattr(self, "_broker_release", None)
            assert plugin_release is not None
            plugin_release(labels)
        else:
            keeper().release_resources(labels)

    def run(self, result: unittest.TestResult | None = None) -> Any:
        if self._broker_held or result is None:
            return super().run(result)  # type: ignore[misc]
        failures, errors = len(result.failures), len(result.errors)
        try:
            return super().run(result)  # type: ignore[misc]
        finally:
            if getattr(self, "_broker_holds", False):
                failed = len(result.failures) > failures or len(result.errors) > errors
                try:
                    keeper().finish(
                        failed=failed,
                        errored=len(result.errors) > errors,
                        state_dir=_state_dir(self) if failed else None,
                        keep=True,
                    )
                except Exception:
                    result.addError(self, sys.exc_info())  # type: ignore[arg-type]


def _state_dir(test: Any) -> str:
    name = re.sub(r"[^\w.-]+", "_", test.id()).strip("_")[-150:]
    return os.path.join(_state_root, name)
