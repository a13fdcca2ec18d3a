"""The console's live pages, on both backends: a change made by any client
reaches every open page as a server-sent event; the broker's cost is one
feed watcher and one read per batch of events, whatever the number of
pages; a reconnecting page gets what it missed or is told to reload; and a
page sees only the resources its visitor may see."""

from __future__ import annotations

import contextlib
import threading

from broker.domain.tokens import Tokens
from broker.v1 import lease_pb2
from sdk import BrokerClient
from tests.integration.console_helpers import LiveReader, Visitor, start_console
from tests.integration.helpers import wait_until

WAIT = 20.0


@contextlib.contextmanager
def live_pages(console, path: str, count: int = 1, visitor: Visitor | None = None):
    visitor = visitor or Visitor(console.web_address)
    readers = [LiveReader(visitor, path) for _ in range(count)]
    try:
        for reader in readers:
            assert reader.status == 200
        wait_until(
            lambda: console.console.hub.pages >= count, WAIT, f"{count} live pages to be open"
        )
        yield readers
    finally:
        for reader in readers:
            reader.close()


def test_an_added_resource_and_its_holder_reach_the_inventory_page(console, client):
    with live_pages(console, "/live?topics=resources") as (page,):
        client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.7"})
        _, added = page.next("resource")
        assert (added["name"], added["state"], added["fields"]) == (
            "calc",
            "free",
            {"ip_address": "10.0.0.7"},
        )
        lease, _ = client.acquire([lease_pb2.Requirement(kind="Calculator")], ttl=60)
        _, held = page.next("resource", where=lambda row: row["state"] == "held")
        assert held["owner"] == "alice@bench-3"
        assert held["lease"]["lease_id"] == lease.lease_id
        assert held["lease"]["ttl"] == "60 s"
        client.revoke_lease(lease.lease_id, "done")
        _, freed = page.next("resource", where=lambda row: row["state"] == "free")
        assert freed["owner"] == ""
        client.delete_resource("calc")
        _, gone = page.next("resource-gone")
        assert gone == {"name": "calc"}


def test_a_hundred_pages_cost_one_watcher_and_the_reads_of_one(console, client):
    hub = console.console.hub
    client.create_resource("Calculator", "calc-0", {"ip_address": "10.0.0.1"})
    watchers_before = console.feed.watching()

    def changes(pages: list[LiveReader], first: int) -> int:
        before = hub.reads
        for number in range(first, first + 5):
            client.create_resource("Calculator", f"calc-{number}", {"ip_address": "10.0.0.1"})
        for page in pages:
            page.next("resource", where=lambda row: row["name"] == f"calc-{first + 4}")
        return hub.reads - before

    with live_pages(console, "/live?topics=resources,events") as one:
        reads_for_one = changes(one, 1)
        assert console.feed.watching() == watchers_before + 1
    with live_pages(console, "/live?topics=resources,events", count=100) as hundred:
        reads_for_hundred = changes(hundred, 6)
        assert console.feed.watching() == watchers_before + 1
        scraped = Visitor(console.web_address).get("/metrics").text
        assert "broker_console_live_pages 100.0" in scraped
    # At most one read per event, and no more for a hundred pages than for one.
    assert 1 <= reads_for_hundred <= 5
    assert 1 <= reads_for_one <= 5


def test_a_page_that_reconnects_gets_what_it_missed_or_is_told_to_reload(console, client):
    visitor = Visitor(console.web_address)
    with live_pages(console, "/live?topics=resources", visitor=visitor) as (page,):
        client.create_resource("Calculator", "calc-1", {"ip_address": "10.0.0.1"})
        last, _ = page.next("resource")
    client.create_resource("Calculator", "calc-2", {"ip_address": "10.0.0.2"})
    seen = int(last.rsplit(".", 1)[1])
    wait_until(lambda: console.console.hub.newest > seen, WAIT, "the hub to see calc-2")
    again = LiveReader(visitor, "/live?topics=resources", last_id=last)
    try:
        _, missed = again.next("resource")
        assert missed["name"] == "calc-2"
    finally:
        again.close()
    # An id of another broker's pages, or of this one before a restart.
    for foreign in ("0123abcd.1", "-5"):
        stale = LiveReader(visitor, "/live?topics=resources", last_id=foreign)
        try:
            stale.next("reload")
        finally:
            stale.close()


def test_the_subscription_ends_once_no_page_is_left(console, client):
    hub = console.console.hub
    hub.linger_seconds = 0.2
    watchers_before = console.feed.watching()
    with live_pages(console, "/live?topics=resources") as (page,):
        client.create_resource("Calculator", "calc-1", {"ip_address": "10.0.0.1"})
        page.next("resource")
        assert console.feed.watching() == watchers_before + 1
    wait_until(lambda: not hub.following, WAIT, "the hub to stop following")
    assert console.feed.watching() == watchers_before
    reads = hub.reads
    client.create_resource("Calculator", "calc-2", {"ip_address": "10.0.0.2"})
    client.delete_resource("calc-2")
    with live_pages(console, "/live?topics=resources") as (page,):
        client.create_resource("Calculator", "calc-3", {"ip_address": "10.0.0.3"})
        assert page.next("resource")[1]["name"] == "calc-3"
    # calc-2's changes, made with nobody watching, were never read.
    assert hub.reads == reads + 1


def test_the_queue_page_is_sent_the_waiters_when_the_queue_moves(console, client):
    client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    lease, secret = client.acquire([lease_pb2.Requirement(kind="Calculator")], ttl=60)
    with (
        live_pages(console, "/live?topics=queue") as (page,),
        BrokerClient(console.address, holder="bob@bench-4") as bob,
    ):
        waiting = threading.Thread(
            target=lambda: bob.acquire(
                [lease_pb2.Requirement(kind="Calculator")], ttl=60, max_wait=WAIT
            ),
            daemon=True,
        )
        waiting.start()
        _, queued = page.next("queue", where=lambda data: data["waiters"])
        (waiter,) = queued["waiters"]
        assert waiter["holder"] == "bob@bench-4"
        assert waiter["requirements"] == ["Calculator"]
        assert waiter["blocked"] == "Calculator"
        client.release(lease.lease_id, secret)
        page.next("queue", where=lambda data: not data["waiters"])
        waiting.join(WAIT)


def test_a_page_sees_only_the_groups_its_visitor_may_see(config):
    server = start_console(config, auth=True)
    try:
        tokens = Tokens()
        admin = tokens.create("root", "admin")[1]
        viewer_token = tokens.create("rf-viewer", "viewer", groups=("rf",))[1]
        viewer = Visitor(server.web_address)
        viewer.login(viewer_token)
        with (
            BrokerClient(server.address, token=admin) as client,
            live_pages(server, "/live?topics=resources", visitor=viewer) as (page,),
        ):
            client.create_resource(
                "Calculator", "bench-calc", {"ip_address": "10.0.0.1"}, group="bench"
            )
            client.create_resource("Calculator", "rf-calc", {"ip_address": "10.0.0.2"}, group="rf")
            _, first = page.next("resource")
            assert first["name"] == "rf-calc"
    finally:
        server.stop(0)


def test_a_live_page_needs_a_session_when_authentication_is_on(config):
    server = start_console(config, auth=True)
    try:
        page = LiveReader(Visitor(server.web_address), "/live?topics=resources")
        assert page.status == 401
        page.close()
    finally:
        server.stop(0)
