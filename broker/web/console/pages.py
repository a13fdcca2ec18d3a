"""The console's read-only pages: each a few calls as the visitor, and a
template. A live page also names what it follows (`data-live`), from the
hub's newest message on, so an update between render and connection is
not lost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from broker.api.convert import timestamp
from broker.v1 import (
    event_pb2,
    event_service_pb2,
    inventory_service_pb2,
    lease_pb2,
    lease_service_pb2,
    resource_pb2,
)
from broker.web.console import access, display, forms
from broker.web.console.access import Refused, Visitor
from broker.web.console.calls import CallFailed, Calls
from broker.web.console.live import TOPICS, Page, stream

if TYPE_CHECKING:
    from broker.web.console.app import Console

# The most resources the inventory shows, over pages of the broker's
# largest page.
INVENTORY_SHOWN = 5000
PAGE_SIZE = 1000
EVENTS_SHOWN = 100
# The ranges a resource's usage is shown over, in seconds.
USAGE_RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
STATES = tuple(display.STATE_LABELS)


async def kinds(visitor: Visitor) -> list[resource_pb2.Kind]:
    calls = visitor.calls
    answer = await calls(calls.inventory.ListKinds, inventory_service_pb2.ListKindsRequest())
    return list(answer.kinds)


async def all_resources(visitor: Visitor, kind: str) -> tuple[list[resource_pb2.Resource], bool]:
    """The resources of `kind` (every kind if empty), and whether there
    were more than are shown."""
    calls, found, token = visitor.calls, [], ""
    while True:
        request = inventory_service_pb2.ListResourcesRequest(
            kind=kind, page_size=PAGE_SIZE, page_token=token
        )
        answer = await calls(calls.inventory.ListResources, request)
        found.extend(answer.resources)
        token = answer.next_page_token
        if not token:
            return found, False
        if len(found) >= INVENTORY_SHOWN:
            return found[:INVENTORY_SHOWN], True


async def inventory(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    declared = await kinds(visitor)
    wanted_kind = request.query.get("kind", "")
    wanted_state = request.query.get("state", "")
    search = request.query.get("q", "").strip()
    if wanted_kind and wanted_kind not in {k.name for k in declared}:
        raise Refused(404, f"there is no kind {wanted_kind!r}: pick one of the inventory's kinds")
    if wanted_state and wanted_state not in STATES:
        raise Refused(400, f"state must be one of {', '.join(STATES)}, not {wanted_state!r}")
    resources, truncated = await all_resources(visitor, wanted_kind)
    shown = [
        r
        for r in resources
        if (not wanted_state or display.state_of(r) == wanted_state)
        and (not search or search.lower() in r.name.lower())
    ]
    tables = []
    for kind in declared:
        if wanted_kind and kind.name != wanted_kind:
            continue
        rows = [r for r in shown if r.kind == kind.name]
        counts = {state: 0 for state in STATES}
        for r in resources:
            if r.kind == kind.name:
                counts[display.state_of(r)] += 1
        tables.append({"kind": kind, "rows": rows, "counts": counts})
    return console.render(
        request,
        "inventory.html",
        visitor,
        tables=tables,
        kinds=declared,
        wanted_kind=wanted_kind,
        wanted_state=wanted_state,
        search=search,
        states=display.STATE_LABELS,
        truncated=truncated,
        live=live_url(console, "resources"),
    )


async def resource(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    context = await resource_context(console, request, visitor, request.match_info["name"])
    return console.render(request, "resource.html", visitor, **context)


async def resource_context(
    console: Console, request: web.Request, visitor: Visitor, name: str
) -> dict:
    """What the resource's page shows."""
    calls = visitor.calls
    found = await calls(
        calls.inventory.GetResource, inventory_service_pb2.GetResourceRequest(name=name)
    )
    item = found.resource
    lease = None
    if item.lease_ids:
        try:
            lease = (
                await calls(
                    calls.leases.GetLease,
                    lease_service_pb2.GetLeaseRequest(lease_id=item.lease_ids[0]),
                )
            ).lease
        except CallFailed:
            lease = None
    span_key = request.query.get("range", "7d")
    if span_key not in USAGE_RANGES:
        raise Refused(400, f"range must be one of {', '.join(USAGE_RANGES)}, not {span_key!r}")
    now = time.time()
    start = timestamp(now - USAGE_RANGES[span_key])
    usage = await calls(
        calls.events.GetUsageStats,
        event_service_pb2.GetUsageStatsRequest(
            resource=name,
            start_time=start,
            group_by=event_service_pb2.USAGE_GROUPING_RESOURCE,
        ),
    )
    history = await calls(
        calls.events.ListEvents,
        event_service_pb2.ListEventsRequest(
            filter=event_service_pb2.EventFilter(resource=name, start_time=start),
            page_size=EVENTS_SHOWN,
        ),
    )
    kind = next((k for k in await kinds(visitor) if k.name == item.kind), None)
    return dict(
        item=item,
        kind=kind,
        lease=lease,
        usage=usage.stats[0] if usage.stats else None,
        history=list(history.events),
        more_history=bool(history.next_page_token),
        ranges=USAGE_RANGES,
        span_key=span_key,
        live=live_url(console, "resources,events", resource=name),
        error=None,
    )


async def leases(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    calls = visitor.calls
    answer = await calls(
        calls.leases.ListLeases,
        lease_service_pb2.ListLeasesRequest(
            state=lease_pb2.LEASE_STATE_ACTIVE, page_size=PAGE_SIZE
        ),
    )
    return console.render(
        request,
        "leases.html",
        visitor,
        leases=list(answer.leases),
        more=bool(answer.next_page_token),
        live=live_url(console, "leases"),
    )


async def queue(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    calls = visitor.calls
    answer = await calls(
        calls.leases.ListWaiters, lease_service_pb2.ListWaitersRequest(page_size=PAGE_SIZE)
    )
    return console.render(
        request,
        "queue.html",
        visitor,
        waiters=list(answer.waiters),
        more=bool(answer.next_page_token),
        live=live_url(console, "queue"),
    )


async def events(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    query = request.query
    wanted = event_service_pb2.EventFilter(
        resource=query.get("resource", "").strip(),
        kind=query.get("kind", "").strip(),
        actor=query.get("actor", "").strip(),
        lease_id=query.get("lease", "").strip(),
    )
    type_name = query.get("type", "")
    if type_name:
        if type_name not in dict(event_pb2.EventType.items()) or type_name.endswith("UNSPECIFIED"):
            raise Refused(400, f"there is no event type {type_name!r}: pick one from the list")
        wanted.types.append(event_pb2.EventType.Value(type_name))
    span_key = query.get("range", "24h")
    if span_key not in USAGE_RANGES:
        raise Refused(400, f"range must be one of {', '.join(USAGE_RANGES)}, not {span_key!r}")
    wanted.start_time.CopyFrom(timestamp(time.time() - USAGE_RANGES[span_key]))
    calls = visitor.calls
    answer = await calls(
        calls.events.ListEvents,
        event_service_pb2.ListEventsRequest(
            filter=wanted, page_size=EVENTS_SHOWN, page_token=query.get("page", "")
        ),
    )
    return console.render(
        request,
        "events.html",
        visitor,
        events=list(answer.events),
        next_page=answer.next_page_token,
        wanted=wanted,
        type_name=type_name,
        types=display.event_type_names(),
        ranges=USAGE_RANGES,
        span_key=span_key,
        query=dict(query),
        live=live_url(console, "events") if not query.get("page") else "",
    )


def live_url(console: Console, topic: str, resource: str = "") -> str:
    url = f"/live?topics={topic}&after={console.hub.cursor}"
    if resource:
        url += f"&resource={quote(resource, safe='')}"
    return url


async def live(console: Console, request: web.Request, visitor: Visitor) -> web.StreamResponse:
    topics = frozenset(t for t in request.query.get("topics", "").split(",") if t)
    if not topics or not topics <= TOPICS:
        raise Refused(400, f"topics must be some of {', '.join(sorted(TOPICS))}")
    after = console.hub.after(
        request.headers.get("Last-Event-ID") or request.query.get("after", "")
    )
    groups = (
        None
        if visitor.is_admin or not visitor.caller.authentication_enabled
        else tuple(visitor.caller.groups)
    )
    page = Page(topics, groups, request.query.get("resource", ""))
    return await stream(request, console.hub, page, after)


async def new_resource(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    declared = await kinds(visitor)
    kind_name = request.query.get("kind", "")
    kind = next((k for k in declared if k.name == kind_name), None)
    if kind is None:
        return console.render(request, "pick_kind.html", visitor, kinds=declared)
    return render_form(console, request, visitor, kind, values={}, errors={}, creating=True)


async def edit_resource(console: Console, request: web.Request, visitor: Visitor) -> web.Response:
    name = request.match_info["name"]
    calls = visitor.calls
    found = await calls(
        calls.inventory.GetResource, inventory_service_pb2.GetResourceRequest(name=name)
    )
    kind = next((k for k in await kinds(visitor) if k.name == found.resource.kind), None)
    if kind is None:
        raise Refused(404, f"the kind {found.resource.kind!r} is no longer declared")
    values = forms.form_values(found.resource, kind)
    return render_form(console, request, visitor, kind, values=values, errors={}, creating=False)


def render_form(
    console: Console,
    request: web.Request,
    visitor: Visitor,
    kind: resource_pb2.Kind,
    *,
    values: dict[str, str],
    errors: dict[str, str],
    creating: bool,
    message: str = "",
    status: int = 200,
) -> web.Response:
    return console.render(
        request,
        "resource_form.html",
        visitor,
        status=status,
        kind=kind,
        inputs=forms.inputs_of(kind),
        values=values,
        errors=errors,
        creating=creating,
        message=message,
    )


async def login_form(console: Console, request: web.Request) -> web.Response:
    if not console.authentication_enabled:
        return access.see_other("/")
    ended = "ended" in request.query
    return console.render(
        request,
        "login.html",
        None,
        error="Your session ended: the broker no longer accepts its token. Sign in again."
        if ended
        else "",
    )


async def login(console: Console, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    if not console.authentication_enabled:
        return access.see_other("/")
    error = ""
    if not token:
        error = "Paste a token: `broker tokens create NAME --role ROLE` makes one."
    elif len(token) > access.MAX_TOKEN_LENGTH:
        error = f"That is longer than any token ({access.MAX_TOKEN_LENGTH} characters at most)."
    else:
        try:
            await Calls(console.channel, token).caller()
        except CallFailed as failed:
            error = f"The broker refused this token: {failed.status.message}"
    if error:
        return console.render(request, "login.html", None, status=401, error=error)
    response = access.see_other("/")
    access.start_session(request, response, token)
    return response


async def logout(console: Console, request: web.Request) -> web.StreamResponse:
    response = access.see_other("/login")
    access.end_session(response)
    return response
