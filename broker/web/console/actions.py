"""What an administrator does from the console: each form becomes one call
as the visitor, so the broker's role table decides (a viewer's forged post
is refused by the broker as any call would be). A success goes back to
the page (post, redirect, get); a refusal shows the broker's reason on the
page, and a form's field violations beside their inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web
from google.protobuf import field_mask_pb2

from broker.v1 import inventory_service_pb2, lease_service_pb2, resource_pb2
from broker.web.console import access, forms, pages
from broker.web.console.access import Refused, Visitor
from broker.web.console.calls import CallFailed

if TYPE_CHECKING:
    from broker.web.console.app import Console

RESOURCE_ACTIONS = ("out-of-service", "return-to-service", "reserve", "unreserve", "delete")


def resource_path(name: str) -> str:
    return f"/resources/{quote(name, safe='')}"


async def create_resource(console: Console, request: web.Request, visitor: Visitor):
    form = await access.form_of(request)
    kind = await _kind(visitor, form.get("kind", ""))
    name = form.get("name", "").strip()
    return await _save(console, request, visitor, kind, form, name, creating=True)


async def update_resource(console: Console, request: web.Request, visitor: Visitor):
    form = await access.form_of(request)
    name = request.match_info["name"]
    kind = await _kind(visitor, form.get("kind", ""))
    return await _save(console, request, visitor, kind, form, name, creating=False)


async def _kind(visitor: Visitor, name: str) -> resource_pb2.Kind:
    kind = next((k for k in await pages.kinds(visitor) if k.name == name), None)
    if kind is None:
        raise Refused(400, f"there is no kind {name!r}: pick one of the inventory's kinds")
    return kind


async def _save(console, request, visitor, kind, form, name, *, creating: bool):
    calls = visitor.calls
    try:
        resource, mask = forms.resource_from_form(kind, form, name=name)
        if creating:
            await calls(
                calls.inventory.CreateResource,
                inventory_service_pb2.CreateResourceRequest(resource=resource),
            )
        else:
            await calls(
                calls.inventory.UpdateResource,
                inventory_service_pb2.UpdateResourceRequest(resource=resource, update_mask=mask),
            )
    except forms.FormErrors as invalid:
        return pages.render_form(
            console,
            request,
            visitor,
            kind,
            values=form,
            errors=invalid.errors,
            creating=creating,
            message="Some values are not of their field's type: see below.",
            status=400,
        )
    except CallFailed as failed:
        errors: dict[str, str] = {}
        for path, description in failed.field_errors().items():
            errors.setdefault(forms.input_of_violation(path) or "", description)
        unplaced = errors.pop("", "")
        return pages.render_form(
            console,
            request,
            visitor,
            kind,
            values=form,
            errors=errors,
            creating=creating,
            message=unplaced
            or ("The broker refused some values: see below." if errors else failed.status.message),
            status=400 if errors else failed.http_status,
        )
    return access.see_other(resource_path(name))


async def on_resource(console: Console, request: web.Request, visitor: Visitor):
    name = request.match_info["name"]
    action = request.path.rsplit("/", 1)[1]
    form = await access.form_of(request)
    calls = visitor.calls
    inventory = calls.inventory
    try:
        if action == "out-of-service":
            await calls(
                inventory.SetOutOfService,
                inventory_service_pb2.SetOutOfServiceRequest(
                    name=name, reason=form.get("reason", "").strip()
                ),
            )
        elif action == "return-to-service":
            await calls(
                inventory.ReturnToService, inventory_service_pb2.ReturnToServiceRequest(name=name)
            )
        elif action in ("reserve", "unreserve"):
            await calls(inventory.UpdateResource, _reservation(name, form, action == "reserve"))
        elif action == "delete":
            await calls(
                inventory.DeleteResource, inventory_service_pb2.DeleteResourceRequest(name=name)
            )
            return access.see_other("/")
    except CallFailed as failed:
        return await _resource_page_with(console, request, visitor, name, failed)
    return access.see_other(resource_path(name))


def _reservation(name: str, form: dict[str, str], reserving: bool):
    resource = resource_pb2.Resource(name=name)
    if reserving:
        resource.reserved_for = form.get("reserved_for", "").strip()
        resource.reservation_reason = form.get("reason", "").strip()
        until = form.get("reserved_until", "").strip()
        if until:
            try:
                resource.reserved_until.FromDatetime(forms.parse_moment(until))
            except ValueError as error:
                raise Refused(400, f"reserved until: {error}") from None
    return inventory_service_pb2.UpdateResourceRequest(
        resource=resource,
        update_mask=field_mask_pb2.FieldMask(
            paths=["reserved_for", "reserved_until", "reservation_reason"]
        ),
    )


async def revoke(console: Console, request: web.Request, visitor: Visitor):
    lease_id = request.match_info["lease_id"]
    form = await access.form_of(request)
    calls = visitor.calls
    # Back to the resource page it was sent from, else to the leases.
    name = form.get("resource", "")
    try:
        await calls(
            calls.leases.RevokeLease,
            lease_service_pb2.RevokeLeaseRequest(
                lease_id=lease_id, reason=form.get("reason", "").strip()
            ),
        )
    except CallFailed as failed:
        if name:
            return await _resource_page_with(console, request, visitor, name, failed)
        raise
    return access.see_other(resource_path(name) if name else "/leases")


async def _resource_page_with(console, request, visitor, name: str, failed: CallFailed):
    """The resource's page again, with the broker's refusal at its top."""
    context = await pages.resource_context(console, request, visitor, name)
    context["error"] = failed.status.message
    return console.render(request, "resource.html", visitor, status=failed.http_status, **context)
