"""Brokers on different schemas of one PostgreSQL database share its NOTIFY
channels' namespace; each schema's brokers listen on channels of their own."""

from __future__ import annotations

import threading

import pytest

from broker.models.database import close_database, notify_channel, open_database, schema_channel
from broker.models.event import CHANNEL as EVENTS
from broker.models.notify import CHANNEL as GRANTS
from broker.models.notify import GrantListener
from tests.integration.helpers import wait_until


def test_the_public_schema_keeps_the_plain_names_and_others_get_their_own():
    assert schema_channel(GRANTS, "public") == GRANTS
    assert schema_channel(GRANTS, "lab_a") != schema_channel(GRANTS, "lab_b")
    assert schema_channel(GRANTS, "lab_a").startswith(f"{GRANTS}_")
    assert schema_channel(EVENTS, "lab_a") != schema_channel(GRANTS, "lab_a")


@pytest.fixture
def postgres(postgres_url):
    database = open_database(postgres_url)
    yield database
    close_database(database)


def test_a_listener_hears_only_its_own_schemas_channels(postgres, postgres_admin):
    grants: list[list[int]] = []
    events: list[list[str]] = []
    heard = threading.Event()

    def on_events(payloads: list[str]) -> None:
        events.append(payloads)
        if "2" in payloads:
            heard.set()

    listener = GrantListener(postgres, grants.append, {EVENTS: on_events})
    listener.start()
    try:
        # It reports each (re)connection with an empty note: it listens now.
        wait_until(lambda: [] in events, 5.0, "the listener to connect")
        with postgres_admin.cursor() as cursor:
            for channel in (GRANTS, EVENTS, schema_channel(EVENTS, "another_lab")):
                cursor.execute("SELECT pg_notify(%s, '1')", (channel,))
            own = notify_channel(EVENTS, postgres)
            cursor.execute("SELECT pg_notify(%s, '2')", (own,))
            cursor.execute("SELECT pg_notify(%s, '7')", (notify_channel(GRANTS, postgres),))
        # Notes arrive in the order they were sent: once the last has come,
        # any of the others' would have come before it.
        wait_until(lambda: heard.is_set() and grants, 5.0, "the schema's own notes")
    finally:
        listener.stop()
    assert [payload for payloads in events for payload in payloads] == ["2"]
    assert grants == [[7]]
