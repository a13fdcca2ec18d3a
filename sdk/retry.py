"""Retrying a call that failed because the broker could not be reached.

UNAVAILABLE means the call may or may not have reached the broker: the
broker may be restarting, or its reply may have been lost on the way back.
Only a call that is safe to repeat is retried; an acquire is, because every
try carries the same `request_id` and the broker answers a repeated request
with the lease it already granted (or lets it go on waiting in its place).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sdk.errors import UnavailableError

logger = logging.getLogger(__name__)

ATTEMPTS = 3
FIRST_BACKOFF = 0.2  # seconds before the second try; doubled before each next one


class Retry:
    """The budget of one logical call: at most `attempts` tries, all of them
    before `timeout` seconds from now, with a doubling pause between tries.

    Usage::

        retry = Retry(timeout)
        while True:
            try:
                return call(timeout=retry.remaining())
            except UnavailableError as error:
                retry.after(error)
    """

    def __init__(
        self,
        timeout: float,
        *,
        attempts: int = ATTEMPTS,
        backoff: float = FIRST_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts is at least 1, not {attempts}")
        self._clock = clock
        self._deadline = clock() + timeout
        self._tries_left = attempts
        self._backoff = backoff

    def remaining(self) -> float:
        """Seconds left for the next try."""
        return max(0.0, self._deadline - self._clock())

    def after(self, error: UnavailableError) -> None:
        """Called when a try failed with `error`: pauses before the next try,
        or raises `error` when no try or too little time is left."""
        self._tries_left -= 1
        if self._tries_left <= 0 or self._backoff >= self.remaining():
            raise error
        logger.warning("the broker is unavailable (%s); retrying in %.1f s", error, self._backoff)
        time.sleep(self._backoff)
        self._backoff *= 2
