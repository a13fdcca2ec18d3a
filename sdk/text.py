"""How the SDK tells people what blocks a request: one wording for the SDK's
log lines and the `broker` command's output alike."""

from __future__ import annotations

import datetime

from google.protobuf import timestamp_pb2

from broker.command_line import NONE
from broker.v1 import lease_pb2


def local_time(timestamp: timestamp_pb2.Timestamp) -> str:
    """The time in the local zone, ISO 8601 to the second; `-` when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return NONE
    moment = timestamp.ToDatetime(tzinfo=datetime.UTC).astimezone()
    return moment.isoformat(timespec="seconds")


def requirement_text(blocked: lease_pb2.AcquireBlocked) -> str:
    """`requirement 0 (calc), kind Calculator`."""
    label = f" ({blocked.label})" if blocked.label else ""
    return f"requirement {blocked.requirement_index}{label}, kind {blocked.kind}"


def holder_text(holder: lease_pb2.Holder) -> str:
    """`calc held by alice@bench-3 (lease ..., expires ...)`."""
    return (
        f"{holder.resource} held by {holder.holder} (lease {holder.lease_id}, "
        f"expires {local_time(holder.expire_time)})"
    )


def queue_status_text(status: lease_pb2.QueueStatus) -> str:
    """One line: the request's place in the queue and what blocks it."""
    text = f"waiting at position {status.position} (waiter {status.waiter_id}"
    text += f", until {local_time(status.deadline)})"
    if status.quota:
        return f"{text}: {status.quota}"
    if not status.HasField("blocked"):
        return text
    blocked = status.blocked
    why = "; ".join(obstacle.text for obstacle in blocked.obstacles) or "; ".join(
        holder_text(holder) for holder in blocked.holders
    )
    return f"{text}: {requirement_text(blocked)}: {why or 'reserved for requests ahead'}"
