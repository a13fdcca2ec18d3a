"""The cost of writing events on the lease cycle.

The broker records an event row in the transaction of each change: on the
acquire+release cycle, one `lease_granted` in the acquire's transaction and
one `lease_released` in the release's (one per resource). Switching that off
in a running broker would need a hook in the product, so instead:

1. a fresh broker (its own database) runs the throughput points' cycle
   (`bench.throughput.run_point`, one client, `--duration` seconds): the
   mean cycle time, and, from its database once it has stopped, the event
   rows per lease (= per cycle) by type;
2. in this process, on that same database, the rows of the broker's last
   cycle are written again `--events-cycles` times (bounded by
   `EVENTS_SECONDS`), each group in a write transaction of its own as the
   cycle does, through `broker.domain.events.record` (the product's insert,
   and on PostgreSQL its NOTIFY): the time of the `record` call itself (the
   insert's cost inside a transaction the cycle pays for anyway), and the
   time of the whole transaction minus that of an empty write transaction
   (also what the event adds to the commit: an upper bound).

Per backend: µs per event both ways, and events per cycle times µs per event as
a share of the mean cycle time (the ratio printed). On SQLite, and on
PostgreSQL in a scratch schema (`--databases`, `--postgres`).

    .venv/bin/python -m bench --only events
    .venv/bin/python -m bench --only events --databases sqlite --events-cycles 500
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence

from bench import throughput
from bench.broker_process import Broker

# Seconds the in-process writes may take at most, per backend.
EVENTS_SECONDS = 15.0


@dataclasses.dataclass
class EventsResult:
    backend: str
    cycle: throughput.PointResult
    per_cycle: dict[str, float]  # event rows per lease, by type
    written: int  # events written in process
    record_seconds: float  # summed over the `record` calls
    transaction_seconds: float  # summed over the transactions, less empty ones
    errors: int = 0
    first_error: str = ""

    @property
    def events_per_cycle(self) -> float:
        return sum(self.per_cycle.values())

    @property
    def cycle_us(self) -> float:
        return 1e6 / self.cycle.rate if self.cycle.rate else float("nan")

    @property
    def record_us(self) -> float:
        return self.record_seconds / self.written * 1e6

    @property
    def transaction_us(self) -> float:
        return self.transaction_seconds / self.written * 1e6

    def share(self, per_event_us: float) -> float:
        return self.events_per_cycle * per_event_us / self.cycle_us

    def row(self) -> str:
        """The table's header, then this result."""
        kinds = ", ".join(f"{kind} {count:.2f}" for kind, count in sorted(self.per_cycle.items()))
        return (
            TABLE_HEADER
            + "\n"
            + (
                f"{self.backend:<10} {self.cycle.rate:>8.0f} {self.cycle_us:>9.0f} "
                f"{self.events_per_cycle:>7.2f} {self.record_us:>9.1f} {self.transaction_us:>9.1f} "
                f"{self.share(self.record_us):>7.1%} {self.share(self.transaction_us):>7.1%}"
                f"\n           events per cycle: {kinds}; {self.written} written in process; "
                f"ratio (events' time / cycle time): {self.share(self.record_us):.4f} "
                f"to {self.share(self.transaction_us):.4f}"
            )
        )

    def points(self) -> list[dict]:
        return [
            {"name": name + self.cycle.variant, "clients": 1, "value": value, "unit": unit}
            for name, value, unit in (
                ("events_per_cycle", round(self.events_per_cycle, 3), "events"),
                ("events_cycle_time", round(self.cycle_us, 1), "us"),
                ("event_record_time", round(self.record_us, 2), "us"),
                ("event_transaction_time", round(self.transaction_us, 2), "us"),
                ("event_share_of_cycle", round(self.share(self.record_us), 4), "ratio"),
            )
        ]


TABLE_HEADER = "backend    cycles/s  cycle µs  ev/cyc rec µs/ev  tx µs/ev rec/cyc  tx/cyc"


def header(duration: float, warmup: float, cycles: int) -> str:
    return (
        f"# events: a fresh broker's acquire(by name)+release at 1 client, {duration:g} s after "
        f"{warmup:g} s warm-up; then its last cycle's event rows written {cycles} times in "
        f"process (at most {EVENTS_SECONDS:g} s), a write transaction per group"
    )


def cycle_rows(database) -> tuple[dict[str, float], list[list[dict]]]:
    """Event rows per lease by type, and the last released lease's rows
    grouped by the transaction that wrote them (consecutive rows of one
    type), as field dicts without `id`."""
    import peewee

    from broker.domain.values import EventType
    from broker.models.event import Event
    from broker.models.lease import Lease

    with database.connection_context():
        leases = Lease.select().count()
        counts = (
            Event.select(Event.type, peewee.fn.COUNT(Event.id).alias("count"))
            .where(Event.lease_id != "")
            .group_by(Event.type)
            .tuples()
        )
        per_cycle = {kind: count / leases for kind, count in counts} if leases else {}
        last = (
            Event.select()
            .where(Event.type == EventType.LEASE_RELEASED.value)
            .order_by(Event.id.desc())
            .first()
        )
        if last is None:
            raise RuntimeError("the broker recorded no released lease")
        rows = list(
            Event.select().where(Event.lease_id == last.lease_id).order_by(Event.id).dicts()
        )
    for row in rows:
        row.pop("id")
    groups = [list(group) for _, group in itertools.groupby(rows, key=lambda row: row["type"])]
    return per_cycle, groups


def write_again(groups: Sequence[Sequence[dict]], cycles: int) -> tuple[int, float, float]:
    """Writes `groups` `cycles` times (or for `EVENTS_SECONDS`), a write
    transaction each; returns the events written, the seconds spent in
    `record`, and in those transactions less as many empty ones."""
    from broker.domain import events
    from broker.models.transactions import write_transaction

    clock = time.perf_counter
    written, in_record, in_transactions, empty = 0, 0.0, 0.0, 0.0
    deadline = clock() + EVENTS_SECONDS
    for _ in range(cycles):
        if clock() >= deadline:
            break
        for group in groups:
            now = time.time()
            rows = [{**row, "time": now} for row in group]
            began = clock()
            with write_transaction():
                entered = clock()
                events.record(*rows)
                recorded = clock()
            ended = clock()
            with write_transaction():
                pass
            in_record += recorded - entered
            in_transactions += ended - began
            empty += clock() - ended
            written += len(rows)
    return written, in_record, in_transactions - empty


def run_cycles(
    broker: Broker, names: Sequence[str], *, duration: float, warmup: float, variant: str = ""
) -> throughput.PointResult:
    """Step 1's cycles on `broker` (stop it before `measure_writes`)."""
    return throughput.run_point(
        broker, names, 1, duration=duration, warmup=warmup, max_processes=1, variant=variant
    )


def measure_writes(
    database_url: str, backend: str, cycle: throughput.PointResult, cycles: int
) -> EventsResult:
    """Step 2 on the stopped broker's database at `database_url`."""
    from broker.models.database import bind, close_database, open_database

    database = open_database(database_url)
    try:
        bind(database)
        per_cycle, groups = cycle_rows(database)
        with database.connection_context():
            written, in_record, in_transactions = write_again(groups, cycles)
    finally:
        close_database(database)
    return EventsResult(
        backend,
        cycle,
        per_cycle,
        written,
        in_record,
        in_transactions,
        cycle.errors,
        cycle.first_error,
    )
