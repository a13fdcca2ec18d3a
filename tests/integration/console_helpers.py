"""What the console tests share: a broker with its console on a free port,
a visitor that keeps its cookies as a browser does, and a reader of a live
page's server-sent events."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import queue
import re
import socket
import threading
import urllib.parse
from http.cookies import SimpleCookie

from broker.api.server import BrokerServer, build_server
from broker.config import AuthConfig, WebConfig
from tests.conftest import wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS

CSRF_INPUT = re.compile(r'name="csrf" value="([^"]+)"')


def start_console(config, *, auth: bool = False) -> BrokerServer:
    changes: dict = {"base_dir": ".", "web": WebConfig("127.0.0.1:0")}
    if auth:
        changes["auth"] = AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS)
    server = build_server(dataclasses.replace(config, **changes), "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    return server


@dataclasses.dataclass
class Answer:
    status: int
    text: str
    headers: http.client.HTTPMessage

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def cookie(self, name: str) -> str:
        """The Set-Cookie header that sets `name`, or empty."""
        for header in self.headers.get_all("Set-Cookie") or ():
            if header.startswith(name + "="):
                return header
        return ""


class Visitor:
    """A browser without a screen: keeps cookies, sends forms with the
    page's CSRF token and the site's Origin, and follows no redirects."""

    def __init__(self, address: str):
        self.address = address
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(self, verb: str, path: str, form=None, headers=None) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {"Host": self.address, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            connection.request(verb, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.read().decode(), response.headers)
        finally:
            connection.close()
        for header in answer.headers.get_all("Set-Cookie") or ():
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        found = CSRF_INPUT.search(answer.text)
        if found:
            self.csrf = found.group(1)
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: dict, *, csrf: bool = True, origin: str | None = "") -> Answer:
        """Sends a form as a page of the console would; `csrf=False` leaves
        out the token, `origin` names another site (None: no Origin)."""
        if not self.csrf:
            self.get("/login" if "broker_session" not in self.cookies else "/")
        sent = dict(form)
        if csrf:
            sent["csrf"] = self.csrf
        headers = {}
        if origin is not None:
            headers["Origin"] = origin or f"http://{self.address}"
        return self.request("POST", path, sent, headers)

    def login(self, token: str) -> Answer:
        self.get("/login")
        return self.post("/login", {"token": token})


class LiveReader:
    """Reads a live page's events on a thread of its own: `next(kind)` is
    the next message of that kind, as (id, data)."""

    def __init__(self, visitor: Visitor, path: str, last_id: str | None = None):
        self.messages: queue.Queue = queue.Queue()
        self.connection = http.client.HTTPConnection(visitor.host, visitor.port, timeout=30)
        headers = {"Host": visitor.address, "Accept": "text/event-stream"}
        if visitor.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in visitor.cookies.items())
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        message: dict[str, str] = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "event" in message:
                        self.messages.put(
                            (message.get("id", ""), message["event"], message["data"])
                        )
                    message = {}
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                message[key] = value
        except Exception:  # the connection was closed under it
            pass
        self.messages.put(None)

    def next(self, kind: str, timeout: float = 20.0, where=lambda data: True):
        """The next message of `kind` whose JSON data passes `where`."""
        while True:
            item = self.messages.get(timeout=timeout)
            if item is None:
                raise AssertionError(f"the live page ended before a {kind!r} message")
            number, event, data = item
            if event == kind and where(json.loads(data)):
                return number, json.loads(data)

    def close(self) -> None:
        if self.connection.sock is not None:
            with contextlib.suppress(OSError):
                self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        self._thread.join(10)
