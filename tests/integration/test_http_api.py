"""The contract over HTTP/JSON, on both backends: the routes the `.proto`
declares, the proto JSON mapping both ways, and the same table of codes,
authorisation and bad input as gRPC, as `google.rpc.Status` bodies."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.rpc import status_pb2
from grpc_status import rpc_status

from broker.api.server import build_server
from broker.config import AuthConfig, WebConfig
from broker.v1 import inventory_service_pb2, lease_service_pb2
from broker.web.gateway import HTTP_STATUS, routes
from tests.conftest import wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
from tests.integration.helpers import wait_until

CALC = {
    "name": "calc1",
    "kind": "Calculator",
    "fields": {"ip_address": {"stringValue": "10.0.0.1"}},
}
ACQUIRE = {"requirements": [{"kind": "Calculator"}], "ttl": "30s", "holder": "alice"}


class Http:
    """Calls one broker's HTTP site and reads JSON answers."""

    def __init__(self, address: str, token: str | None = None):
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.token = token

    def call(self, verb: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if verb in ("POST", "PATCH"):
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(verb, path, body=data, headers=sent)
            answer = connection.getresponse()
            text = answer.read().decode()
            is_json = (answer.getheader("Content-Type") or "").startswith("application/json")
            return answer.status, json.loads(text) if is_json else text, answer
        finally:
            connection.close()


def start(config, **changes):
    server = build_server(
        dataclasses.replace(config, base_dir=".", web=WebConfig("127.0.0.1:0"), **changes),
        "127.0.0.1:0",
    )
    server.start()
    wait_serving(server.address)
    return server


@pytest.fixture
def site(config):
    server = start(config)
    yield server, Http(server.web_address)
    server.stop(0)


@pytest.fixture
def auth_site(config):
    server = start(config, auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS))
    yield server, make_tokens()
    server.stop(0)


def test_every_unary_method_but_sessions_has_a_route_and_routes_are_unique():
    declared = {route.method.name: route for route in routes()}
    unary = {
        method.name
        for module in (inventory_service_pb2, lease_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if not method.server_streaming and not method.client_streaming
    }
    assert unary - set(declared) == set()
    assert "OpenSession" not in declared and "WatchEvents" in declared
    shapes = [(route.verb, route.path) for route in routes()]
    assert len(shapes) == len(set(shapes))


def test_a_lease_from_create_to_release_over_http(site):
    _, web = site
    status, created, _ = web.call("POST", "/v1/resources", CALC)
    assert status == 200 and created["resource"]["name"] == "calc1"
    status, listed, _ = web.call("GET", "/v1/resources?kind=Calculator")
    assert [r["name"] for r in listed["resources"]] == ["calc1"]
    assert listed["nextPageToken"] == ""  # fields without presence are always there
    status, granted, _ = web.call("POST", "/v1/leases", ACQUIRE)
    assert status == 200
    lease_id, secret = granted["lease"]["leaseId"], granted["secret"]
    assert granted["lease"]["grants"][0]["resource"]["name"] == "calc1"
    status, read, _ = web.call("GET", f"/v1/leases/{lease_id}")
    assert status == 200 and read["lease"]["holder"] == "alice" and "secret" not in read
    status, renewed, _ = web.call("POST", f"/v1/leases/{lease_id}:renew", {"secret": secret})
    assert status == 200 and renewed["lease"]["leaseId"] == lease_id
    status, _, _ = web.call("POST", f"/v1/leases/{lease_id}:release", {"secret": "wrong"})
    assert status == 403
    status, released, _ = web.call("POST", f"/v1/leases/{lease_id}:release", {"secret": secret})
    assert status == 200 and released["lease"]["state"] == "LEASE_STATE_RELEASED"
    status, events, _ = web.call("GET", "/v1/events?filter.types=EVENT_TYPE_LEASE_GRANTED")
    assert [e["resource"] for e in events["events"]] == ["calc1"]


def test_the_proto_field_names_are_taken_as_well_as_the_json_names(site):
    _, web = site
    web.call("POST", "/v1/resources", CALC)
    body = {"requirements": [{"kind": "Calculator"}], "max_wait": "0s", "holder": "bob"}
    status, granted, _ = web.call("POST", "/v1/leases", body)
    assert status == 200 and granted["lease"]["holder"] == "bob"
    status, listed, _ = web.call("GET", "/v1/leases?holder=bob&page_size=5")
    assert status == 200 and [lease["holder"] for lease in listed["leases"]] == ["bob"]


def test_update_takes_the_name_from_the_path_and_refuses_a_different_one(site):
    _, web = site
    web.call("POST", "/v1/resources", CALC)
    change = {
        "resource": {"fields": {"ip_address": {"stringValue": "10.0.0.9"}}},
        "updateMask": "fields.ipAddress",  # the JSON form of a FieldMask
    }
    status, updated, _ = web.call("PATCH", "/v1/resources/calc1", change)
    assert status == 200, updated
    assert updated["resource"]["fields"]["ip_address"] == {"stringValue": "10.0.0.9"}
    change["resource"]["name"] = "calc2"
    status, refused, _ = web.call("PATCH", "/v1/resources/calc1", change)
    assert status == 400 and "calc2" in refused["message"]


NO_LEASE = "00000000-0000-0000-0000-000000000000"
# The same cases as gRPC's error table: the HTTP call, and the gRPC method
# with the request it stands for.
ERROR_CASES = [
    ("GET", "/v1/resources/nosuch", None, "InventoryService/GetResource", {"name": "nosuch"}),
    ("POST", "/v1/resources", CALC, "InventoryService/CreateResource", {"resource": CALC}),
    (
        "POST",
        "/v1/resources",
        {"name": "c2", "kind": "Calculator"},
        "InventoryService/CreateResource",
        {"resource": {"name": "c2", "kind": "Calculator"}},
    ),
    (
        "POST",
        "/v1/leases",
        {"requirements": [{"kind": "NoSuchKind"}]},
        "LeaseService/AcquireLease",
        {"requirements": [{"kind": "NoSuchKind"}]},
    ),
    ("POST", "/v1/leases", ACQUIRE, "LeaseService/AcquireLease", ACQUIRE),
    (
        "POST",
        f"/v1/leases/{NO_LEASE}:renew",
        {"secret": "x"},
        "LeaseService/RenewLease",
        {"leaseId": NO_LEASE, "secret": "x"},
    ),
    (
        "POST",
        "/v1/resources/calc1:setOutOfService",
        {},
        "InventoryService/SetOutOfService",
        {"name": "calc1"},
    ),
    ("DELETE", "/v1/resources/calc1", None, "InventoryService/DeleteResource", {"name": "calc1"}),
]


@pytest.mark.parametrize(("verb", "path", "body", "method", "grpc_request"), ERROR_CASES)
def test_errors_are_the_grpc_status_with_its_http_status(
    site, verb, path, body, method, grpc_request
):
    server, web = site
    web.call("POST", "/v1/resources", CALC)
    web.call("POST", "/v1/leases", ACQUIRE)  # calc1 is held from here on
    status, answer, response = web.call(verb, path, body)
    assert response.getheader("Content-Type").startswith("application/json")
    # gRPC refuses the same request with the same code, message and details.
    expected = grpc_status(server.address, method, grpc_request)
    assert answer == json_format.MessageToDict(expected, always_print_fields_with_no_presence=True)
    assert expected.code != 0 and answer["message"]
    assert status == HTTP_STATUS[expected.code]


def grpc_status(address: str, method: str, request: dict) -> status_pb2.Status:
    """The `google.rpc.Status` a gRPC call of `method` gets."""
    service, name = method.split("/")
    descriptor = (
        {
            "InventoryService": inventory_service_pb2,
            "LeaseService": lease_service_pb2,
        }[service]
        .DESCRIPTOR.services_by_name[service]
        .methods_by_name[name]
    )
    message = message_factory.GetMessageClass(descriptor.input_type)()
    json_format.ParseDict(request, message)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/broker.v1.{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as raised:
            call(message, timeout=30)
    found = rpc_status.from_call(raised.value)
    assert found is not None
    return found


BAD_INPUT = [
    ("POST", "/v1/leases", b"not json", "is not JSON"),
    ("POST", "/v1/leases", b"[1, 2]", "must be a JSON object"),
    ("POST", "/v1/leases", b'{"requirements": 5}', "requirements"),
    ("POST", "/v1/leases", b'{"nosuch": 1}', "nosuch"),
    ("POST", "/v1/leases", b'{"ttl": "soon"}', "soon"),
    ("POST", "/v1/leases", b"\xff\xfe", "UTF-8"),
    ("GET", "/v1/leases?state=NOT_A_STATE", None, "NOT_A_STATE"),
    ("GET", "/v1/leases?nosuch=1", None, "nosuch"),
    ("GET", "/v1/kinds", b'{"a": 1}', "takes no body"),
    ("GET", "/v1/events?filter=x", None, "body"),
    ("GET", "/v1/leases?holder=a&holder=b", None, "twice"),
]


@pytest.mark.parametrize(("verb", "path", "raw", "named"), BAD_INPUT)
def test_bad_input_is_invalid_argument_naming_what_was_wrong(site, verb, path, raw, named):
    _, web = site
    status, answer, _ = web.call(verb, path, raw=raw)
    assert status == 400 and answer["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert named in answer["message"], answer["message"]
    assert answer["details"][0]["@type"].endswith("google.rpc.BadRequest")
    # Nothing changed, and the broker still serves.
    assert web.call("GET", "/v1/leases")[1]["leases"] == []
    assert web.call("GET", "/healthz")[0] == 200


def test_unknown_routes_wrong_verbs_and_big_bodies_answer_a_status(site):
    _, web = site
    status, answer, _ = web.call("GET", "/v1/nosuch")
    assert status == 404 and answer["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "GET /v1/nosuch" in answer["message"]
    status, answer, _ = web.call("PUT", "/v1/kinds")
    assert status == 405 and "takes GET" in answer["message"]
    status, answer, _ = web.call("POST", "/v1/leases", raw=b"{" + b" " * (2 << 20) + b"}")
    assert status == 413 and answer["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_a_page_of_another_site_cannot_post_or_rebind_a_name(site):
    """A form or `fetch` without preflight sends text/plain or a form type;
    a DNS-rebinding page sends its own name as Host."""
    _, web = site
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        status, answer, _ = web.call(
            "POST", "/v1/resources", CALC, headers={"Content-Type": content_type}
        )
        assert status == 415 and "application/json" in answer["message"]
    status, answer, _ = web.call("GET", "/v1/kinds", headers={"Host": "evil.example:8080"})
    assert status == 403 and "evil.example" in answer["message"]
    assert web.call("GET", "/v1/resources")[1]["resources"] == []
    assert web.call("GET", "/v1/kinds", headers={"Host": "localhost"})[0] == 200


def test_authentication_and_roles_are_those_of_grpc(auth_site):
    server, tokens = auth_site
    anonymous = Http(server.web_address)
    # With authentication on, a name other than loopback is fine.
    status, answer, response = anonymous.call(
        "GET", "/v1/kinds", headers={"Host": "broker.lab.example"}
    )
    assert status == 401 and answer["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert response.getheader("WWW-Authenticate").startswith("Bearer")
    assert "needs a token" in answer["message"]
    for refused in ("bad token", "expired token", "revoked token"):
        status, _, _ = Http(server.web_address, tokens[refused]).call("GET", "/v1/kinds")
        assert status == 401, refused
    viewer = Http(server.web_address, tokens["viewer"])
    assert viewer.call("GET", "/v1/kinds")[0] == 200
    status, answer, _ = viewer.call("POST", "/v1/resources", CALC)
    assert status == 403 and "viewer" in answer["message"]
    admin = Http(server.web_address, tokens["admin"])
    assert admin.call("POST", "/v1/resources", CALC)[0] == 200
    alice = Http(server.web_address, tokens["alice"])
    status, granted, _ = alice.call("POST", "/v1/leases", ACQUIRE)
    assert status == 200 and granted["lease"]["principal"] == "alice"
    lease_id, secret = granted["lease"]["leaseId"], granted["secret"]
    # Another user with the secret is still not the holder; a user may not revoke.
    bob = Http(server.web_address, tokens["bob"])
    status, _, _ = bob.call("POST", f"/v1/leases/{lease_id}:release", {"secret": secret})
    assert status == 403
    status, _, _ = alice.call("POST", f"/v1/leases/{lease_id}:revoke", {"reason": "mine"})
    assert status == 403
    status, revoked, _ = admin.call("POST", f"/v1/leases/{lease_id}:revoke", {"reason": "fw"})
    assert status == 200 and revoked["lease"]["state"] == "LEASE_STATE_REVOKED"


def test_an_acquire_waits_its_turn_and_is_granted_on_release(site):
    _, web = site
    web.call("POST", "/v1/resources", CALC)
    _, first, _ = web.call("POST", "/v1/leases", ACQUIRE)
    waiting = http.client.HTTPConnection(web.host, web.port, timeout=30)
    waiting.request(
        "POST",
        "/v1/leases",
        json.dumps({**ACQUIRE, "maxWait": "20s"}),
        {"Content-Type": "application/json"},
    )
    wait_until(lambda: len(web.call("GET", "/v1/waiters")[1]["waiters"]) == 1, 20, "a waiter")
    lease = first["lease"]["leaseId"]
    web.call("POST", f"/v1/leases/{lease}:release", {"secret": first["secret"]})
    answer = waiting.getresponse()
    granted = json.loads(answer.read())
    waiting.close()
    assert answer.status == 200 and granted["lease"]["grants"][0]["resource"]["name"] == "calc1"


def test_a_caller_that_hangs_up_leaves_the_queue(site):
    _, web = site
    web.call("POST", "/v1/resources", CALC)
    web.call("POST", "/v1/leases", ACQUIRE)
    waiting = socket.create_connection((web.host, web.port))
    body = json.dumps({**ACQUIRE, "maxWait": "60s"}).encode()
    waiting.sendall(
        b"POST /v1/leases HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: len(web.call("GET", "/v1/waiters")[1]["waiters"]) == 1, 20, "a waiter")
    waiting.close()
    wait_until(lambda: web.call("GET", "/v1/waiters")[1]["waiters"] == [], 20, "no waiter")


def test_watch_events_streams_newline_delimited_json(site):
    _, web = site
    web.call("POST", "/v1/resources", CALC)
    connection = http.client.HTTPConnection(web.host, web.port, timeout=30)
    connection.request("GET", "/v1/events:watch?filter.kind=Calculator")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/x-ndjson"
    first = json.loads(response.readline())
    assert first["result"]["event"]["type"] == "EVENT_TYPE_RESOURCE_CREATED"
    web.call("POST", "/v1/leases", ACQUIRE)
    second = json.loads(response.readline())
    assert second["result"]["event"]["type"] == "EVENT_TYPE_LEASE_GRANTED"
    connection.close()
    status, answer, _ = web.call("GET", "/v1/events:watch?filter.types=NOPE")
    assert status == 400 and "NOPE" in answer["message"]
