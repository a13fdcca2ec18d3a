"""A broker restarting on a schema it already laid out changes nothing and
takes no lock that traffic takes, so the brokers serving beside it go on
granting throughout, and no call of theirs waits for, or deadlocks with, its
start-up.

How "no conflicting lock" is shown: during the restart the test itself holds,
in one open transaction, the lock every write of traffic takes on each table
of the schema (ROW EXCLUSIVE, which any DDL on that table waits for) and the
brokers' layout lock. A start-up that ran any schema change, or took the
layout lock, would wait for the test, hit its lock timeout and exit; this
one must start, and serve, while they are held. The schema version row is
not rewritten either (its row version, `xmin`, stays)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from broker.models.database import LAYOUT_LOCK_KEY, schema_lock_key
from broker.models.schema import SCHEMA_VERSION_KEY
from tests.integration.helpers import calculator, create_resource, wait_until
from tests.integration.test_ownership_under_concurrency import (
    event_violations,
    ownership_violations,
)
from tests.multibroker.fleet import SERVING, GrantLoop, recorded_events, schema_of

# Short, so that a start-up waiting for the test's locks gives up quickly.
STALL = 2.0
NAMES = ["calc-1", "calc-2", "calc-3"]


@contextlib.contextmanager
def traffic_and_layout_locks_held(admin, schema: str) -> Iterator[None]:
    """Holds ROW EXCLUSIVE on every table of `schema`, and the layout lock,
    in one transaction of the test's own connection."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,)
        )
        tables = [row[0] for row in cursor.fetchall()]
        assert tables
        cursor.execute("BEGIN")
        try:
            for table in tables:
                cursor.execute(f'LOCK TABLE "{schema}"."{table}" IN ROW EXCLUSIVE MODE')
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LAYOUT_LOCK_KEY, schema_lock_key(schema))
            )
            yield
        finally:
            cursor.execute("ROLLBACK")


def version_row(admin, schema: str) -> tuple:
    """The schema version row's value and row version."""
    with admin.cursor() as cursor:
        cursor.execute(
            f'SELECT "value", xmin::text FROM "{schema}"."setting" WHERE "name" = %s',
            (SCHEMA_VERSION_KEY,),
        )
        return cursor.fetchone()


def test_a_restart_on_a_current_schema_changes_nothing_and_holds_up_no_one(
    make_fleet, postgres_admin, postgres_url
):
    schema = schema_of(postgres_url)
    fleet = make_fleet(stall_timeout=STALL)
    serving, restarting = fleet.start_many(2)
    for n, name in enumerate(NAMES, start=1):
        create_resource(serving.inventory, calculator(name, f"10.0.0.{n}"))
    loop = GrantLoop(serving, NAMES, "serving").start()
    wait_until(lambda: len(loop.grants) >= 5, 10.0, "the serving broker to grant")
    before = version_row(postgres_admin, schema)

    fleet.kill(restarting)
    with traffic_and_layout_locks_held(postgres_admin, schema):
        granted = len(loop.grants)
        restarted = fleet.start()
        assert restarted.health_status() == SERVING
        # Traffic went on meanwhile, beside the test's locks.
        wait_until(lambda: len(loop.grants) > granted + 5, 10.0, "grants during the restart")

    assert version_row(postgres_admin, schema) == before
    restarted_loop = GrantLoop(restarted, NAMES, "restarted").start()
    wait_until(lambda: len(restarted_loop.grants) >= 5, 10.0, "the restarted broker to grant")
    for each in (loop, restarted_loop):
        each.stop()
    assert (loop.errors, restarted_loop.errors) == ([], [])
    assert ownership_violations(loop.holds + restarted_loop.holds) == []
    assert event_violations(recorded_events(postgres_admin, postgres_url)) == []
