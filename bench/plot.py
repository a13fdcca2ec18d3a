"""`--plot DIR`: PNG plots of a run's points (matplotlib, a dev dependency).

- throughput.png: cycles/s against clients, one line per layout (the
  broker's, the ceiling's, etcd's);
- scale.png: cost against queue length (waiters) and against inventory size
  (resources), in ms.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence


def plot(points: Sequence[dict], directory: str) -> list[str]:
    """Writes the plots into `directory` (made if missing); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    os.makedirs(directory, exist_ok=True)
    written = []

    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for point in points:
        if point.get("unit") == "cycles/s" and point["name"].startswith("acquire_release_cycles"):
            label = point["name"][len("acquire_release_cycles") :].lstrip("_") or "broker_sqlite"
            lines[label].append((point["clients"], point["value"]))
    lines = {label: values for label, values in lines.items() if len(values) > 1}
    if lines:
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        for label, values in sorted(lines.items()):
            values.sort()
            axes.plot([c for c, _ in values], [v for _, v in values], marker="o", label=label)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("clients")
        axes.set_ylabel("acquire+release cycles/s")
        axes.set_title("Throughput against clients")
        axes.legend(fontsize="small")
        axes.grid(True, alpha=0.3)
        written.append(save(figure, pyplot, os.path.join(directory, "throughput.png")))

    scale = {
        what: sorted((p[what], p["value"]) for p in points if p["name"] == name)
        for what, name in (
            ("waiters", "scale_waiters_release"),
            ("resources", "scale_resources_cycle"),
        )
    }
    if any(scale.values()):
        figure, panes = pyplot.subplots(1, 2, figsize=(10, 4.5))
        titles = {
            "waiters": ("waiting calls (on other resources)", "release ms"),
            "resources": ("resources in the inventory", "acquire+release ms"),
        }
        for axes, (what, values) in zip(panes, scale.items(), strict=True):
            xlabel, ylabel = titles[what]
            if values:
                # 0 waiters has no place on a log axis: symlog keeps it.
                axes.plot([x for x, _ in values], [v for _, v in values], marker="o")
                axes.set_xscale("symlog", linthresh=10)
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
        figure.suptitle("Cost against queue length and inventory size")
        written.append(save(figure, pyplot, os.path.join(directory, "scale.png")))
    return written


def save(figure, pyplot, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
