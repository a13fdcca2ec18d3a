"""`broker events` prints one line per event, its details readable."""

from __future__ import annotations

import datetime

from google.protobuf import timestamp_pb2

from broker.v1 import event_pb2
from sdk.cli.output import event_line

UNTIL = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)


def test_an_events_details_stay_on_its_line_lists_joined_and_times_in_iso():
    event = event_pb2.Event(
        sequence=7,
        time=timestamp_pb2.Timestamp(seconds=int(UNTIL.timestamp())),
        type=event_pb2.EVENT_TYPE_RESOURCE_RESERVED,
        resource="calc",
        kind="Calculator",
        actor="root",
    )
    event.detail.update(
        {"paths": ["group", "comment"], "reserved_until": UNTIL.timestamp(), "failures": 3}
    )

    line = event_line(event)

    assert "\n" not in line
    assert "paths=group,comment" in line
    assert "failures=3" in line
    until = UNTIL.astimezone().isoformat(timespec="seconds")
    assert f"reserved_until={until}" in line
    assert line.startswith("7  ") and "resource_reserved  calc  Calculator  actor=root" in line
