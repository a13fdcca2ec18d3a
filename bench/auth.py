"""Authentication's cost: the throughput points' acquire+release cycle with
authentication off and on, in one run.

Two brokers on SQLite, one after the other, each on a fresh database: one
with `auth.enabled: false`, one with `auth.enabled: true` and an admin's
token made offline by `broker tokens create --config` against its database
(as an operator makes the first token). The clients of the second send that
token with every call (`authorization: Bearer`, through the SDK's
interceptor). Each point is `bench.throughput.run_point`, the same cycle
loop and window as the throughput points; the broker verifies a token
against the database and then trusts it for `auth.cache_seconds` (5 s), so
what is measured is mostly the cached check plus the principal's role test,
with a database look-up every few seconds per token.

    .venv/bin/python -m bench --only auth
    .venv/bin/python -m bench --only auth --auth-clients 1,4 --duration 3
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from bench import throughput


@dataclasses.dataclass
class AuthResult:
    """The points with authentication off and on, matched by client count."""

    off: list[throughput.PointResult]
    on: list[throughput.PointResult]

    @property
    def errors(self) -> int:
        return sum(point.errors for point in (*self.off, *self.on))

    @property
    def first_error(self) -> str:
        return next((p.first_error for p in (*self.off, *self.on) if p.first_error), "")

    def row(self) -> str:
        lines = [f"auth     {throughput.TABLE_HEADER}"]
        lines += [
            f"{'auth ' + label:<8} {point.row()}"
            for label, points in (("off", self.off), ("on", self.on))
            for point in points
        ]
        lines.append("clients  on/off cycles/s  on/off p50  on/off p99")
        for off, on in zip(self.off, self.on, strict=True):
            lines.append(
                f"{off.clients:>7} {on.rate / off.rate:>16.3f} "
                f"{on.percentile_ms(0.5) / off.percentile_ms(0.5):>11.3f} "
                f"{on.percentile_ms(0.99) / off.percentile_ms(0.99):>11.3f}"
            )
        return "\n".join(lines)

    def points(self) -> list[dict]:
        every = [row for point in (*self.off, *self.on) for row in point.points()]
        every.extend(
            {
                "name": "auth_cycles_ratio_on_off",
                "clients": off.clients,
                "value": round(on.rate / off.rate, 3),
                "unit": "ratio",
            }
            for off, on in zip(self.off, self.on, strict=True)
        )
        return every


def header(clients: Sequence[int], duration: float, warmup: float) -> str:
    return (
        f"# auth on SQLite: acquire(by name)+release at {','.join(map(str, clients))} clients, "
        f"{duration:g} s per point after {warmup:g} s warm-up, one broker with "
        f"authentication off, then one with it on (a token per call)"
    )


def run_auth(
    brokers: Callable,
    workdir: str,
    names: Sequence[str],
    clients: Sequence[int],
    *,
    duration: float,
    warmup: float,
    max_processes: int,
) -> AuthResult:
    """Runs the points on a broker with authentication off, then on one with
    it on; `brokers(workdir, names, auth=...)` starts and stops each."""
    measured: dict[bool, list[throughput.PointResult]] = {}
    for auth in (False, True):
        with brokers(os.path.join(workdir, f"auth-{'on' if auth else 'off'}"), names, auth) as b:
            measured[auth] = [
                throughput.run_point(
                    b,
                    names,
                    count,
                    duration=duration,
                    warmup=warmup,
                    max_processes=max_processes,
                    variant=f"_auth_{'on' if auth else 'off'}",
                )
                for count in clients
            ]
    return AuthResult(measured[False], measured[True])
