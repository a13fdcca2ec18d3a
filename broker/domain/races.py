"""Races between writers, settled by running the operation again.

On PostgreSQL writers about the same kind run at once, so a transaction may
lose a race: another lease claimed a resource first (`ConflictError` from
the conditional claim), the database chose it as a deadlock's victim or
could not serialise it, or it found it needs locks it did not take
(`locks.Escalate`: a release that meets a waiter, an acquire that must
wait). None of these is the caller's business: the whole operation runs
again, in a fresh transaction that reads everything anew, a bounded number
of times. On SQLite none of them happens (one writer at a time).
"""

from __future__ import annotations

import collections
import functools
import random
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import peewee

from broker.domain.errors import ConflictError
from broker.models import locks
from broker.models.database import database_proxy

ATTEMPTS = 8
# The longest pause before an attempt, in seconds; each pause is jittered.
MAX_PAUSE = 0.02
# PostgreSQL's serialization_failure and deadlock_detected.
RETRIED_CODES = frozenset({"40001", "40P01"})

P = ParamSpec("P")
R = TypeVar("R")


def lost_race(error: BaseException) -> bool:
    """Whether `error` is a race that another attempt may win."""
    if isinstance(error, ConflictError | locks.Escalate):
        return True
    # peewee wraps the driver's error (its first argument), except those of
    # classes it does not know, such as a deadlock's, which pass unwrapped.
    if isinstance(error, peewee.DatabaseError) and error.args:
        error = error.args[0]
    return getattr(error, "pgcode", None) in RETRIED_CODES


# Retries made by this process, by what was lost: `conflict` (a claim or a
# version taken first), `escalation` (more locks needed), `serialization`
# (PostgreSQL's serialization failure or deadlock). Read by monitoring.
retries: collections.Counter[str] = collections.Counter()
_counting = threading.Lock()


def _cause(error: BaseException) -> str:
    if isinstance(error, locks.Escalate):
        return "escalation"
    return "conflict" if isinstance(error, ConflictError) else "serialization"


def retried(operation: Callable[P, R]) -> Callable[P, R]:
    """Runs `operation` (one write transaction) again when it lost a race;
    an escalation makes the next attempt take the locks it asked for.
    Inside a caller's transaction it runs once: the caller's retry owns it."""

    @functools.wraps(operation)
    def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        if database_proxy.obj.in_transaction():
            return operation(*args, **kwargs)
        try:
            for tries in range(1, ATTEMPTS + 1):
                try:
                    return operation(*args, **kwargs)
                except Exception as error:
                    if tries == ATTEMPTS or not lost_race(error):
                        raise
                    with _counting:
                        retries[_cause(error)] += 1
                    if isinstance(error, locks.Escalate):
                        locks.raise_floor(error)
                    else:
                        time.sleep(random.uniform(0, MAX_PAUSE * tries / ATTEMPTS))
            raise AssertionError("unreachable")
        finally:
            locks.reset_floor()

    return attempt
