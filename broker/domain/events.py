"""Recording changes as events, in the transaction that makes them."""

from __future__ import annotations

import json
from typing import Any

from broker.domain.values import EventType
from broker.models import event as event_model


def event(
    type: EventType,
    time: float,
    *,
    resource: str = "",
    lease_id: str = "",
    fencing_token: int = 0,
    actor: str = "",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One event row, ready for `record`."""
    return {
        "type": type.value,
        "time": time,
        "resource": resource,
        "lease_id": lease_id,
        "fencing_token": fencing_token,
        "actor": actor,
        "detail": json.dumps(detail, separators=(",", ":")) if detail else "",
    }


def record(*rows: dict[str, Any]) -> None:
    """Stores events; call inside the transaction of the change."""
    event_model.record(rows)
