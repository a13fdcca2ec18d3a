"""Saying why a request is not granted: never (FAILED_PRECONDITION, with a
violation per resource that will not do), or not now (RESOURCE_EXHAUSTED,
naming who holds what it could use and why each resource is kept from it).
Reads only; runs inside the caller's transaction."""

from __future__ import annotations

import dataclasses
import time

from broker.domain.errors import (
    BrokerError,
    FailedPreconditionError,
    PreconditionViolation,
    ResourceBusyError,
    clip,
)
from broker.domain.planning import Plan, plan
from broker.domain.requests import Need
from broker.domain.values import Blocked, HolderView, Obstacle, ObstacleCause
from broker.models import lease as lease_model
from broker.models import resource as resource_model
from broker.models.resource import Resource

MAX_HOLDERS_REPORTED = 16


def refusal(
    needs: list[Need],
    holder: str,
    busy: Plan,
    now: float,
    groups: tuple[str, ...] | None = None,
) -> BrokerError:
    """Why a request cannot be granted now: never (FAILED_PRECONDITION)
    or not yet (RESOURCE_EXHAUSTED), saying for each resource it could
    use why it does not get it (out of service, reserved, held)."""
    usable = plan(needs, holder, now, free_only=False, groups=groups)
    slot = usable.matching.first_unmatched
    if slot is not None:
        position = usable.slot_needs[slot]
        need = needs[position]
        path = f"requirements[{need.index}]"
        found = obstacles(need, holder, now, groups, limit=MAX_HOLDERS_REPORTED)
        lasting = [o for o in found if o.cause in _LASTING]
        matched = usable.candidate_counts[position]
        why = "; ".join(o.text for o in lasting)
        if matched or not why:
            why = _too_few(need.count, need.kind.name, matched) + (f" ({why})" if why else "")
        return FailedPreconditionError(
            PreconditionViolation(
                "UNSATISFIABLE",
                path,
                f"{path} ({need.label or need.kind.name}) can never be satisfied: {why}",
            ),
            *(
                PreconditionViolation(
                    o.cause.name,
                    f"resources/{o.resource}" if o.resource else path,
                    o.text,
                )
                for o in lasting
            ),
        )
    why_not = blocked(needs, holder, busy.blocked_index, now, groups)
    return ResourceBusyError(
        why_not.requirement_index,
        why_not.label,
        why_not.kind,
        list(why_not.holders),
        list(why_not.obstacles),
    )


def _too_few(count: int, kind: str, matched: int) -> str:
    """Why `count` resources of `kind` can never be had when `matched` match."""
    if matched < count:
        return (
            f"it needs {count} usable {kind} resource(s) matching its constraints, "
            f"and only {matched} match"
        )
    return (
        f"it needs {count} usable {kind} resource(s) matching its constraints and "
        f"{matched} match, but the request's other requirements need some of the same "
        "ones: together they ask for more distinct resources than match them all"
    )


def blocked(
    needs: list[Need],
    holder: str,
    index: int,
    now: float,
    groups: tuple[str, ...] | None = None,
) -> Blocked:
    """Who holds the resources that requirement `index` could use, and
    why each of them is not granted now."""
    need = next(n for n in needs if n.index == index)
    total = sum(n.count for n in needs)
    limit = max(total, MAX_HOLDERS_REPORTED)
    rows = _visible(need, holder, now, groups, limit)
    held = [row for row in rows if row.lease_id and row.is_usable][:MAX_HOLDERS_REPORTED]
    leases = lease_model.leases_by_id(sorted({row.lease_id for row in held if row.lease_id}))
    holders = tuple(
        HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
        for row in held
        if row.lease_id in leases
    )
    obstacles = _obstacles_of(need, rows, holder, now, holders)
    return Blocked(need.index, need.label, need.kind.name, holders, obstacles)


def obstacles(
    need: Need,
    holder: str,
    now: float,
    groups: tuple[str, ...] | None,
    limit: int,
) -> tuple[Obstacle, ...]:
    """Why each resource `need` could use (visible to `groups`) is not
    granted to `holder` now; `NO_SUCH_RESOURCE` if there is none."""
    rows = _visible(need, holder, now, groups, limit)
    held = [row for row in rows if row.lease_id]
    leases = lease_model.leases_by_id(sorted({row.lease_id for row in held if row.lease_id}))
    holders = tuple(
        HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
        for row in held
        if row.lease_id in leases
    )
    return _obstacles_of(need, rows, holder, now, holders)


def _visible(need: Need, holder: str, now: float, groups, limit: int) -> list[Resource]:
    return resource_model.select_candidates(
        need.kind.model,
        need.kind.name,
        need.filters,
        holder=holder,
        mode=resource_model.EVERY,
        limit=limit,
        now=now,
        groups=groups,
    )


def _obstacles_of(
    need: Need,
    rows: list[Resource],
    holder: str,
    now: float,
    holders: tuple[HolderView, ...],
) -> tuple[Obstacle, ...]:
    if not rows:
        return (Obstacle("", ObstacleCause.NO_SUCH_RESOURCE, _no_such_text(need)),)
    held = {h.resource: h for h in holders}
    found = []
    relatives = _relatives(need, rows) if need.kind.tree else {}
    if relatives:
        held.update(_holders([r for group in relatives.values() for r in group]))
    for row in rows:
        obstacle = _obstacle(row, holder, now, held.get(row.name))
        if obstacle is None:
            obstacle = next(
                (
                    _through(row, obstacle, need)
                    for relative in relatives.get(row.id, ())
                    if (obstacle := _obstacle(relative, holder, now, held.get(relative.name)))
                    is not None
                ),
                None,
            )
        if obstacle is not None:
            found.append(obstacle)
    return tuple(found[:MAX_HOLDERS_REPORTED])


def _relatives(need: Need, rows: list[Resource]) -> dict[int, list[Resource]]:
    """For each resource in a tree, the others whose state it shares: a
    parent's sub-resources, a sub-resource's parent."""
    if need.kind.tree == resource_model.PARENT:
        return resource_model.children_rows([row.id for row in rows])
    parents = resource_model.parent_rows([row.parent_id for row in rows if row.parent_id])
    return {row.id: [parents[row.parent_id]] for row in rows if row.parent_id in parents}


def _holders(rows: list[Resource]) -> dict[str, HolderView]:
    """Who holds the held ones of some resources, by resource name."""
    held = [row for row in rows if row.lease_id]
    leases = lease_model.leases_by_id(sorted({row.lease_id for row in held if row.lease_id}))
    return {
        row.name: HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
        for row in held
        if row.lease_id in leases
    }


def _through(row: Resource, obstacle: Obstacle, need: Need) -> Obstacle:
    """What keeps a relative keeps `row`, in words naming both."""
    if need.kind.tree == resource_model.PARENT:
        text = f"{row.name}: its sub-resource {obstacle.text}"
    else:
        text = f"{row.name}: its parent {obstacle.text}"
    return dataclasses.replace(obstacle, resource=row.name, text=text)


# Causes that last until an administrator changes the inventory: a request
# that only such resources could serve fails at once. A reservation is not
# one: others wait until it ends, or is removed.
_LASTING = (ObstacleCause.NO_SUCH_RESOURCE, ObstacleCause.OUT_OF_SERVICE)


def when(seconds: float) -> str:
    """A time as obstacles print it (UTC, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _no_such_text(need: Need) -> str:
    names = next(
        (
            f.values
            for f in need.filters
            if f.field == "name" and f.test in ("equals", "any_of") and not f.negate
        ),
        None,
    )
    if names:
        named = " or ".join(repr(clip(str(name))) for name in names)
        return f"no {need.kind.name} resource is named {named}"
    return f"no {need.kind.name} resource matches the constraints"


def _obstacle(row: Resource, holder: str, now: float, held: HolderView | None) -> Obstacle | None:
    """Why `row` is not granted to `holder` now; None if nothing keeps it."""
    if not row.is_usable:
        reason = row.service_reason or row.comment or "no reason given"
        return Obstacle(
            row.name, ObstacleCause.OUT_OF_SERVICE, f"{row.name} is out of service: {reason}"
        )
    until = row.reserved_until
    if row.reserved_for and row.reserved_for != holder and (until is None or until > now):
        text = f"{row.name} is reserved for {row.reserved_for}"
        if until is not None:
            text += f" until {when(until)}"
        if row.reservation_reason:
            text += f": {row.reservation_reason}"
        return Obstacle(row.name, ObstacleCause.RESERVED, text, until, row.reserved_for)
    if row.lease_id:
        if held is None:
            return Obstacle(
                row.name, ObstacleCause.HELD, f"{row.name} is held by lease {row.lease_id}"
            )
        return Obstacle(
            row.name,
            ObstacleCause.HELD,
            f"{row.name} is held by {held.holder or held.lease_id} "
            f"(lease {held.lease_id}, until {when(held.expire_time)} unless renewed)",
            held.expire_time,
            held.holder,
        )
    if row.available_time is not None and row.available_time > now:
        return Obstacle(
            row.name,
            ObstacleCause.LOCK_DELAY,
            f"{row.name} is kept out of reach until {when(row.available_time)}: "
            "its last holder vanished",
            row.available_time,
        )
    if row.reserved_by is not None:
        return Obstacle(
            row.name,
            ObstacleCause.QUEUED_AHEAD,
            f"{row.name} is free but kept for a request ahead in the queue",
        )
    return None
