"""Retrying a call whose broker did not answer, on the next broker.

UNAVAILABLE means the call may or may not have reached the broker: the
broker may be restarting, or its reply may have been lost on the way back.
DEADLINE_EXCEEDED on a try that the client cut short means the broker did
not answer in time: it may be frozen (its port still accepts connections,
but nothing answers). Either way the broker has stopped answering, so the
client moves to the next broker (`Brokers.failed`) and, if the call is safe
to repeat, tries again there within the call's budget.

How each kind of call is tried (`Kind`), with several brokers:

- `REPEATABLE` (reads, renew, release, opening a session): each try has its
  own deadline, the client's `try_timeout`, shorter than the call's budget,
  so a frozen broker costs one `try_timeout`, not the whole call.
- `ACQUIRE`: safe to repeat, since every try carries the same `request_id`
  and the broker answers a repeated request with the lease it granted (or
  lets it go on waiting in its place). A try is never cut short: a broker
  that sees its caller leave undoes the grant. Instead the try is sent only
  once the broker answered its health check within `try_timeout`
  (`Broker.answers`); a broker that freezes after that is noticed by the
  channel's pings (`sdk.channel`), within seconds.
- `ONCE` (create, update, delete, revoke): not safe to repeat, so sent once,
  also only to a broker that answered its health check; one that did not got
  nothing, and the next one is tried.

With one broker there is nowhere else to go: a try may use the whole budget,
and a call safe to repeat is tried again on UNAVAILABLE after a pause, as
acquire always was.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from sdk.brokers import Broker, Brokers
from sdk.errors import BrokerError, DeadlineExceededError, UnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3  # tries of a call at least; with more brokers, one per broker
FIRST_BACKOFF = 0.2  # seconds before trying the same broker again; doubled each time
# A DEADLINE_EXCEEDED this long before the try's own deadline is the broker's
# answer (an acquire's wait ended), not a try cut short.
SLACK = 0.01

# What a try that the broker did not answer fails with.
SILENT = (UnavailableError, DeadlineExceededError)


class Retry:
    """The budget of one logical call: at most `attempts` tries, all of them
    before `timeout` seconds from now, with a doubling pause before a try on
    a broker already tried."""

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

    def after(self, error: BrokerError, *, pause: bool = True) -> None:
        """Called when a try failed with `error`: pauses before the next try
        (unless `pause` is False: it goes to another broker), or raises
        `error` when no try or too little time is left."""
        self._tries_left -= 1
        if self._tries_left <= 0:
            raise error
        if not pause:
            if self.remaining() <= 0:
                raise error
            logger.warning("the broker did not answer (%s); trying the next one", error)
            return
        if self._backoff >= self.remaining():
            raise error
        logger.warning("the broker is unavailable (%s); retrying in %.1f s", error, self._backoff)
        time.sleep(self._backoff)
        self._backoff *= 2


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a call is tried: `repeat`, whether it is safe to send again;
    `cut`, whether a try may end at the per-try deadline."""

    repeat: bool
    cut: bool


REPEATABLE = Kind(repeat=True, cut=True)
ACQUIRE = Kind(repeat=True, cut=False)
ONCE = Kind(repeat=False, cut=False)


@dataclasses.dataclass(frozen=True)
class Try:
    """One try of a call: the broker to send it to, its deadline in seconds,
    and its number (1 for the first)."""

    broker: Broker
    timeout: float
    number: int


class Failover:
    """The tries of one logical call across `brokers`, within `timeout`
    seconds in all. Usage::

        failover = Failover(brokers, timeout=10, try_timeout=3, kind=REPEATABLE)
        while True:
            try:
                return send(failover.next_try())
            except SILENT as error:
                failover.failed(error)
    """

    def __init__(
        self,
        brokers: Brokers,
        *,
        timeout: float,
        try_timeout: float,
        kind: Kind,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._brokers = brokers
        self._try_timeout = try_timeout
        self._kind = kind
        self._clock = clock
        self._retry = Retry(timeout, attempts=max(ATTEMPTS, len(brokers)), clock=clock)
        self._tried: set[int] = set()
        self._broker: Broker | None = None
        self._deadline: float | None = None  # of the try in flight; None: nothing sent
        self.tries = 0

    def next_try(self) -> Try:
        """The next try, on the current broker. A call that may not be cut
        short first asks the broker's health, and fails with UNAVAILABLE,
        having sent nothing, if no SERVING comes within `try_timeout`."""
        broker = self._brokers.current()
        self._broker, self._deadline = broker, None
        self._tried.add(broker.index)
        self.tries += 1
        timeout = self._retry.remaining()
        if len(self._brokers) > 1:
            if self._kind.cut:
                timeout = min(timeout, self._try_timeout)
            else:
                wait = min(timeout, self._try_timeout)
                if not broker.answers(wait):
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"broker {broker.address} did not answer SERVING within {wait:g} s",
                    )
                timeout = self._retry.remaining()
        self._deadline = self._clock() + timeout
        return Try(broker, timeout, self.tries)

    def failed(self, error: BrokerError) -> None:
        """The try failed with `error`, one of `SILENT`: returns when the call
        is to be tried again (on the broker now current), raises `error` when
        it is the call's outcome."""
        assert self._broker is not None, "failed() follows next_try()"
        deadline = self._deadline
        sent = deadline is not None
        if (
            isinstance(error, DeadlineExceededError)
            and deadline is not None
            and self._clock() < deadline - SLACK
        ):
            raise error  # the broker's own answer, not its silence
        self._brokers.failed(self._broker)
        if sent and not self._kind.repeat:
            raise error
        self._retry.after(error, pause=self._brokers.current().index in self._tried)


def run(
    brokers: Brokers,
    send: Callable[[Try], T],
    *,
    timeout: float,
    try_timeout: float,
    kind: Kind,
) -> T:
    """`send(try)` until it returns, moving to the next broker each time a
    try fails with one of `SILENT`, as `Failover` decides."""
    failover = Failover(brokers, timeout=timeout, try_timeout=try_timeout, kind=kind)
    while True:
        try:
            return send(failover.next_try())
        except SILENT as error:
            failover.failed(error)
