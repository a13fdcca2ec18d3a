"""Usage statistics, computed from the audit trail: per resource or per
kind over a time range, how many grants, how long they held, how long their
requests waited, how many expired or were revoked, how often the resource
was quarantined."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from broker.domain.events import EventLog, check_filter
from broker.domain.values import EventFilter, EventType, UsageView
from broker.models import event as event_model

_ENDS = (EventType.LEASE_RELEASED, EventType.LEASE_EXPIRED, EventType.LEASE_REVOKED)
READ_BATCH = 1000


@dataclasses.dataclass
class _Tally:
    resource: str
    kind: str
    grants: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    waits: list[float] = dataclasses.field(default_factory=list)
    expiries: int = 0
    revokes: int = 0
    quarantines: int = 0


class Usage:
    """Reads of the events that sum up how resources were used."""

    def __init__(self, events: EventLog, clock: Callable[[], float] = time.time):
        self.events = events
        self.clock = clock

    def stats(
        self,
        resource: str,
        kind: str,
        start_time: float | None,
        end_time: float | None,
        by_kind: bool,
    ) -> list[UsageView]:
        """Grants made in [start_time, end_time), the time they held (until
        their end, or now), their waits, and expiries and revokes in the
        range; sorted by resource (or kind)."""
        wanted = check_filter(
            EventFilter(
                resource=resource,
                kind=kind,
                types=(
                    EventType.LEASE_GRANTED,
                    EventType.LEASE_EXPIRED,
                    EventType.LEASE_REVOKED,
                    EventType.RESOURCE_QUARANTINED,
                ),
                start_time=start_time,
                end_time=end_time,
            ),
            path="",
        )
        now = self.clock()
        tallies: dict[tuple[str, str], _Tally] = {}
        after = 0
        while True:
            views = self.events.read(wanted, after, READ_BATCH)
            for view in views:
                key = ("" if by_kind else view.resource, view.kind)
                tally = tallies.setdefault(key, _Tally(*key))
                if view.type == EventType.LEASE_GRANTED:
                    tally.grants.append((view.lease_id, view.resource, view.time))
                    tally.waits.append(float(view.detail.get("waited", 0.0)))
                elif view.type == EventType.LEASE_EXPIRED:
                    tally.expiries += 1
                elif view.type == EventType.RESOURCE_QUARANTINED:
                    tally.quarantines += 1
                else:
                    tally.revokes += 1
            if len(views) < READ_BATCH:
                break
            after = views[-1].sequence
        ends = event_model.end_times(
            [lease_id for tally in tallies.values() for lease_id, _, _ in tally.grants],
            [t.value for t in _ENDS],
        )
        return [_view(tally, ends, now) for _, tally in sorted(tallies.items())]


def _view(tally: _Tally, ends: dict[tuple[str, str], float], now: float) -> UsageView:
    held = sum(ends.get((lease_id, name), now) - at for lease_id, name, at in tally.grants)
    count = len(tally.grants)
    waits = sorted(tally.waits)
    return UsageView(
        resource=tally.resource,
        kind=tally.kind,
        grants=count,
        total_held=held,
        mean_held=held / count if count else 0.0,
        wait_p50=_percentile(waits, 0.50),
        wait_p95=_percentile(waits, 0.95),
        expiries=tally.expiries,
        revokes=tally.revokes,
        quarantines=tally.quarantines,
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values; 0 for none."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
