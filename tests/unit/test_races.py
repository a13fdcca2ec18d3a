"""Which failures count as a lost race, run again unseen by the caller
(`broker.domain.races`): the errors PostgreSQL really raises, made here."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from broker.domain.errors import ConflictError, NotFoundError
from broker.domain.races import lost_race
from broker.models import locks
from tests.conftest import POSTGRES_URL


def deadlock_error() -> BaseException:
    """The error of the victim of a real deadlock between two sessions."""
    first, second = (psycopg2.connect(POSTGRES_URL) for _ in range(2))
    errors: list[BaseException] = []
    both_hold = threading.Barrier(2)

    def cross(connection, mine: int, theirs: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '10ms'")
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (mine,))
            both_hold.wait()
            try:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (theirs,))
            except psycopg2.Error as error:
                errors.append(error)
        connection.rollback()

    threads = [
        threading.Thread(target=cross, args=(first, 0x7E57, 0x7E58)),
        threading.Thread(target=cross, args=(second, 0x7E58, 0x7E57)),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        first.close()
        second.close()
    assert len(errors) == 1
    return errors[0]


def lock_timeout_error() -> BaseException:
    holder, waiter = (psycopg2.connect(POSTGRES_URL) for _ in range(2))
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (0x7E59,))
        with waiter.cursor() as cursor, pytest.raises(psycopg2.Error) as raised:
            cursor.execute("SET lock_timeout = '10ms'")
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (0x7E59,))
        return raised.value
    finally:
        holder.close()
        waiter.close()


def test_a_deadlock_victim_runs_again(postgres_admin):
    error = deadlock_error()
    assert error.pgcode == "40P01"
    assert lost_race(error)


def test_a_lock_not_had_in_time_is_reported(postgres_admin):
    # Behind a frozen broker: the caller hears UNAVAILABLE and may retry.
    error = lock_timeout_error()
    assert error.pgcode == "55P03"
    assert not lost_race(error)


def test_a_claim_taken_first_and_an_escalation_run_again():
    assert lost_race(ConflictError("another lease took a resource first; retry"))
    assert lost_race(locks.Escalate(locks.Level.QUEUE, "enqueueing"))
    assert not lost_race(NotFoundError("lease", "x"))
