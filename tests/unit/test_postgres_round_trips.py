"""On PostgreSQL a transaction's BEGIN, and the writes whose results nobody
reads (`defer`), travel with the next statement, in one round trip; a
transaction that sent nothing sends nothing at all. The transaction keeps
its meaning: what it did commits, or rolls back, and an error is raised
inside it."""

from __future__ import annotations

import peewee
import pytest

from broker.models.database import close_database, open_database
from tests.statement_counter import counting


@pytest.fixture
def postgres(postgres_url):
    database = open_database(postgres_url)
    database.connect()
    database.execute_sql("CREATE TABLE note (text TEXT PRIMARY KEY)")
    yield database
    close_database(database)


def notes(database) -> list[str]:
    return [text for (text,) in database.execute_sql("SELECT text FROM note ORDER BY text")]


def test_the_first_statement_carries_the_begin_and_commit_follows(postgres):
    with counting(postgres) as counted, postgres.atomic():
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("kept",))
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("also kept",))

    assert counted.statements == [
        "BEGIN; INSERT INTO note VALUES (%s)",
        "INSERT INTO note VALUES (%s)",
        "COMMIT",
    ]
    assert notes(postgres) == ["also kept", "kept"]


def test_a_transaction_that_sent_nothing_sends_no_begin_commit_or_rollback(postgres):
    with counting(postgres) as counted:
        with postgres.atomic():
            pass
        with pytest.raises(RuntimeError), postgres.atomic():
            raise RuntimeError("before any statement")

    assert counted.statements == []


def test_a_failed_transaction_rolls_back_what_it_did(postgres):
    with pytest.raises(peewee.IntegrityError), postgres.atomic():
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("undone",))
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("undone",))

    # The connection is not left inside the failed transaction.
    assert notes(postgres) == []
    with postgres.atomic():
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("next",))
    assert notes(postgres) == ["next"]


def test_a_nested_transaction_is_a_savepoint_after_the_begin(postgres):
    with counting(postgres) as counted, postgres.atomic():
        with pytest.raises(peewee.IntegrityError), postgres.atomic():
            postgres.execute_sql("INSERT INTO note VALUES (%s)", ("twice",))
            postgres.execute_sql("INSERT INTO note VALUES (%s)", ("twice",))
        postgres.execute_sql("INSERT INTO note VALUES (%s)", ("after",))

    assert counted.statements[0].startswith("BEGIN; SAVEPOINT")
    assert notes(postgres) == ["after"]


def test_a_transaction_opened_before_any_connection_commits(postgres_url):
    database = open_database(postgres_url)
    try:
        with database.atomic():
            database.execute_sql("CREATE TABLE note (text TEXT PRIMARY KEY)")
            database.execute_sql("INSERT INTO note VALUES (%s)", ("first",))
        assert notes(database) == ["first"]
    finally:
        close_database(database)


INSERT = "INSERT INTO note VALUES (%s)"


def test_a_deferred_write_runs_before_the_statement_it_travels_with(postgres):
    with counting(postgres) as counted, postgres.atomic():
        postgres.defer(INSERT, ("deferred",))
        (seen,) = postgres.execute_sql("SELECT count(*) FROM note").fetchone()

    assert seen == 1
    assert counted.statements == [f"BEGIN; {INSERT}; SELECT count(*) FROM note", "COMMIT"]
    assert notes(postgres) == ["deferred"]


def test_a_deferred_write_with_nothing_after_it_is_sent_before_the_commit(postgres):
    with counting(postgres) as counted, postgres.atomic():
        postgres.execute_sql(INSERT, ("sent",))
        postgres.defer(INSERT, ("last",))

    assert counted.statements == [f"BEGIN; {INSERT}", INSERT, "COMMIT"]
    assert notes(postgres) == ["last", "sent"]


def test_a_deferred_write_that_fails_fails_its_transaction(postgres):
    with pytest.raises(peewee.IntegrityError), postgres.atomic():
        postgres.execute_sql(INSERT, ("twice",))
        postgres.defer(INSERT, ("twice",))
        postgres.execute_sql("SELECT 1")

    assert notes(postgres) == []


def test_a_transaction_that_fails_before_sending_its_deferred_writes_sends_nothing(postgres):
    with counting(postgres) as counted, pytest.raises(RuntimeError), postgres.atomic():
        postgres.defer(INSERT, ("never",))
        raise RuntimeError("changed its mind")

    assert counted.statements == []
    assert notes(postgres) == []
