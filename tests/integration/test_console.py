"""The web console's pages and forms, as a browser without a screen sees
them, on both backends: what each page shows, the typed form and its
errors, the admin actions, and the guards (login, roles, CSRF, Origin,
Host)."""

from __future__ import annotations

import re

import grpc
import pytest

from broker.domain.tokens import Tokens
from broker.v1 import inventory_service_pb2_grpc, lease_pb2
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
from tests.integration.console_helpers import Visitor, start_console
from tests.integration.helpers import create_calculators, wait_until


@pytest.fixture
def auth_console(config):
    server = start_console(config, auth=True)
    yield server, make_tokens()
    server.stop(0)


def text_of(html: str, element_id: str) -> str:
    found = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', html)
    return found.group(1) if found else ""


def rows_of(html: str, kind: str) -> list[str]:
    table = html.split(f'data-kind="{kind}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-name="([^"]+)"', table)


def test_the_inventory_shows_each_kind_with_its_typed_columns_and_states(console, client):
    with grpc.insecure_channel(console.address) as channel:
        create_calculators(inventory_service_pb2_grpc.InventoryServiceStub(channel))
    client.set_out_of_service("calc-3", "display cracked")
    visitor = Visitor(console.web_address)
    page = visitor.get("/")
    assert page.status == 200
    assert "<title>Inventory · Rotest broker</title>" in page.text
    assert rows_of(page.text, "Calculator") == ["calc-1", "calc-2", "calc-3"]
    assert 'data-column="field:ip_address"' in page.text
    assert "2 free · 0 held · 0 reserved · 1 out of service" in page.text
    free = visitor.get("/?kind=Calculator&state=out-of-service")
    assert rows_of(free.text, "Calculator") == ["calc-3"]
    named = visitor.get("/?q=calc-2")
    assert rows_of(named.text, "Calculator") == ["calc-2"]


def test_an_empty_inventory_says_so_and_offers_to_add(console):
    page = Visitor(console.web_address).get("/")
    assert "No Calculator resources." in page.text
    assert 'href="/resources/new?kind=Calculator"' in page.text


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/?state=busy", 400, "state must be one of free, held"),
        ("/?kind=Toaster", 404, "there is no kind &#39;Toaster&#39;"),
        ("/resources/no-such", 404, "not found"),
        ("/events?type=EVENT_TYPE_NOPE", 400, "there is no event type"),
        ("/events?range=1y", 400, "range must be one of"),
        ("/live?topics=gossip", 400, "topics must be some of"),
    ],
)
def test_bad_page_input_is_refused_with_a_reason(console, path, status, reason):
    page = Visitor(console.web_address).get(path)
    assert page.status == status
    assert reason in text_of(page.text, "refusal")


def test_the_form_is_built_from_the_kind_and_shows_typed_errors_beside_fields(console, client):
    visitor = Visitor(console.web_address)
    form = visitor.get("/resources/new?kind=Calculator")
    assert 'name="field.ip_address" type="text"' in form.text
    assert 'name="field.port" type="number"' in form.text and 'step="1"' in form.text
    # Not a number: refused by the console before any call.
    wrong_port = visitor.post(
        "/resources/new",
        {"kind": "Calculator", "name": "calc-9", "field.ip_address": "10.0.0.9", "field.port": "x"},
    )
    assert wrong_port.status == 400
    assert text_of(wrong_port.text, "error-field.port") == "&#39;x&#39; is not a whole number"
    # Not an IP address: the broker's field violation, beside the field.
    wrong_ip = visitor.post(
        "/resources/new", {"kind": "Calculator", "name": "calc-9", "field.ip_address": "300.1.2.3"}
    )
    assert wrong_ip.status == 400
    assert "is not an IPv4 or IPv6 address" in text_of(wrong_ip.text, "error-field.ip_address")
    assert 'value="300.1.2.3"' in wrong_ip.text  # what was typed is kept
    with pytest.raises(Exception, match="not found"):
        client.get_resource("calc-9")
    added = visitor.post(
        "/resources/new",
        {
            "kind": "Calculator",
            "name": "calc-9",
            "field.ip_address": "10.0.0.9",
            "comment": "rack 2",
        },
    )
    assert (added.status, added.location) == (303, "/resources/calc-9")
    made = client.get_resource("calc-9")
    assert (made.fields["ip_address"].string_value, made.comment) == ("10.0.0.9", "rack 2")
    page = visitor.get("/resources/calc-9")
    assert '<dd data-field="ip_address">10.0.0.9</dd>' in page.text
    assert "resource created" in page.text


def test_an_edit_changes_only_what_the_form_holds(console, client):
    client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1", "port": 7})
    visitor = Visitor(console.web_address)
    form = visitor.get("/resources/calc/edit")
    assert 'value="10.0.0.1"' in form.text and 'value="7"' in form.text
    saved = visitor.post(
        "/resources/calc/edit",
        {"kind": "Calculator", "name": "calc", "field.ip_address": "10.0.0.2", "field.port": "8"},
    )
    assert saved.status == 303
    changed = client.get_resource("calc")
    assert (changed.fields["ip_address"].string_value, changed.fields["port"].int_value) == (
        "10.0.0.2",
        8,
    )


def test_admin_actions_take_out_of_service_reserve_and_revoke(console, client):
    client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    visitor = Visitor(console.web_address)
    visitor.get("/resources/calc")
    out = visitor.post("/resources/calc/out-of-service", {"reason": "fan is loud"})
    assert out.status == 303
    assert client.get_resource("calc").service_reason == "fan is loud"
    assert visitor.post("/resources/calc/return-to-service", {}).status == 303
    assert client.get_resource("calc").is_usable
    reserved = visitor.post(
        "/resources/calc/reserve",
        {"reserved_for": "bob", "reserved_until": "2099-01-01T10:00", "reason": "demo"},
    )
    assert reserved.status == 303
    item = client.get_resource("calc")
    assert (item.reserved_for, item.reservation_reason) == ("bob", "demo")
    assert item.reserved_until.seconds == 4070944800
    visitor.post("/resources/calc/unreserve", {})
    assert client.get_resource("calc").reserved_for == ""
    held, _ = client.acquire([lease_pb2.Requirement(kind="Calculator")], ttl=60)
    page = visitor.get("/resources/calc")
    assert text_of(page.text, "holder") == "alice@bench-3"
    assert held.lease_id in page.text
    # A revoke needs a reason: the broker's refusal shows on the page.
    refused = visitor.post(f"/leases/{held.lease_id}/revoke", {"reason": "", "resource": "calc"})
    assert refused.status == 400 and "reason" in text_of(refused.text, "action-error")
    revoked = visitor.post(
        f"/leases/{held.lease_id}/revoke", {"reason": "bench rewired", "resource": "calc"}
    )
    assert (revoked.status, revoked.location) == (303, "/resources/calc")
    lease = client.get_lease(held.lease_id)
    assert (lease.state, lease.end_reason) == (lease_pb2.LEASE_STATE_REVOKED, "bench rewired")
    assert visitor.post("/resources/calc/delete", {}).status == 303
    assert rows_of(visitor.get("/").text, "Calculator") == []


def test_leases_and_queue_pages_show_holders_and_waiters(console, client):
    client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    held, _ = client.acquire([lease_pb2.Requirement(kind="Calculator")], ttl=60)
    visitor = Visitor(console.web_address)
    leases = visitor.get("/leases")
    assert f'data-lease="{held.lease_id}"' in leases.text
    assert "alice@bench-3" in leases.text
    queue = visitor.get("/queue")
    assert "Nobody waits" in queue.text
    events = visitor.get("/events?type=EVENT_TYPE_LEASE_GRANTED")
    assert "<td>lease granted</td>" in events.text
    assert "<td>resource created</td>" not in events.text


def test_forms_need_the_csrf_token_and_the_sites_own_origin(console, client):
    client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    visitor = Visitor(console.web_address)
    visitor.get("/resources/calc")
    for answer in (
        visitor.post("/resources/calc/out-of-service", {"reason": "x"}, csrf=False),
        visitor.post(
            "/resources/calc/out-of-service", {"reason": "x"}, origin="http://evil.example"
        ),
        Visitor(console.web_address).post(
            "/resources/calc/out-of-service", {"reason": "x", "csrf": "guess"}, csrf=False
        ),
    ):
        assert answer.status == 403
        assert re.search("CSRF token|another site", text_of(answer.text, "refusal"))
    assert client.get_resource("calc").is_usable


def test_with_authentication_off_only_loopback_host_names_are_served(console):
    visitor = Visitor(console.web_address)
    page = visitor.request("GET", "/", headers={"Host": "attacker.example:8080"})
    assert page.status == 403
    assert "not a loopback name" in text_of(page.text, "refusal")


def test_pages_answer_with_headers_that_keep_other_sites_out(console):
    page = Visitor(console.web_address).get("/")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "HttpOnly" in page.cookie("broker_csrf") and "SameSite=Strict" in page.cookie(
        "broker_csrf"
    )


def test_with_authentication_on_a_visitor_signs_in_with_a_token(auth_console):
    server, tokens = auth_console
    visitor = Visitor(server.web_address)
    first = visitor.get("/")
    assert (first.status, first.location) == (303, "/login")
    refused = visitor.login("rbk_" + "x" * 43)
    assert refused.status == 401
    assert "The broker refused this token" in text_of(refused.text, "login-error")
    signed_in = visitor.login(tokens["admin"])
    assert (signed_in.status, signed_in.location) == (303, "/")
    cookie = signed_in.cookie("broker_session")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    page = visitor.get("/")
    assert page.status == 200 and 'id="add-resource"' in page.text
    assert text_of(page.text, "visitor") == "admin · admin"
    out = visitor.post("/logout", {})
    assert (out.status, out.location) == (303, "/login")
    assert visitor.get("/").status == 303


def test_a_viewer_sees_no_controls_and_a_forged_post_is_refused_by_the_broker(auth_console):
    server, tokens = auth_console
    admin = Visitor(server.web_address)
    admin.login(tokens["admin"])
    admin.post(
        "/resources/new", {"kind": "Calculator", "name": "calc", "field.ip_address": "10.0.0.1"}
    )
    viewer = Visitor(server.web_address)
    viewer.login(tokens["viewer"])
    page = viewer.get("/resources/calc")
    assert page.status == 200 and text_of(page.text, "visitor") == "viewer · viewer"
    assert 'id="admin-actions"' not in page.text and "/out-of-service" not in page.text
    assert 'id="add-resource"' not in viewer.get("/").text
    # The viewer's own CSRF token, so only the role stands in the way.
    forged = viewer.post("/resources/calc/out-of-service", {"reason": "mine now"})
    assert forged.status == 403
    assert "needs admin" in text_of(forged.text, "action-error")
    still = admin.get("/resources/calc")
    assert 'data-when="usable"' in still.text and "mine now" not in still.text


def test_revoking_the_token_ends_the_session(auth_console):
    server, _ = auth_console
    made = Tokens().create("erin", "admin")[1]
    visitor = Visitor(server.web_address)
    visitor.login(made)
    assert visitor.get("/").status == 200
    Tokens().revoke("erin")
    ended = wait_until(
        lambda: (a := visitor.get("/")).status == 303 and a,
        CACHE_SECONDS * 20,
        "the revoked token's session to end",
    )
    assert ended.location == "/login?ended=1"
    assert "broker_session" not in visitor.cookies
    assert "no longer accepts" in text_of(visitor.get("/login?ended=1").text, "login-error")
