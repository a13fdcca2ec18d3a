"""The console's site: its routes, who each request is from, and how pages
are rendered (Jinja templates, escaped by default) and refused."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urlencode

import grpc
import jinja2
from aiohttp import web

from broker.v1 import event_pb2
from broker.web.console import access, actions, display, pages
from broker.web.console.access import Refused, Visitor
from broker.web.console.calls import CallFailed, Calls
from broker.web.console.live import LiveHub, Source

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
HTML = "text/html"
# What a page may load and do: its own scripts and styles only, no frames.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        value=display.value_text,
        when=display.time_text,
        span=display.span_text,
        lease_state=display.lease_state_text,
        event_type=display.event_type_text,
        state=display.state_of,
        state_label=display.STATE_LABELS.get,
        requirement=display.requirement_text,
        segment=lambda text: quote(str(text), safe=""),
        event_type_of=lambda name: display.event_type_text(event_pb2.EventType.Value(name)),
        replace_page=lambda query, token: urlencode({**query, "page": token}),
    )
    return env


class Console:
    """The pages, served as `channel`'s callers: `add_to(app)` mounts them."""

    def __init__(self, channel: grpc.aio.Channel, source: Source, *, authentication_enabled: bool):
        self.channel = channel
        self.hub = LiveHub(source)
        self.authentication_enabled = authentication_enabled
        self.templates = environment()

    def add_to(self, app: web.Application) -> None:
        app.router.add_static("/static/", HERE / "static", append_version=True)
        get, post = app.router.add_get, app.router.add_post
        get("/login", self._public(pages.login_form))
        post("/login", self._public(pages.login, form=True))
        post("/logout", self._public(pages.logout, form=True))
        get("/", self.page(pages.inventory))
        get("/resources/new", self.page(pages.new_resource))
        post("/resources/new", self.page(actions.create_resource, form=True))
        get("/resources/{name}", self.page(pages.resource))
        get("/resources/{name}/edit", self.page(pages.edit_resource))
        post("/resources/{name}/edit", self.page(actions.update_resource, form=True))
        for action in actions.RESOURCE_ACTIONS:
            post(f"/resources/{{name}}/{action}", self.page(actions.on_resource, form=True))
        post("/leases/{lease_id}/revoke", self.page(actions.revoke, form=True))
        get("/leases", self.page(pages.leases))
        get("/queue", self.page(pages.queue))
        get("/events", self.page(pages.events))
        get("/live", self.page(pages.live))

    def render(
        self,
        request: web.Request,
        template: str,
        visitor: Visitor | None,
        status: int = 200,
        **context,
    ) -> web.Response:
        csrf = visitor.csrf if visitor is not None else access.csrf_token(request)
        body = self.templates.get_template(template).render(
            visitor=visitor,
            csrf=csrf,
            csrf_field=access.CSRF_FIELD,
            path=request.path,
            authentication_enabled=self.authentication_enabled,
            **context,
        )
        response = web.Response(
            text=body, content_type=HTML, status=status, headers=SECURITY_HEADERS
        )
        access.remember_csrf(request, response, csrf)
        return response

    def refusal(self, request: web.Request, visitor: Visitor | None, status: int, reason: str):
        return self.render(request, "refused.html", visitor, status=status, reason=reason)

    def _public(self, handler, form: bool = False):
        """A page anyone may open (the login)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                access.check_host(request, self.authentication_enabled)
                if form:
                    access.check_form(request, await access.form_of(request))
                return await handler(self, request)
            except Refused as refused:
                return self.refusal(request, None, refused.status, str(refused))

        return handle

    def page(self, handler, form: bool = False):
        """A page for a visitor the broker knows: without a session (with
        authentication on), the visitor is sent to the login."""

        async def handle(request: web.Request) -> web.StreamResponse:
            visitor: Visitor | None = None
            try:
                access.check_host(request, self.authentication_enabled)
                if form:
                    access.check_form(request, await access.form_of(request))
                token = access.session_token(request)
                if self.authentication_enabled and not token:
                    return _to_login(request, "")
                # With authentication off, what the console does is recorded
                # as the console's.
                calls = Calls(self.channel, token, holder="" if token else "console")
                try:
                    caller = await calls.caller()
                except CallFailed as failed:
                    if failed.unauthenticated:
                        return _to_login(request, failed.status.message, end=True)
                    raise
                visitor = Visitor(calls, caller, access.csrf_token(request))
                return await handler(self, request, visitor)
            except Refused as refused:
                return self.refusal(request, visitor, refused.status, str(refused))
            except CallFailed as failed:
                return self.refusal(request, visitor, failed.http_status, failed.status.message)
            except web.HTTPException:
                raise
            except Exception:
                error_id = uuid.uuid4().hex[:12]
                log.exception(
                    "console %s %s failed (error id %s)", request.method, request.path, error_id
                )
                return self.refusal(
                    request,
                    visitor,
                    500,
                    f"the console failed (error id {error_id}): see the broker's log",
                )

        return handle


def _to_login(request: web.Request, reason: str, end: bool = False) -> web.StreamResponse:
    """To the login page; `end`: the session's token is no longer accepted."""
    if request.path == "/live":
        response = web.Response(status=401, text=reason or "sign in first")
    else:
        response = access.see_other("/login?ended=1" if end else "/login")
    if end:
        access.end_session(response)
    return response
