"""The inventory: creating, reading, listing, changing and deleting resources."""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Sequence

import peewee

from broker.domain import events, filters, paging
from broker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionViolation,
    clip,
)
from broker.domain.kinds import Kind, KindRegistry, check_value
from broker.domain.values import (
    Constraint,
    EventType,
    KindSpec,
    LeaseState,
    NewResource,
    Page,
    ResourcePatch,
    ResourceView,
)
from broker.domain.views import etag_of, resource_view
from broker.models import lease as lease_model
from broker.models import resource as resource_model
from broker.models.transactions import write_transaction, writes

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
COMMON_LIMITS = {"comment": 4096, "group": 128, "reserved_for": 128, "reservation_reason": 1024}
UPDATABLE = (
    "is_usable",
    "comment",
    "group",
    "reserved_for",
    "reserved_until",
    "reservation_reason",
    "fields",
)
COMMON_UPDATABLE = ("is_usable", "comment", "group", "reserved_for", "reservation_reason")
MAX_REASON = 1024


def visible(group: str, groups: tuple[str, ...] | None) -> bool:
    """Whether a resource of `group` exists for a caller in `groups` (None:
    every group); a resource without a group exists for everyone."""
    return groups is None or not group or group in groups


def check_name(name: str, path: str) -> None:
    if not name:
        raise InvalidArgumentError.of(path, "is required")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError.of(path, "must be 1 to 128 letters, digits, '.', '_' or '-'")


def check_text(value: str, path: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgumentError.of(path, f"is longer than {limit} characters")


class Inventory:
    """The resources of every kind, and the rules for changing them."""

    def __init__(
        self,
        kinds: KindRegistry,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str], None] = lambda name: None,
    ):
        """`on_change` runs with a resource's name after it was created or
        changed, which may serve waiting requests (or spoil a reservation)."""
        self.kinds = kinds
        self.clock = clock
        self.on_change = on_change

    def list_kinds(self) -> list[KindSpec]:
        return [kind.spec for kind in self.kinds]

    @writes
    def create(self, new: NewResource, actor: str = "") -> ResourceView:
        check_name(new.name, "resource.name")
        if not new.kind:
            raise InvalidArgumentError.of("resource.kind", "is required")
        for key, limit in COMMON_LIMITS.items():
            check_text(getattr(new, key), f"resource.{key}", limit)
        _check_reservation(new.reserved_for, new.reserved_until, new.reservation_reason)
        kind = self.kinds.get(new.kind)
        fields = self._typed_fields(kind, new.fields, complete=True)
        values = {
            "name": new.name,
            "kind": kind.name,
            "is_usable": new.is_usable,
            "comment": new.comment,
            "group": new.group,
            "reserved_for": new.reserved_for,
            "reserved_until": new.reserved_until,
            "reservation_reason": new.reservation_reason,
        }
        try:
            with write_transaction():
                # Times are read once the write lock is held, so they follow
                # the order of the decisions.
                now = self.clock()
                values["create_time"] = values["update_time"] = now
                if resource_model.get_resource(new.name) is not None:
                    raise AlreadyExistsError("resource", new.name)
                values["fencing_token"] = lease_model.highest_fencing_token(new.name)
                children = self._sub_resources(kind, fields, None)
                row = resource_model.insert_resource(values, kind.model, fields)
                resource_model.set_parent([child.id for child in children.values()], row.id)
                events.record(
                    events.event(
                        EventType.RESOURCE_CREATED,
                        now,
                        resource=new.name,
                        kind=kind.name,
                        actor=actor,
                    ),
                    *_reservation_events(row, ("", None), now, actor),
                )
        except peewee.IntegrityError:
            raise AlreadyExistsError("resource", new.name) from None
        self.on_change(new.name)
        return self.get(row.name)

    def get(self, name: str, groups: tuple[str, ...] | None = None) -> ResourceView:
        """One resource; NOT_FOUND also for one of a group outside `groups`
        (None: every group), which to such a caller does not exist."""
        check_name(name, "name")
        row = resource_model.get_resource(name)
        if row is None or not visible(row.group, groups):
            raise NotFoundError("resource", name)
        return self._views([row])[0]

    def list(
        self,
        kind_name: str,
        constraints: Sequence[Constraint],
        page_size: int,
        page_token: str,
        groups: tuple[str, ...] | None = None,
    ) -> Page[ResourceView]:
        size = paging.page_size(page_size)
        position = paging.decode_token(page_token, ("after",))
        if position is not None and not isinstance(position["after"], str):
            raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
        kind = self.kinds.get(kind_name) if kind_name else None
        resolved = filters.resolve(
            kind, constraints, "constraints", InvalidArgumentError.of, self.kinds
        )
        rows = resource_model.list_resources(
            kind.name if kind else None,
            kind.model if kind else None,
            resolved,
            position["after"] if position else "",
            size + 1,
            groups,
        )
        more = len(rows) > size
        rows = rows[:size]
        token = paging.encode_token({"after": rows[-1].name}) if more else ""
        return Page(tuple(self._views(rows)), token)

    @writes
    def update(self, patch: ResourcePatch, actor: str = "") -> ResourceView:
        check_name(patch.name, "resource.name")
        if not patch.paths:
            raise InvalidArgumentError.of("update_mask", "names no field to change")
        for path in patch.paths:
            top = path.split(".", 1)[0]
            if top not in UPDATABLE or (top != "fields" and "." in path):
                raise InvalidArgumentError.of(
                    "update_mask",
                    f"{clip(path)!r} cannot be changed (changeable: {', '.join(UPDATABLE)})",
                )
        for key, limit in COMMON_LIMITS.items():
            check_text(getattr(patch, key), f"resource.{key}", limit)
        with write_transaction():
            now = self.clock()
            row = resource_model.get_resource(patch.name)
            if row is None:
                raise NotFoundError("resource", patch.name)
            if patch.etag and patch.etag != etag_of(row):
                raise ConflictError(
                    f"resource {patch.name!r} changed since it was read "
                    f"(etag {clip(patch.etag)}, now {etag_of(row)})"
                )
            kind = self.kinds.get(row.kind)
            values = {key: getattr(patch, key) for key in COMMON_UPDATABLE if key in patch.paths}
            if "reserved_until" in patch.paths:
                values["reserved_until"] = patch.reserved_until
            if values.get("is_usable") is True:
                # Back in service: the reason it was out, and its failed
                # setups, are forgotten.
                values.update(service_reason="", setup_failures=0)
            if values.get("reserved_for") == "":
                # No reservation: nothing of it is kept.
                values.update(reserved_until=None, reservation_reason="")
            was = (row.reserved_for, row.reserved_until)
            for key in ("reserved_for", "reserved_until", "reservation_reason"):
                setattr(row, key, values.get(key, getattr(row, key)))
            _check_reservation(row.reserved_for, row.reserved_until, row.reservation_reason)
            values["update_time"] = now
            fields = self._patched_fields(kind, patch)
            self._sub_resources(kind, fields, row)
            if not resource_model.update_resource(row.id, row.version, values):
                raise ConflictError(f"resource {patch.name!r} changed while it was updated")
            resource_model.update_kind_data(kind.model, row.id, fields)
            if any(spec.name in fields for spec in kind.references):
                self._adopt(kind, row.id)
            rows = [
                events.event(
                    EventType.RESOURCE_UPDATED,
                    now,
                    resource=row.name,
                    kind=row.kind,
                    actor=actor,
                    detail={"paths": list(patch.paths)},
                )
            ]
            if row.is_usable and values.get("is_usable") is False:
                rows.append(
                    events.event(
                        EventType.RESOURCE_MARKED_UNUSABLE,
                        now,
                        resource=row.name,
                        kind=row.kind,
                        actor=actor,
                        detail={"comment": patch.comment},
                    )
                )
            rows.extend(_reservation_events(row, was, now, actor))
            events.record(*rows)
        self.on_change(patch.name)
        return self.get(patch.name)

    @writes
    def set_out_of_service(self, name: str, reason: str, actor: str = "") -> ResourceView:
        """Takes a resource out of service for maintenance: it is never
        granted until it is returned (a lease holding it keeps it)."""
        check_name(name, "name")
        if not reason.strip():
            raise InvalidArgumentError.of(
                "reason", "is required: say why the resource is out of service"
            )
        check_text(reason, "reason", MAX_REASON)
        return self._set_service(
            name,
            {"is_usable": False, "service_reason": reason},
            EventType.RESOURCE_OUT_OF_SERVICE,
            actor,
            reason,
        )

    @writes
    def return_to_service(self, name: str, actor: str = "") -> ResourceView:
        """Puts a resource back in service, forgetting its failed setups;
        waiting requests may then be granted it."""
        check_name(name, "name")
        return self._set_service(
            name,
            {"is_usable": True, "service_reason": "", "setup_failures": 0},
            EventType.RESOURCE_BACK_IN_SERVICE,
            actor,
            "",
        )

    def _set_service(
        self, name: str, values: dict, event_type: EventType, actor: str, reason: str
    ) -> ResourceView:
        with write_transaction():
            now = self.clock()
            row = resource_model.get_resource(name)
            if row is None:
                raise NotFoundError("resource", name)
            if not resource_model.update_resource(
                row.id, row.version, {**values, "update_time": now}
            ):
                raise ConflictError(f"resource {name!r} changed while it was updated")
            events.record(
                events.event(
                    event_type, now, resource=name, kind=row.kind, actor=actor, reason=reason
                )
            )
        self.on_change(name)
        return self.get(name)

    @writes
    def delete(self, name: str, etag: str, actor: str = "") -> None:
        check_name(name, "name")
        with write_transaction():
            now = self.clock()
            row = resource_model.get_resource(name)
            if row is None:
                raise NotFoundError("resource", name)
            if etag and etag != etag_of(row):
                raise ConflictError(f"resource {name!r} changed since it was read")
            holders = lease_model.active_holders([row.id], LeaseState.ACTIVE)[row.id]
            if row.lease_id or holders:
                held_by = {lease.id for lease in holders}
                if row.lease_id is not None:
                    held_by.add(row.lease_id)
                lease_ids = sorted(held_by)
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "RESOURCE_LEASED",
                        f"resources/{name}",
                        f"resource {name!r} is held by lease {', '.join(lease_ids)}; "
                        "release or revoke it first",
                    )
                )
            if row.parent_id is not None:
                parent = resource_model.names_of([row.parent_id]).get(row.parent_id, "")
                raise _sub_resource_error(
                    name,
                    f"resource {name!r} is a sub-resource of {parent!r}: clear that field "
                    f"of {parent!r} (or delete {parent!r}) first",
                )
            resource_model.orphan_children(row.id)
            if not resource_model.delete_free_resource(row.id, row.version):
                raise ConflictError(f"resource {name!r} changed while it was deleted")
            events.record(
                events.event(
                    EventType.RESOURCE_DELETED, now, resource=name, kind=row.kind, actor=actor
                )
            )

    def _sub_resources(
        self, kind: Kind, fields: dict, parent: resource_model.Resource | None
    ) -> dict[str, resource_model.Resource]:
        """Checks the sub-resources that `fields` name (by name) and turns
        each name into the resource's id, in place: each must exist, be of
        the field's kind and be no other resource's sub-resource, and a
        held resource keeps the sub-resources it was granted with."""
        named = {spec.name: spec for spec in kind.references if spec.name in fields}
        if not named:
            return {}
        if parent is not None and parent.lease_id is not None:
            raise FailedPreconditionError(
                PreconditionViolation(
                    "RESOURCE_LEASED",
                    f"resources/{parent.name}",
                    f"resource {parent.name!r} is held by lease {parent.lease_id}, with its "
                    "sub-resources: change them once it is released",
                )
            )
        children: dict[str, resource_model.Resource] = {}
        for field, spec in named.items():
            path = f"resource.fields.{field}"
            child_name = fields[field]
            if child_name is None:
                continue
            child = resource_model.get_resource(child_name)
            if child is None or child.kind != spec.kind:
                raise InvalidArgumentError.of(
                    path, f"{field} names a {spec.kind}: there is no {spec.kind} {child_name!r}"
                )
            if child.parent_id is not None and (parent is None or child.parent_id != parent.id):
                owner = resource_model.names_of([child.parent_id]).get(child.parent_id, "")
                raise _sub_resource_error(
                    child_name,
                    f"{child_name!r} is already a sub-resource of {owner!r}: a resource "
                    "is the sub-resource of one resource at most",
                )
            if child.id in {c.id for c in children.values()}:
                raise InvalidArgumentError.of(
                    path, f"{child_name!r} is named by another field too: one field each"
                )
            children[field] = child
            fields[field] = child.id
        return children

    def _adopt(self, kind: Kind, parent_id: int) -> None:
        """Records the parent of the sub-resources its row names now."""
        (data,) = resource_model.kind_data(kind.model, [parent_id]).values()
        ids = [i for i in kind.reference_ids(data).values() if i is not None]
        resource_model.orphan_children(parent_id, keep=ids)
        resource_model.set_parent(ids, parent_id)

    def _typed_fields(self, kind: Kind, given: dict, complete: bool) -> dict:
        """Checks typed field values; with `complete`, fills defaults and
        requires the required ones."""
        for name in given:
            if kind.spec.field(name) is None:
                known = ", ".join(f.name for f in kind.spec.fields) or "none"
                raise InvalidArgumentError.of(
                    f"resource.fields.{clip(name)}",
                    f"kind {kind.name!r} has no field {clip(name)!r} (fields: {known})",
                )
        result = {}
        for spec in kind.spec.fields:
            path = f"resource.fields.{spec.name}"
            if spec.name in given:
                result[spec.name] = check_value(spec, given[spec.name], path)
            elif complete:
                if spec.required:
                    raise InvalidArgumentError.of(path, f"{spec.name} is required")
                result[spec.name] = spec.default
        return result

    def _patched_fields(self, kind: Kind, patch: ResourcePatch) -> dict:
        if "fields" in patch.paths:
            return self._typed_fields(kind, patch.fields, complete=False)
        named = {path.split(".", 1)[1] for path in patch.paths if path.startswith("fields.")}
        for name in named:
            if kind.spec.field(name) is None:
                raise InvalidArgumentError.of(
                    "update_mask", f"kind {kind.name!r} has no field {clip(name)!r}"
                )
        given = {name: patch.fields.get(name) for name in named}
        return self._typed_fields(kind, given, complete=False)

    def _views(self, rows: builtins.list[resource_model.Resource]) -> builtins.list[ResourceView]:
        """Views of rows of any kinds: typed fields fetched per kind, holders
        of shared kinds from their active grants."""
        by_kind: dict[str, builtins.list[resource_model.Resource]] = {}
        by_id = {row.id: row for row in rows}
        for row in rows:
            by_kind.setdefault(row.kind, []).append(row)
        data = {}
        shared_ids: builtins.list[int] = []
        for kind_name, kind_rows in by_kind.items():
            kind = self.kinds.find(kind_name)
            if kind is None:
                continue
            missing = [row.id for row in kind_rows if not hasattr(row, "data")]
            fetched = resource_model.kind_data(kind.model, missing)
            if kind.references:
                for row_id, names in resource_model.reference_names(kind.model, fetched).items():
                    by_id[row_id].references = names
            data.update(fetched)
            data.update({row.id: row.data for row in kind_rows if hasattr(row, "data")})
            if not kind.ownable:
                shared_ids.extend(row.id for row in kind_rows)
        holders = lease_model.active_holders(shared_ids, LeaseState.ACTIVE)
        parents = resource_model.names_of(row.parent_id for row in rows)
        return [
            resource_view(
                row,
                data.get(row.id),
                self.kinds.find(row.kind),
                tuple(lease.id for lease in holders[row.id]) if row.id in holders else None,
                parents.get(row.parent_id or 0, ""),
            )
            for row in rows
        ]


def _sub_resource_error(name: str, text: str) -> FailedPreconditionError:
    """A change refused for what `name` is in a tree of sub-resources."""
    return FailedPreconditionError(PreconditionViolation("SUB_RESOURCE", f"resources/{name}", text))


def _check_reservation(reserved_for: str, until: float | None, reason: str) -> None:
    if until is not None and not reserved_for:
        raise InvalidArgumentError.of(
            "resource.reserved_until", "needs reserved_for: whom the resource is reserved for"
        )
    if reason and not reserved_for:
        raise InvalidArgumentError.of(
            "resource.reservation_reason", "needs reserved_for: whom the resource is reserved for"
        )


def _reservation_events(
    row: resource_model.Resource, was: tuple[str, float | None], now: float, actor: str
) -> list[dict]:
    """RESERVED when a reservation begins or changes, UNRESERVED when one
    is removed."""
    before_for = was[0]
    if row.reserved_for and (row.reserved_for, row.reserved_until) != was:
        detail: dict[str, str | float] = {"reserved_for": row.reserved_for}
        if row.reserved_until is not None:
            detail["reserved_until"] = row.reserved_until
        return [
            events.event(
                EventType.RESOURCE_RESERVED,
                now,
                resource=row.name,
                kind=row.kind,
                actor=actor,
                reason=row.reservation_reason,
                detail=detail,
            )
        ]
    if before_for and not row.reserved_for:
        return [
            events.event(
                EventType.RESOURCE_UNRESERVED,
                now,
                resource=row.name,
                kind=row.kind,
                actor=actor,
                detail={"reserved_for": before_for},
            )
        ]
    return []
