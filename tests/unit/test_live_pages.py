"""What a live page is sent: what it follows and may see, the newest state
of each resource once however often it changed before the page was
written to, every event, and a cut-off once it falls too far behind."""

from __future__ import annotations

from broker.web.console import live
from broker.web.console.live import Message, Page


def message(number: int, topic: str, kind: str, *, group="", resource="", key="") -> Message:
    return Message(number, topic, kind, "{}", group, resource, key, b"")


def test_a_page_gets_its_topics_and_groups_only():
    page = Page(frozenset({"resources"}), ("rf",))
    page.offer(message(1, "resources", "resource", group="rf", key="r:a"))
    page.offer(message(2, "resources", "resource", group="bench", key="r:b"))
    page.offer(message(3, "resources", "resource", group="", key="r:c"))
    page.offer(message(4, "events", "event", group="rf"))
    # A resource already gone, whose group is not known: administrators only.
    page.offer(message(5, "resources", "resource-gone", group=None, key="r:d"))
    assert [m.number for m in page.pending.values()] == [1, 3]
    admin = Page(frozenset({"resources"}), None)
    admin.offer(message(5, "resources", "resource-gone", group=None, key="r:d"))
    assert list(admin.pending) == ["r:d"]


def test_a_resource_page_gets_only_its_resource():
    page = Page(frozenset({"resources", "events"}), None, resource="calc")
    page.offer(message(1, "resources", "resource", resource="calc", key="r:calc"))
    page.offer(message(2, "resources", "resource", resource="other", key="r:other"))
    page.offer(message(3, "events", "event", resource="calc"))
    assert [m.number for m in page.pending.values()] == [1, 3]


def test_unsent_states_of_one_resource_collapse_to_the_newest_and_events_stay():
    page = Page(frozenset({"resources", "events"}), None)
    page.offer(message(1, "resources", "resource", key="r:calc"))
    page.offer(message(2, "events", "event"))
    page.offer(message(3, "resources", "resource", key="r:calc"))
    page.offer(message(4, "events", "event"))
    assert [m.number for m in page.pending.values()] == [2, 3, 4]
    assert page.ready.is_set() and not page.cut_off


def test_a_page_too_far_behind_is_cut_off(monkeypatch):
    monkeypatch.setattr(live, "PAGE_BUFFER", 3)
    page = Page(frozenset({"events"}), None)
    for number in range(1, 4):
        page.offer(message(number, "events", "event"))
    assert not page.cut_off
    page.offer(message(4, "events", "event"))
    assert page.cut_off and len(page.pending) == 3
