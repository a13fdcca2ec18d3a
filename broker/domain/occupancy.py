"""What the inventory and the queue hold now, per kind, as monitoring reads
it: one statement per table, whatever their size."""

from __future__ import annotations

import dataclasses

from broker.domain.kinds import KindRegistry
from broker.domain.values import SessionState
from broker.models import queue as queue_model
from broker.models import resource as resource_model
from broker.models import session as session_model


@dataclasses.dataclass(frozen=True)
class KindOccupancy:
    """One kind's resources: in all, held, out of service; and how many
    waiting requests could use it."""

    total: int = 0
    held: int = 0
    out_of_service: int = 0
    waiting: int = 0


@dataclasses.dataclass(frozen=True)
class Occupancy:
    kinds: dict[str, KindOccupancy]
    open_sessions: int


def occupancy(kinds: KindRegistry) -> Occupancy:
    """Every served kind's occupancy (a kind with no resource reads as 0),
    and the open sessions. Kinds no longer served are left out, so that the
    set of kinds reported is the configuration's."""
    counts = resource_model.counts_by_kind()
    waiting = queue_model.waiting_by_kind()
    return Occupancy(
        {
            kind.name: KindOccupancy(*counts.get(kind.name, (0, 0, 0)), waiting.get(kind.name, 0))
            for kind in kinds
        },
        session_model.count_in_state(SessionState.OPEN),
    )
