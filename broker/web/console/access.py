"""Who visits the console, and the guards on what they send.

The session is the visitor's own broker token, kept in a cookie that
scripts cannot read (`HttpOnly`) and that the browser sends only to pages
of this site (`SameSite=Strict`). Any broker of the lab can serve the
session, and every page checks the token with the broker, so revoking the
token ends the session at once.

Every form carries a CSRF token that must match the visitor's CSRF cookie
(the double-submit pattern), and a POST whose `Origin` is another site is
refused before that, so another site's page cannot act in a visitor's name.
With authentication off, only loopback Host names are served, as the
HTTP/JSON API does, against DNS rebinding."""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from broker.api.exposure import is_loopback
from broker.v1 import access_service_pb2
from broker.web.console.calls import Calls

SESSION_COOKIE = "broker_session"
CSRF_COOKIE = "broker_csrf"
CSRF_FIELD = "csrf"
# The longest token taken at login: API tokens and OIDC JWTs fit well
# within it, and a cookie must stay under the browsers' 4 KiB.
MAX_TOKEN_LENGTH = 3000


@dataclasses.dataclass(frozen=True)
class Visitor:
    """Who asks for a page: their calls, name and role, and their CSRF token."""

    calls: Calls
    caller: access_service_pb2.GetCallerResponse
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.caller.role == access_service_pb2.ROLE_ADMIN

    @property
    def can_lease(self) -> bool:
        return self.caller.role >= access_service_pb2.ROLE_USER

    @property
    def name(self) -> str:
        return self.caller.name or "anyone"


class Refused(Exception):
    """A request the console will not serve, with the reason and status."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def see_other(path: str) -> web.Response:
    """Sends the browser to `path` (after a form: post, redirect, get)."""
    return web.Response(status=303, headers={"Location": path})


def session_token(request: web.Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def csrf_token(request: web.Request) -> str:
    """The visitor's CSRF token: their cookie's, or a new one that
    `remember_csrf` sets on the response."""
    given = request.cookies.get(CSRF_COOKIE, "")
    if given and len(given) <= 64:
        return given
    return secrets.token_urlsafe(32)


def _secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


def remember_csrf(request: web.Request, response: web.StreamResponse, token: str) -> None:
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=_secure(request), path="/"
        )


def start_session(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=_secure(request), path="/"
    )


def end_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def check_host(request: web.Request, authentication_enabled: bool) -> None:
    if not authentication_enabled and not is_loopback(request.host):
        raise Refused(
            403,
            f"the Host {request.host!r} is not a loopback name, and this broker has "
            "authentication off: open the console as 127.0.0.1 or localhost",
        )


def check_form(request: web.Request, form: dict[str, str]) -> None:
    """Refuses a POST from another site's page, or without the visitor's
    CSRF token: 403 with the reason."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc != request.host:
            raise Refused(
                403,
                f"this form was sent from another site ({origin}), not from the console's "
                "own pages: open the console and send it from there",
            )
    elif origin == "null" or request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Refused(403, "this form was sent from another site: send it from the console")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Refused(
            403,
            "the form's CSRF token is missing or stale (cookies may be off, or the page is "
            "old): reload the page and send the form again",
        )


async def form_of(request: web.Request) -> dict[str, str]:
    """A posted form's text fields (uploads are never taken)."""
    return {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
