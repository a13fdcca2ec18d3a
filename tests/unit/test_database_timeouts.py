"""One stall bound (`database.stall_timeout`) sets every PostgreSQL timeout
of a broker's sessions, on the server and on the broker's own end of each
connection (pooled ones and the grant listener's); a transaction left idle
is ended by the server, freeing its locks; and the health probe answers
within its bound whatever the link does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import urlparse

import peewee
import pytest

from broker.models.database import (
    DEFAULT_STALL_TIMEOUT,
    WRITE_LOCK_KEY,
    PostgresqlDatabase,
    Timeouts,
    close_database,
    open_database,
    schema_key,
)
from broker.models.notify import GrantListener
from broker.models.probe import PostgresqlProbe, SqliteProbe, probe_for
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import wait_until
from tests.multibroker.tcp_proxy import TcpProxy

STALL = 3.0


def test_every_timeout_derives_from_the_stall_bound():
    timeouts = Timeouts(DEFAULT_STALL_TIMEOUT)
    assert DEFAULT_STALL_TIMEOUT == 5.0
    assert timeouts.server_settings() == {
        "statement_timeout": 10_000,
        "lock_timeout": 2_500,
        "idle_in_transaction_session_timeout": 2_500,
        "tcp_keepalives_idle": 2,
        "tcp_keepalives_interval": 1,
        "tcp_keepalives_count": 3,
        "tcp_user_timeout": 5_000,
    }
    assert timeouts.connect_params() == {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": 5_000,
    }
    # Keep-alives stay whole seconds of at least 1; libpq waits at least 2 s to connect.
    assert Timeouts(1.0).keepalive == (1, 1, 3)
    assert Timeouts(1.0).connect_seconds == 2
    assert Timeouts(60.0).keepalive == (30, 10, 3)


@pytest.fixture
def postgres(postgres_url):
    database = open_database(postgres_url, stall_timeout=STALL)
    yield database
    close_database(database)


def test_the_opened_database_carries_the_settings(postgres):
    assert isinstance(postgres, PostgresqlDatabase)
    assert postgres.timeouts == Timeouts(STALL)
    params = postgres.connect_params
    assert {key: params[key] for key in Timeouts(STALL).connect_params()} == {
        "connect_timeout": 3,
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": 3_000,
    }
    for key, value in Timeouts(STALL).server_settings().items():
        assert f"-c {key}={value}" in params["options"]
    # Its sessions are named after the broker's process, for pg_stat_activity.
    assert params["application_name"] == f"broker-{os.getpid()}"


def server_setting(cursor, name: str) -> str:
    cursor.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
    return cursor.fetchone()[0]


def socket_options(fd: int) -> dict[str, int]:
    """The TCP keep-alive and user timeout options of a connected socket."""
    sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


BROKER_END = {"keepalive": 1, "idle": 1, "interval": 1, "count": 3, "user_timeout_ms": 3_000}


def test_a_pooled_connection_has_them_on_both_ends(postgres):
    with postgres.connection_context():
        cursor = postgres.execute_sql("SHOW idle_in_transaction_session_timeout")
        assert cursor.fetchone()[0] == "1500ms"
        cursor = postgres.cursor()
        assert server_setting(cursor, "lock_timeout") == "1500"
        assert server_setting(cursor, "statement_timeout") == "6000"
        assert server_setting(cursor, "tcp_user_timeout") == "3000"
        assert server_setting(cursor, "tcp_keepalives_idle") == "1"
        assert server_setting(cursor, "tcp_keepalives_count") == "3"
        assert socket_options(postgres.connection().fileno()) == BROKER_END


def test_the_grant_listeners_connection_has_them_too(postgres):
    connection = GrantListener(postgres, lambda ids: None).connect()
    try:
        assert connection.autocommit
        with connection.cursor() as cursor:
            cursor.execute("SHOW idle_in_transaction_session_timeout")
            assert cursor.fetchone()[0] == "1500ms"
            assert server_setting(cursor, "tcp_user_timeout") == "3000"
        assert socket_options(connection.fileno()) == BROKER_END
    finally:
        connection.close()


def test_a_transaction_left_idle_is_ended_and_its_locks_freed(postgres, postgres_admin):
    key = (WRITE_LOCK_KEY, schema_key(postgres))
    with (
        pytest.raises((peewee.OperationalError, peewee.InterfaceError)),
        postgres.connection_context(),
        postgres.atomic(),
    ):
        postgres.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", key)
        pid = postgres.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        # The broker stalls here, inside its transaction.
        with postgres_admin.cursor() as cursor:

            def ended() -> bool:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                return cursor.fetchone()[0] == 0

            wait_until(ended, 2 * STALL, "the idle transaction's session to be ended")
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
            assert cursor.fetchone()[0] is True
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)
        postgres.execute_sql("SELECT 1")  # the transaction is gone


# ------------------------------------------------------------------ probes


def test_probe_bounds_follow_the_stall_bound(postgres, tmp_path):
    probe = probe_for(postgres, STALL)
    assert isinstance(probe, PostgresqlProbe)
    assert (probe.timeout, probe.interval) == (1.5, 0.75)
    sqlite = probe_for(open_database(f"sqlite:///{tmp_path / 'b.db'}"), 8.0)
    assert isinstance(sqlite, SqliteProbe)
    assert (sqlite.timeout, sqlite.interval) == (4.0, 1.0)


def proxied(postgres_url: str, proxy: TcpProxy) -> PostgresqlDatabase:
    return open_database(proxy.url_for(postgres_url), stall_timeout=STALL)


def test_the_postgresql_probe_fails_while_the_link_is_blackholed_or_cut(postgres_url, proxy):
    database = proxied(postgres_url, proxy)
    probe = probe_for(database, STALL)
    try:
        assert probe.check() is True
        assert probe.check() is True  # on the same connection

        proxy.blackhole()
        assert probe.check() is False  # the open connection carries nothing
        assert probe.check() is False  # nor does a new one
        proxy.restore()
        assert probe.check() is True

        proxy.cut()
        assert probe.check() is False  # broken
        assert probe.check() is False  # refused
        proxy.restore()
        assert probe.check() is True
    finally:
        probe.close()
        close_database(database)


def test_the_postgresql_probe_takes_no_lock(postgres, postgres_admin):
    """Another session holding the write lock does not fail the probe."""
    probe = probe_for(postgres, STALL)
    key = (WRITE_LOCK_KEY, schema_key(postgres))
    with postgres_admin.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
        try:
            assert probe.check() is True
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)
            probe.close()


def test_the_postgresql_probe_fails_on_a_server_that_refuses(postgres_url):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    parsed = urlparse(postgres_url)
    database = open_database(
        parsed._replace(netloc=f"{parsed.username}@127.0.0.1:{port}").geturl(), stall_timeout=STALL
    )
    probe = probe_for(database, STALL)
    assert probe.check() is False
    assert probe.check() is False


def test_the_sqlite_probe_serves_while_the_file_can_be_read(tmp_path):
    path = tmp_path / "broker.sqlite3"
    database = open_database(f"sqlite:///{path}")
    with database.connection_context():
        database.execute_sql("CREATE TABLE t (x INTEGER)")
    probe = probe_for(database, DEFAULT_STALL_TIMEOUT)
    assert probe.check() is True
    path.unlink()
    assert probe.check() is False
    assert probe_for(open_database("sqlite:///:memory:"), DEFAULT_STALL_TIMEOUT).check() is True


def test_the_sqlite_probe_leaves_the_brokers_locks_and_log_alone(tmp_path):
    path = tmp_path / "broker.sqlite3"
    database = open_database(f"sqlite:///{path}")
    try:
        database.connect()
        database.execute_sql("CREATE TABLE kept (n INTEGER)")
        database.execute_sql("INSERT INTO kept VALUES (1)")
        probe = probe_for(database, 8.0)
        assert probe.check() is True
        # Another process (`broker tokens create`, say) opens and closes the
        # database: it must see this one still using the log, and keep it.
        subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS, str(path)], check=True, timeout=RPC_TIMEOUT
        )
        assert os.path.exists(f"{path}-wal")
        assert database.execute_sql("SELECT count(*) FROM kept").fetchone()[0] == 2
    finally:
        close_database(database)
    assert probe.check() is True
    assert probe_for(open_database(f"sqlite:///{tmp_path / 'missing.db'}"), 8.0).check() is False


OTHER_PROCESS = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("INSERT INTO kept VALUES (2)")
connection.commit()
connection.close()
"""
