"""The broker's Prometheus metrics (prometheus-client), in a registry of
each server's own.

Label values are bounded by the configuration, never by callers: kinds are
the configured kinds (anything else counts as `other`), methods the
contract's RPCs, codes gRPC's status codes. No lease id, holder or resource
name is ever a label.

Counters of what happened (grants, releases, expiries, revokes,
quarantines) count the events this process committed, as they commit. What
is held or waiting now is read from the database at each scrape
(`broker.domain.occupancy`), through the domain runner, off the event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from broker.api.runner import GroupStats
from broker.domain import races
from broker.domain.occupancy import Occupancy
from broker.domain.values import EventType

OTHER = "other"

# The events counted, by the metric that counts them.
_COUNTED = {
    EventType.LEASE_GRANTED.value: ("broker_grants", "Resources granted"),
    EventType.LEASE_RELEASED.value: ("broker_releases", "Resources released by their holder"),
    EventType.LEASE_EXPIRED.value: ("broker_expiries", "Resources freed by a lease's expiry"),
    EventType.LEASE_REVOKED.value: ("broker_revokes", "Resources freed by a revoke"),
    EventType.RESOURCE_QUARANTINED.value: (
        "broker_quarantines",
        "Resources taken out of service after failed setups",
    ),
}


class Metrics:
    """The metrics of one broker, and the text of a scrape."""

    def __init__(self, kinds: Iterable[str], methods: Iterable[str]):
        # No `_created` series beside each counter and histogram: they
        # double the series for a time nobody graphs.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self._kinds = frozenset(kinds)
        self._methods = frozenset(methods)
        self._counters = {
            event_type: Counter(name, text + ", by kind.", ["kind"], registry=self.registry)
            for event_type, (name, text) in _COUNTED.items()
        }
        self.rpc_seconds = Histogram(
            "broker_rpc_duration_seconds",
            "Time to answer an RPC, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "broker_grant_wait_seconds",
            "Time a granted resource's request waited in the queue (0: granted at once), by kind.",
            ["kind"],
            buckets=(0.0, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=self.registry,
        )
        self._resources = Gauge(
            "broker_resources",
            "Resources, by kind and state (free, held, out_of_service).",
            ["kind", "state"],
            registry=self.registry,
        )
        self._utilisation = Gauge(
            "broker_utilisation_ratio",
            "Held resources over all resources, by kind (0 for a kind without any).",
            ["kind"],
            registry=self.registry,
        )
        self._queue_depth = Gauge(
            "broker_queue_depth",
            "Waiting requests that could use a kind, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self._sessions = Gauge("broker_open_sessions", "Open sessions.", registry=self.registry)
        self._watchers = Gauge(
            "broker_event_watchers", "Event watches this broker serves.", registry=self.registry
        )
        self._live_pages = Gauge(
            "broker_console_live_pages",
            "Web console pages following this broker live.",
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "broker_database_call_seconds",
            "Time a domain call took on the database, from its submission to its "
            "answer (waiting for a worker or the writer included), by access (read, write).",
            ["access"],
            registry=self.registry,
        )
        self._groups: Callable[[], GroupStats | None] = lambda: None
        self.registry.register(_Retries(lambda: self._groups()))
        for counter in self._counters.values():
            for kind in self._kinds:
                counter.labels(kind)

    def watch_groups(self, stats: Callable[[], GroupStats | None]) -> None:
        """Reports the writer's group commits (SQLite) from `stats`."""
        self._groups = stats

    def observe_call(self, write: bool, seconds: float) -> None:
        self.call_seconds.labels("write" if write else "read").observe(seconds)

    def kind(self, name: str) -> str:
        return name if name in self._kinds else OTHER

    def method(self, name: str) -> str:
        return name if name in self._methods else OTHER

    def count_events(self, recorded: list[tuple[str, str, str]]) -> None:
        """Counts the events a commit recorded (`event_model.on_commit_types`):
        a grant also gives the seconds its request waited in the queue."""
        for event_type, kind, detail in recorded:
            counter = self._counters.get(event_type)
            if counter is None:
                continue
            label = self.kind(kind)
            counter.labels(label).inc()
            if event_type == EventType.LEASE_GRANTED.value:
                waited = json.loads(detail).get("waited", 0.0) if detail else 0.0
                self.wait_seconds.labels(label).observe(waited)

    def scrape(self, occupancy: Occupancy, watchers: int, live_pages: int = 0) -> bytes:
        """The exposition text, with what the database holds now."""
        for kind, counts in occupancy.kinds.items():
            label = self.kind(kind)
            free = counts.total - counts.held - counts.out_of_service
            self._resources.labels(label, "free").set(max(free, 0))
            self._resources.labels(label, "held").set(counts.held)
            self._resources.labels(label, "out_of_service").set(counts.out_of_service)
            self._utilisation.labels(label).set(counts.held / counts.total if counts.total else 0)
            self._queue_depth.labels(label).set(counts.waiting)
        self._sessions.set(occupancy.open_sessions)
        self._watchers.set(watchers)
        self._live_pages.set(live_pages)
        return generate_latest(self.registry)


class _Retries(Collector):
    """Counters kept by the domain and the writer, read at each scrape:
    retried transactions by cause, and group commits and their writes."""

    def __init__(self, groups: Callable[[], GroupStats | None]):
        self._groups = groups

    def describe(self):
        return []

    def collect(self):
        retried = CounterMetricFamily(
            "broker_transaction_retries",
            "Write transactions run again after losing a race, by cause.",
            labels=["cause"],
        )
        counts = dict(races.retries)
        for cause in ("conflict", "escalation", "serialization"):
            retried.add_metric([cause], counts.get(cause, 0))
        yield retried
        stats = self._groups()
        if stats is not None:
            yield CounterMetricFamily(
                "broker_group_commits",
                "Transactions the SQLite writer committed, each holding a group of writes.",
                value=stats.groups,
            )
            yield CounterMetricFamily(
                "broker_group_commit_writes",
                "Writes committed in groups (over broker_group_commits_total: the mean group).",
                value=stats.writes,
            )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times each unary RPC of the contract's services, by method and code
    (streams, which last as long as a session or a watch, are not timed)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.perf_counter):
        self._metrics = metrics
        self._clock = clock

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self._metrics.method(method) == OTHER:
            return handler
        histogram = self._metrics.rpc_seconds
        clock = self._clock

        def observe(started: float, context, failed: bool) -> None:
            code = context.code()
            if isinstance(code, int):
                code = _STATUS_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            histogram.labels(method, code.name).observe(clock() - started)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                started = clock()
                try:
                    response = await inner(request, context)
                except BaseException:
                    observe(started, context, True)
                    raise
                observe(started, context, False)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
