"""Telling every broker that waiting requests were granted, and that the
queue changed.

A waiting request may be granted by a call on another broker. On PostgreSQL
the granting transaction sends a NOTIFY, delivered when it commits, and every
broker LISTENs on a connection of its own and wakes its waiting calls. A
transaction that changed the waiting requests (one came, left, was granted or
timed out) sends one NOTIFY on `QUEUE_CHANNEL`, so each broker refreshes the
queue positions of its waiting calls. On SQLite there is one broker and
nothing to send.

The listening connection is opened with the parameters of every other
(`database.Timeouts`): TCP keep-alives and a TCP user timeout end it when its
link stops carrying bytes, a connection attempt gives up in a bounded time,
and the listener then reconnects.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable, Mapping

import peewee
import psycopg2

from broker.models import statements
from broker.models.backend import backend_of
from broker.models.database import database_proxy, notify_channel

CHANNEL = "broker_grants"
QUEUE_CHANNEL = "broker_queue"

log = logging.getLogger(__name__)


def announce_grants(waiter_ids: list[int]) -> None:
    """Inside the granting transaction: tell the other brokers on commit."""
    if waiter_ids and backend_of(database_proxy).notifies:
        statements.run(
            "SELECT pg_notify(?, ?)",
            [notify_channel(CHANNEL, database_proxy.obj), ",".join(map(str, waiter_ids))],
        )


def announce_queue_change() -> None:
    """Inside a transaction that changed the waiting requests (once per
    transaction): tell the other brokers on commit."""
    if backend_of(database_proxy).notifies:
        statements.run(
            "SELECT pg_notify(?, '')", [notify_channel(QUEUE_CHANNEL, database_proxy.obj)]
        )


class GrantListener:
    """Listens for grants announced by any broker and hands their waiter ids
    to `callback`, on a thread and a connection of its own, reconnecting
    after a failure. Notes on the other `channels` (e.g. new events) hand
    their payloads to their own callback, on the same connection; each is
    called with none after (re)connecting, for what came before."""

    def __init__(
        self,
        database: peewee.PostgresqlDatabase,
        callback: Callable[[list[int]], None],
        channels: Mapping[str, Callable[[list[str]], None]] | None = None,
    ):
        self.database = database
        self.callback = callback
        self.channels = dict(channels or {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grant-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg2.Error as error:
                log.warning("grant listener lost its connection (%s); reconnecting", error)
                self._stop.wait(1.0)

    def connect(self):
        """A new connection with the database's own parameters, in autocommit."""
        connection = psycopg2.connect(dbname=self.database.database, **self.database.connect_params)
        connection.autocommit = True
        return connection

    def _listen(self) -> None:
        grants = notify_channel(CHANNEL, self.database)
        # The channels of this database's schema, by the name callers gave.
        names = {notify_channel(channel, self.database): channel for channel in self.channels}
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                for channel in (*names, grants):
                    cursor.execute(f"LISTEN {channel}")
            # Whatever was announced before listening began is read anew by
            # whoever relies on it (a waiting call's poll, the event feed).
            for callback in self.channels.values():
                callback([])
            while not self._stop.is_set():
                if select.select([connection], [], [], 0.5)[0]:
                    connection.poll()
                    notes = list(connection.notifies)
                    connection.notifies.clear()
                    ids = [
                        int(waiter_id)
                        for note in notes
                        if note.channel == grants
                        for waiter_id in note.payload.split(",")
                    ]
                    if ids:
                        self.callback(ids)
                    for listened, channel in names.items():
                        callback = self.channels[channel]
                        payloads = [note.payload for note in notes if note.channel == listened]
                        if payloads:
                            callback(payloads)
        finally:
            connection.close()
