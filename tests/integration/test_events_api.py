"""The audit trail over gRPC: every change is one event, listed and watched
in sequence order; watches replay from a cursor and follow live, share one
read per broker, and a watcher too slow to keep up is cut off."""

from __future__ import annotations

import dataclasses
import random
import threading

import grpc
import pytest
from google.protobuf import timestamp_pb2

from broker.api.server import build_server
from broker.config import EventsConfig, LeaseConfig, RetentionConfig
from broker.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
    lease_service_pb2_grpc,
)
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.helpers import (
    acquire,
    calculator,
    create_calculators,
    expect_error,
    get_lease,
    pages,
    requirement,
    violation_fields,
    wait_until,
)

WAIT = 20.0
T = event_pb2
ADMIN = (("x-broker-holder", "admin@desk"),)
# The default of `quarantine.after_failures`.
QUARANTINE_AFTER = 3
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384))


@pytest.fixture
def make_broker(config):
    """Starts in-process brokers on the test's database with some settings
    replaced; each is stopped at the end."""
    started = []

    def make(**sections):
        server = build_server(dataclasses.replace(config, base_dir=".", **sections), "127.0.0.1:0")
        server.start()
        wait_serving(server.address)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(0)


class Stubs:
    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(self.channel)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(self.channel)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)


@pytest.fixture
def stubs_of():
    opened: list[Stubs] = []

    def of(server) -> Stubs:
        stubs = Stubs(server.address)
        opened.append(stubs)
        return stubs

    yield of
    for stubs in opened:
        stubs.channel.close()


def all_events(events_stub, **filters) -> list[event_pb2.Event]:
    request = event_service_pb2.ListEventsRequest(
        filter=event_service_pb2.EventFilter(**filters), page_size=7
    )
    return [event for page in pages(events_stub.ListEvents, request, "events") for event in page]


class Collector:
    """Reads a watch on a thread of its own, keeping every event."""

    def __init__(self, events_stub, after: int = 0, **filters):
        self.call = events_stub.WatchEvents(
            event_service_pb2.WatchEventsRequest(
                filter=event_service_pb2.EventFilter(**filters), after_sequence=after
            )
        )
        self.events: list[event_pb2.Event] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.events.append(response.event)
        except grpc.RpcError as error:
            self.error = error

    def wait_for(self, count: int) -> list[event_pb2.Event]:
        wait_until(
            lambda: len(self.events) >= count or self.error is not None,
            WAIT,
            f"{count} events on the watch",
        )
        assert self.error is None or self.error.code() == grpc.StatusCode.CANCELLED, self.error
        return list(self.events)

    def stop(self) -> None:
        self.call.cancel()
        self._thread.join(WAIT)


def summary(events) -> list[tuple[int, str, str]]:
    return [(e.type, e.resource, e.actor) for e in events]


def update(inventory_stub, name: str, **changes) -> None:
    inventory_stub.UpdateResource(
        inventory_service_pb2.UpdateResourceRequest(
            resource=calculator(name, **changes), update_mask={"paths": list(changes)}
        ),
        timeout=RPC_TIMEOUT,
    )


def test_every_change_is_one_event_with_its_actor_in_sequence_order(make_broker, stubs_of):
    broker = make_broker(leases=LeaseConfig(default_ttl=30.0, max_ttl=600.0, expiry_interval=0.1))
    stubs = stubs_of(broker)
    watch = Collector(stubs.events)
    rng = random.Random(20261201)
    expected: list[tuple[int, str, str]] = []
    usable: dict[str, bool] = {}
    reserved: set[str] = set()
    failures: dict[str, int] = {}  # failed setups in a row, by resource
    held: dict[str, tuple[str, str, str]] = {}  # lease id -> (secret, resource, holder)
    expiries = 0

    def free() -> list[str]:
        taken = {name for _, name, _ in held.values()}
        return sorted(name for name in usable if name not in taken)

    def grantable() -> list[str]:
        return [name for name in free() if usable[name] and name not in reserved]

    for step in range(140):
        choice = rng.choice(
            [
                "create",
                "comment",
                "usable",
                "service",
                "reserve",
                "delete",
                "acquire",
                "acquire",
                "setup",
                "setup",
                "setup",
                "renew",
                "release",
                "revoke",
            ]
        )
        if choice == "create" or not usable:
            name = f"calc-{step}"
            stubs.inventory.CreateResource(
                inventory_service_pb2.CreateResourceRequest(resource=calculator(name)),
                timeout=RPC_TIMEOUT,
            )
            usable[name] = True
            failures[name] = 0
            expected.append((T.EVENT_TYPE_RESOURCE_CREATED, name, ""))
        elif choice == "comment":
            name = rng.choice(sorted(usable))
            update(stubs.inventory, name, comment=f"step {step}")
            expected.append((T.EVENT_TYPE_RESOURCE_UPDATED, name, ""))
        elif choice == "usable" and free():
            name = rng.choice(free())
            usable[name] = not usable[name]
            update(stubs.inventory, name, is_usable=usable[name], comment="toggled")
            expected.append((T.EVENT_TYPE_RESOURCE_UPDATED, name, ""))
            if usable[name]:
                failures[name] = 0
            else:
                expected.append((T.EVENT_TYPE_RESOURCE_MARKED_UNUSABLE, name, ""))
        elif choice == "service" and free():
            name = rng.choice(free())
            if usable[name]:
                stubs.inventory.SetOutOfService(
                    inventory_service_pb2.SetOutOfServiceRequest(name=name, reason="rewiring"),
                    timeout=RPC_TIMEOUT,
                    metadata=ADMIN,
                )
                expected.append((T.EVENT_TYPE_RESOURCE_OUT_OF_SERVICE, name, "admin@desk"))
            else:
                stubs.inventory.ReturnToService(
                    inventory_service_pb2.ReturnToServiceRequest(name=name),
                    timeout=RPC_TIMEOUT,
                    metadata=ADMIN,
                )
                expected.append((T.EVENT_TYPE_RESOURCE_BACK_IN_SERVICE, name, "admin@desk"))
                failures[name] = 0
            usable[name] = not usable[name]
        elif choice == "reserve" and free():
            name = rng.choice(free())
            if name in reserved:
                update(stubs.inventory, name, reserved_for="")
                reserved.discard(name)
                unreserved = (T.EVENT_TYPE_RESOURCE_UNRESERVED, name, "")
                expected.extend([(T.EVENT_TYPE_RESOURCE_UPDATED, name, ""), unreserved])
            else:
                update(stubs.inventory, name, reserved_for="carol@bench", reservation_reason="demo")
                reserved.add(name)
                reserved_event = (T.EVENT_TYPE_RESOURCE_RESERVED, name, "")
                expected.extend([(T.EVENT_TYPE_RESOURCE_UPDATED, name, ""), reserved_event])
        elif choice == "delete" and free():
            name = rng.choice(free())
            stubs.inventory.DeleteResource(
                inventory_service_pb2.DeleteResourceRequest(name=name), timeout=RPC_TIMEOUT
            )
            del usable[name]
            reserved.discard(name)
            expected.append((T.EVENT_TYPE_RESOURCE_DELETED, name, ""))
        elif choice == "acquire" and grantable():
            name = rng.choice(grantable())
            holder = rng.choice(["alice@bench", "bob@bench"])
            expire = expiries < 2 and rng.random() < 0.3
            granted = acquire(
                stubs.leases,
                requirement("Calculator", name=name),
                holder=holder,
                ttl=1.0 if expire else 60.0,
            )
            expected.append((T.EVENT_TYPE_LEASE_GRANTED, name, holder))
            lease_id = granted.lease.lease_id
            if expire:
                expiries += 1
                wait_until(
                    lambda lease_id=lease_id: (
                        get_lease(stubs.leases, lease_id).state == lease_pb2.LEASE_STATE_EXPIRED
                    ),
                    WAIT,
                    "the lease to expire",
                )
                expected.append((T.EVENT_TYPE_LEASE_EXPIRED, name, ""))
            else:
                held[lease_id] = (granted.secret, name, holder)
        elif choice == "setup" and held:
            lease_id = rng.choice(sorted(held))
            secret, name, holder = held[lease_id]
            ok = rng.random() < 0.2
            stubs.leases.ReportSetup(
                lease_service_pb2.ReportSetupRequest(
                    lease_id=lease_id, secret=secret, resource=name, ok=ok, error="no answer"
                ),
                timeout=RPC_TIMEOUT,
            )
            failures[name] = 0 if ok else failures[name] + 1
            if failures[name] == QUARANTINE_AFTER:
                usable[name] = False
                expected.append((T.EVENT_TYPE_RESOURCE_QUARANTINED, name, holder))
        elif choice in ("renew", "release", "revoke") and held:
            lease_id = rng.choice(sorted(held))
            secret, name, holder = held[lease_id]
            if choice == "renew":
                stubs.leases.RenewLease(
                    lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret),
                    timeout=RPC_TIMEOUT,
                )
                expected.append((T.EVENT_TYPE_LEASE_RENEWED, name, holder))
                continue
            if choice == "release":
                stubs.leases.ReleaseLease(
                    lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret),
                    timeout=RPC_TIMEOUT,
                )
                expected.append((T.EVENT_TYPE_LEASE_RELEASED, name, holder))
            else:
                stubs.leases.RevokeLease(
                    lease_service_pb2.RevokeLeaseRequest(lease_id=lease_id, reason="rewired"),
                    timeout=RPC_TIMEOUT,
                    metadata=ADMIN,
                )
                expected.append((T.EVENT_TYPE_LEASE_REVOKED, name, "admin@desk"))
            del held[lease_id]

    listed = all_events(stubs.events)
    assert summary(listed) == expected
    sequences = [event.sequence for event in listed]
    assert sequences == sorted(set(sequences))
    assert {event.kind for event in listed} == {"Calculator"}
    revoked = [e for e in listed if e.type == T.EVENT_TYPE_LEASE_REVOKED]
    assert all(e.reason == "rewired" and e.lease_id and e.fencing_token for e in revoked)
    # Every kind of change happened in this run.
    assert {event.type for event in listed} >= {
        T.EVENT_TYPE_RESOURCE_OUT_OF_SERVICE,
        T.EVENT_TYPE_RESOURCE_BACK_IN_SERVICE,
        T.EVENT_TYPE_RESOURCE_QUARANTINED,
        T.EVENT_TYPE_RESOURCE_RESERVED,
        T.EVENT_TYPE_RESOURCE_UNRESERVED,
        T.EVENT_TYPE_LEASE_EXPIRED,
        T.EVENT_TYPE_LEASE_REVOKED,
    }
    # The watch opened before the first change saw each one once, in order.
    assert watch.wait_for(len(listed)) == listed
    watch.stop()


def test_listing_filters_by_resource_kind_lease_actor_type_and_time(broker, stubs_of):
    stubs = stubs_of(broker)
    create_calculators(stubs.inventory, 2)
    first = acquire(stubs.leases, requirement("Calculator", name="calc-1"), holder="alice")
    second = acquire(stubs.leases, requirement("Calculator", name="calc-2"), holder="bob")
    stubs.leases.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(lease_id=first.lease.lease_id, secret=first.secret),
        timeout=RPC_TIMEOUT,
    )
    every = all_events(stubs.events)
    assert len(every) == 5
    assert summary(all_events(stubs.events, resource="calc-1")) == [
        (T.EVENT_TYPE_RESOURCE_CREATED, "calc-1", ""),
        (T.EVENT_TYPE_LEASE_GRANTED, "calc-1", "alice"),
        (T.EVENT_TYPE_LEASE_RELEASED, "calc-1", "alice"),
    ]
    assert len(all_events(stubs.events, kind="Calculator")) == 5
    assert all_events(stubs.events, kind="Phone") == []
    assert [e.resource for e in all_events(stubs.events, lease_id=second.lease.lease_id)] == [
        "calc-2"
    ]
    assert [e.type for e in all_events(stubs.events, actor="alice")] == [
        T.EVENT_TYPE_LEASE_GRANTED,
        T.EVENT_TYPE_LEASE_RELEASED,
    ]
    granted_or_released = all_events(
        stubs.events, types=[T.EVENT_TYPE_LEASE_GRANTED, T.EVENT_TYPE_LEASE_RELEASED]
    )
    assert [e.resource for e in granted_or_released] == ["calc-1", "calc-2", "calc-1"]
    # A half-open time range: from the third event's time, before the fifth's.
    start, end = every[2].time, every[4].time
    in_range = all_events(stubs.events, start_time=start, end_time=end)
    assert [e.sequence for e in in_range] == [
        e.sequence
        for e in every
        if start.ToNanoseconds() <= e.time.ToNanoseconds() < end.ToNanoseconds()
    ]
    assert every[2] in in_range and every[4] not in in_range


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"filter": {"types": [0]}}, "filter.types[0]"),
        ({"filter": {"resource": "r" * 129}}, "filter.resource"),
        (
            {"filter": {"start_time": {"seconds": 200}, "end_time": {"seconds": 100}}},
            "filter.end_time",
        ),
    ],
)
def test_bad_listing_and_watch_requests_name_the_field(broker, stubs_of, request_fields, field):
    stubs = stubs_of(broker)
    create_calculators(stubs.inventory, 1)
    filter_fields = dict(request_fields.get("filter", {}))
    for key in ("start_time", "end_time"):
        if key in filter_fields:
            filter_fields[key] = timestamp_pb2.Timestamp(**filter_fields[key])
    listing = event_service_pb2.ListEventsRequest(
        filter=event_service_pb2.EventFilter(**filter_fields),
        **{k: v for k, v in request_fields.items() if k != "filter"},
    )
    error = expect_error(stubs.events.ListEvents, listing, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in violation_fields(error)
    if filter_fields:
        watch = stubs.events.WatchEvents(
            event_service_pb2.WatchEventsRequest(filter=listing.filter), timeout=RPC_TIMEOUT
        )
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(watch))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violation_fields(raised.value)
    # Nothing was changed, and the broker goes on serving.
    assert len(all_events(stubs.events)) == 1


def test_an_unknown_event_type_is_invalid_argument(broker, stubs_of):
    stubs = stubs_of(broker)
    request = event_service_pb2.ListEventsRequest(filter=event_service_pb2.EventFilter(types=[999]))
    error = expect_error(stubs.events.ListEvents, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert any(path.startswith("filter.types") for path in violation_fields(error))


def test_a_watch_replays_after_its_cursor_then_follows_with_its_filter(broker, stubs_of):
    stubs = stubs_of(broker)
    create_calculators(stubs.inventory, 3)
    stored = all_events(stubs.events)
    resumed = Collector(stubs.events, after=stored[0].sequence)
    filtered = Collector(stubs.events, resource="calc-2")
    assert resumed.wait_for(2) == stored[1:]
    assert summary(filtered.wait_for(1)) == [(T.EVENT_TYPE_RESOURCE_CREATED, "calc-2", "")]
    granted = acquire(stubs.leases, requirement("Calculator", name="calc-2"), holder="carol")
    update(stubs.inventory, "calc-1", comment="live")
    live = resumed.wait_for(4)[2:]
    assert summary(live) == [
        (T.EVENT_TYPE_LEASE_GRANTED, "calc-2", "carol"),
        (T.EVENT_TYPE_RESOURCE_UPDATED, "calc-1", ""),
    ]
    assert live[0].lease_id == granted.lease.lease_id
    assert live[0].fencing_token == granted.lease.grants[0].fencing_token
    assert [e.type for e in filtered.wait_for(2)] == [
        T.EVENT_TYPE_RESOURCE_CREATED,
        T.EVENT_TYPE_LEASE_GRANTED,
    ]
    assert resumed.events == all_events(stubs.events)[1:]
    resumed.stop()
    filtered.stop()


def test_one_read_serves_every_watcher_of_a_broker(make_broker, stubs_of):
    broker = make_broker(events=EventsConfig(poll_interval=3600.0))
    stubs = stubs_of(broker)
    watchers = [Collector(stubs.events) for _ in range(25)]
    wait_until(lambda: broker.feed.watching() == 25, WAIT, "every watch to follow the feed")
    reads_before = broker.feed.reads
    built_before = broker.event_servicer.responses_built
    changes = 20
    for n in range(changes):
        stubs.inventory.CreateResource(
            inventory_service_pb2.CreateResourceRequest(resource=calculator(f"calc-{n}")),
            timeout=RPC_TIMEOUT,
        )
    for watcher in watchers:
        assert len(watcher.wait_for(changes)) == changes
    # At most one read per commit (fewer when commits come together), and
    # one more for the wake-up of the last watch to join; never one per watcher.
    assert broker.feed.reads - reads_before <= changes + 1
    # Each event's response is built once and shared by the 25 watches.
    assert broker.event_servicer.responses_built - built_before == changes
    for watcher in watchers:
        watcher.stop()


def test_a_slow_watcher_is_cut_off_and_resumes_without_slowing_the_broker(make_broker, stubs_of):
    broker = make_broker(events=EventsConfig(watch_buffer=64, poll_interval=3600.0))
    stubs = stubs_of(broker)
    create_calculators(stubs.inventory, 1)
    fast = Collector(stubs.events)
    # The slow reader's channel keeps HTTP/2's flow-control window small, so
    # that what it does not read backs up to the broker soon.
    slow_channel = grpc.insecure_channel(broker.address, options=SMALL_WINDOW)
    slow = event_service_pb2_grpc.EventServiceStub(slow_channel).WatchEvents(
        event_service_pb2.WatchEventsRequest()
    )
    slow_events = iter(slow)
    received = [next(slow_events).event]  # the slow watch is open; it reads no more for now
    wait_until(lambda: broker.feed.watching() == 2, WAIT, "both watches to follow the feed")
    changes = 0
    # Big events fill the transport's buffers quickly; each toggle is three.
    while broker.feed.watching() == 2:
        assert changes < 3000, "the slow watcher was never cut off"
        update(stubs.inventory, "calc-1", is_usable=False, comment="x" * 4000)
        update(stubs.inventory, "calc-1", is_usable=True, comment="")
        changes += 3
    # The broker went on: every change was made and the fast watch has it.
    for _ in range(30):
        update(stubs.inventory, "calc-1", comment="after")
        changes += 1
    total = 1 + changes
    assert len(fast.wait_for(total)) == total
    with pytest.raises(grpc.RpcError) as raised:
        for response in slow_events:
            received.append(response.event)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    last = received[-1].sequence
    assert f"resume with after_sequence {last}" in raised.value.details()
    assert len(received) < total
    # Resuming from the last sequence received gives the rest, exactly once.
    rest = Collector(stubs.events, after=last)
    assert [e.sequence for e in received + rest.wait_for(total - len(received))] == [
        e.sequence for e in fast.events
    ]
    rest.stop()
    fast.stop()
    slow_channel.close()


def test_retention_deletes_old_events_and_an_old_cursor_is_out_of_range(make_broker, stubs_of):
    broker = make_broker(retention=RetentionConfig(events=2.0, sweep_interval=0.1))
    stubs = stubs_of(broker)
    create_calculators(stubs.inventory, 3)
    stored = all_events(stubs.events)
    # The sweep deletes every event older than two seconds but the newest.
    wait_until(lambda: len(all_events(stubs.events)) == 1, WAIT, "retention to delete old events")
    assert all_events(stubs.events) == stored[-1:]
    watch = stubs.events.WatchEvents(
        event_service_pb2.WatchEventsRequest(after_sequence=stored[0].sequence),
        timeout=RPC_TIMEOUT,
    )
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(watch))
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"the oldest kept is {stored[-1].sequence}" in raised.value.details()
    # From just before the oldest kept, the watch serves.
    resumed = Collector(stubs.events, after=stored[-2].sequence)
    assert resumed.wait_for(1) == stored[-1:]
    resumed.stop()


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"resource": "r" * 129}, "resource"),
        ({"start_time": {"seconds": 200}, "end_time": {"seconds": 100}}, "end_time"),
        ({"group_by": 99}, "group_by"),
    ],
)
def test_bad_usage_requests_name_the_field(broker, stubs_of, fields, field):
    stubs = stubs_of(broker)
    fields = dict(fields)
    for key in ("start_time", "end_time"):
        if key in fields:
            fields[key] = timestamp_pb2.Timestamp(**fields[key])
    error = expect_error(
        stubs.events.GetUsageStats,
        event_service_pb2.GetUsageStatsRequest(**fields),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in violation_fields(error)
