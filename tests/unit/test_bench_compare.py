"""The bench's ratios to its references, the ordering of grants without a
fencing number, and the plots: pure functions over points."""

import array
import json

import pytest

from bench import compare, handoff


def point(name, clients, value, unit="cycles/s", **extra):
    return {"name": name, "clients": clients, "value": value, "unit": unit, **extra}


def test_broker_points_get_a_ratio_to_each_reference_at_the_same_clients():
    points = [
        point("acquire_release_cycles_ceiling", 1, 800.0),
        point("acquire_release_cycles_etcd", 1, 400.0),
        point("acquire_release_cycles_ceiling", 4, 1600.0),
        point("acquire_release_cycles", 1, 200.0),
        point("acquire_release_cycles", 4, 400.0),
        point("acquire_release_cycles_postgresql_1broker", 16, 100.0),
        point("handoff_latency_p50_etcd", 16, 2.0, "ms"),
        point("handoff_latency_p50", 16, 3.0, "ms"),
        point("handoff_fairness_jain", 16, 1.0, "index"),
    ]
    compare.add_ratios(points)
    by_name = {(p["name"], p["clients"]): p for p in points}
    assert by_name["acquire_release_cycles", 1]["ratio_to"] == {"ceiling": 0.25, "etcd": 0.5}
    assert by_name["acquire_release_cycles", 4]["ratio_to"] == {"ceiling": 0.25}
    assert by_name["handoff_latency_p50", 16]["ratio_to"] == {"etcd": 1.5}
    # No reference at 16 clients, no ratio of a reference to itself, none for fairness.
    assert "ratio_to" not in by_name["acquire_release_cycles_postgresql_1broker", 16]
    assert "ratio_to" not in by_name["acquire_release_cycles_ceiling", 1]
    assert "ratio_to" not in by_name["handoff_fairness_jain", 16]
    json.dumps(points)  # still plain JSON


def test_the_table_shows_the_ratios_and_dashes_where_a_reference_is_missing():
    points = [
        point("acquire_release_cycles_ceiling", 1, 800.0),
        point("acquire_release_cycles", 1, 200.0),
        point("handoff_latency_p50", 16, 3.0, "ms"),
        point("handoff_latency_p99", 16, 9.0, "ms"),
    ]
    compare.add_ratios(points)
    lines = compare.table(points).splitlines()
    row = next(line for line in lines if line.startswith("acquire_release_cycles "))
    assert row.split() == ["acquire_release_cycles", "1", "200", "800", "-", "0.250", "-"]
    handoff_row = next(line for line in lines if line.startswith("handoff "))
    assert handoff_row.split() == ["handoff", "16", "3.00", "9.00", "-", "-", "-", "-"]


def test_grants_without_a_fencing_number_are_numbered_by_arrival():
    def records(*triples):
        return array.array("d", [x for triple in triples for x in triple]).tobytes()

    clean = {"errors": 0, "first_error": ""}
    parts = [
        {"index": 0, "records": records((0, 1.0, 1.1), (0, 3.0, 3.1)), **clean},
        {"index": 1, "records": records((0, 2.0, 2.1)), **clean},
    ]
    handoff.number_by_arrival(parts)
    handoffs, grants, errors, _ = handoff.analyse(parts, 2, 0.0, 10.0)
    assert grants == [2, 1]
    assert errors == 0
    assert handoffs == pytest.approx([0.9, 0.9])


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import plot

    points = [
        point("acquire_release_cycles", 1, 200.0),
        point("acquire_release_cycles", 4, 400.0),
        {**point("scale_waiters_release", 1, 1.0, "ms"), "waiters": 0},
        {**point("scale_waiters_release", 1, 2.0, "ms"), "waiters": 1000},
    ]
    written = plot.plot(points, str(tmp_path / "plots"))
    assert [p.rsplit("/", 1)[1] for p in written] == ["throughput.png", "scale.png"]
    for path in written:
        with open(path, "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
