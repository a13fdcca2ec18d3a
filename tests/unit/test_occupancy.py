"""What monitoring reads of the inventory and the queue costs: a bounded
number of statements, whatever their size."""

from __future__ import annotations

from broker.domain.inventory import Inventory
from broker.domain.occupancy import occupancy
from tests.statement_counter import counting
from tests.unit.builders import calc


def test_a_scrape_reads_the_database_in_three_statements_whatever_its_size(database, kinds):
    """The inventory by kind, the queue by kind, the open sessions: one
    statement each, for 3 resources or 300."""
    inventory = Inventory(kinds)
    counts = []
    for total in (3, 300):
        for index in range(len(inventory.list("", (), 1000, "").items), total):
            inventory.create(calc(f"calc-{index}"))
        with counting(database) as counted:
            found = occupancy(kinds)
        counts.append(counted.count)
        assert found.kinds["Calculator"].total == total
    assert counts == [3, 3]
