"""The broker's figures as ratios to the references measured in the same run.

Machines differ, and so do runs on one machine, so an absolute figure says
little; its ratio to a reference measured minutes before on the same machine
says how far the broker is from it. The references are points whose name
ends in one of `REFERENCES`' suffixes (`bench.ceiling`, `bench.etcd`); every
throughput and hand-off point of the broker gets a `ratio_to` object with one
ratio per reference measured at the same number of clients
(broker / reference: above 1 is more cycles/s, or a longer latency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REFERENCES = {"ceiling": "_ceiling", "etcd": "_etcd"}
# The broker's points that compare with a reference, by their names' stem.
COMPARED = (
    "acquire_release_cycles",
    "acquire_release_p50",
    "acquire_release_p99",
    "handoff_latency_p50",
    "handoff_latency_p99",
)


def stem_of(name: str) -> str | None:
    return next((stem for stem in COMPARED if name.startswith(stem)), None)


def is_reference(name: str) -> bool:
    return any(name.endswith(suffix) for suffix in REFERENCES.values())


def reference_value(points: Sequence[dict], stem: str, reference: str, clients: int):
    name = stem + REFERENCES[reference]
    return next((p["value"] for p in points if p["name"] == name and p["clients"] == clients), None)


def ratio(value: float, reference: float | None) -> float | None:
    if reference is None or not reference or math.isnan(reference) or math.isnan(value):
        return None
    return round(value / reference, 3)


def add_ratios(points: list[dict]) -> None:
    """Sets `ratio_to` on every compared point of the broker that has a
    reference at its number of clients."""
    for point in points:
        stem = stem_of(point["name"])
        if stem is None or is_reference(point["name"]):
            continue
        ratios = {
            reference: found
            for reference in REFERENCES
            if (
                found := ratio(
                    point["value"], reference_value(points, stem, reference, point["clients"])
                )
            )
            is not None
        }
        if ratios:
            point["ratio_to"] = ratios


def text(value: float | None, width: int, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def table(points: Sequence[dict]) -> str:
    """The final table: for each throughput point of the broker (SQLite and
    PostgreSQL layouts; auth and other variants are in the JSON), its
    cycles/s beside the ceiling's and etcd's; then the hand-off's p50/p99
    beside etcd's."""
    lines = [
        "# ratios to the references of this run (- : not measured; the ceiling is on SQLite)",
        f"{'point':<42} clients  broker/s ceiling/s   etcd/s broker/ceiling broker/etcd",
    ]
    for point in points:
        name = point["name"]
        if not name.startswith("acquire_release_cycles") or is_reference(name):
            continue
        if "_auth_" in name or point.get("unit") != "cycles/s":
            continue
        clients = point["clients"]
        ceiling = reference_value(points, "acquire_release_cycles", "ceiling", clients)
        etcd = reference_value(points, "acquire_release_cycles", "etcd", clients)
        ratios = point.get("ratio_to", {})
        lines.append(
            f"{name:<42} {clients:>7} {text(point['value'], 9, 0)} {text(ceiling, 9, 0)} "
            f"{text(etcd, 8, 0)} {text(ratios.get('ceiling'), 14, 3)} "
            f"{text(ratios.get('etcd'), 11, 3)}"
        )
    lines.append(
        f"{'hand-off':<42} clients    p50 ms    p99 ms etcd p50 etcd p99   p50/etcd   p99/etcd"
    )
    for point in points:
        name = point["name"]
        if not name.startswith("handoff_latency_p50") or is_reference(name):
            continue
        variant = name[len("handoff_latency_p50") :]
        clients = point["clients"]
        p99 = next(
            (
                p
                for p in points
                if p["name"] == "handoff_latency_p99" + variant and p["clients"] == clients
            ),
            {},
        )
        lines.append(
            f"{'handoff' + variant:<42} {clients:>7} {text(point['value'], 9, 2)} "
            f"{text(p99.get('value'), 9, 2)} "
            f"{text(reference_value(points, 'handoff_latency_p50', 'etcd', clients), 8, 2)} "
            f"{text(reference_value(points, 'handoff_latency_p99', 'etcd', clients), 8, 2)} "
            f"{text(point.get('ratio_to', {}).get('etcd'), 10, 3)} "
            f"{text(p99.get('ratio_to', {}).get('etcd'), 10, 3)}"
        )
    return "\n".join(lines)
