"""The broker's HTTP endpoints, on both backends: `/healthz`, `/readyz`, and
Prometheus metrics that change as a scripted run goes, with label sets the
configuration bounds, whoever calls."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import peewee
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.api.server import build_server
from broker.config import ConfigError, WebConfig, load_config, parse_config
from broker.domain import races
from broker.domain.errors import ConflictError
from broker.field_values import to_field_value
from broker.v1 import lease_pb2
from sdk import BrokerClient, NotFoundError
from tests.conftest import make_config, wait_serving
from tests.integration.helpers import run_serve, write_config

LEASE_METHOD = "/broker.v1.LeaseService/AcquireLease"


@pytest.fixture
def web_broker(config):
    server = build_server(
        dataclasses.replace(config, base_dir=".", web=WebConfig("127.0.0.1:0")), "127.0.0.1:0"
    )
    server.start()
    wait_serving(server.address)
    yield server
    server.stop(0)


def is_sqlite(broker) -> bool:
    return isinstance(broker.database, peewee.SqliteDatabase)


def calculator(name: str) -> lease_pb2.Requirement:
    return lease_pb2.Requirement(
        kind="Calculator",
        constraints=[lease_pb2.Constraint(field="name", equals=to_field_value(name))],
    )


def get(broker, path: str, address: str = "") -> tuple[int, str]:
    address = address or (broker.metrics_address if path == "/metrics" else broker.web_address)
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(broker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(broker, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_and_readiness(web_broker):
    assert get(web_broker, "/healthz") == (200, "ok\n")
    assert get(web_broker, "/readyz") == (200, "ready\n")
    assert get(web_broker, "/nothing")[0] == 404


def test_readiness_follows_the_database(tmp_path):
    """On SQLite the probe reads the database file: gone, the broker is
    alive but not ready; back, it is ready again."""
    config = dataclasses.replace(make_config(tmp_path), web=WebConfig("127.0.0.1:0"))
    server = build_server(config, "127.0.0.1:0")
    server.start()
    try:
        path = tmp_path / "broker.sqlite3"
        path.rename(tmp_path / "aside")
        assert get(server, "/readyz") == (503, "the database does not answer\n")
        assert get(server, "/healthz")[0] == 200
        (tmp_path / "aside").rename(path)
        assert get(server, "/readyz") == (200, "ready\n")
    finally:
        server.stop(0)


def test_metrics_follow_a_scripted_run(web_broker):
    with BrokerClient(web_broker.address, holder="tester@bench") as client:
        for name in ("calc1", "calc2"):
            client.create_resource("Calculator", name, {"ip_address": "127.0.0.1"})
        before = samples(web_broker)
        assert value(before, "broker_resources", kind="Calculator", state="free") == 2
        assert value(before, "broker_utilisation_ratio", kind="Calculator") == 0
        lease, secret = client.acquire([lease_pb2.Requirement(kind="Calculator")])
        during = samples(web_broker)
        assert value(during, "broker_grants_total", kind="Calculator") == 1
        assert value(during, "broker_resources", kind="Calculator", state="held") == 1
        assert value(during, "broker_utilisation_ratio", kind="Calculator") == 0.5
        ok = ("broker_rpc_duration_seconds_count", (("code", "OK"), ("method", LEASE_METHOD)))
        assert during[ok] == 1
        client.release(lease.lease_id, secret)
        after = samples(web_broker)
    assert value(after, "broker_releases_total", kind="Calculator") == 1
    assert value(after, "broker_resources", kind="Calculator", state="held") == 0
    assert value(after, "broker_queue_depth", kind="Calculator") == 0
    zero = {"kind": "Calculator", "le": "0.0"}
    assert value(after, "broker_grant_wait_seconds_bucket", **zero) == 1
    assert value(after, "broker_grant_wait_seconds_count", kind="Calculator") == 1
    # Creates, the acquire and the release wrote; the scrapes read.
    writes = value(after, "broker_database_call_seconds_count", access="write")
    assert writes - value(before, "broker_database_call_seconds_count", access="write") == 2
    assert value(after, "broker_database_call_seconds_count", access="read") > 0
    if is_sqlite(web_broker):
        assert value(after, "broker_group_commit_writes_total") >= writes
        assert value(after, "broker_group_commits_total") >= 1


def test_retries_are_counted_by_cause(web_broker):
    attempts: list[int] = []

    @races.retried
    def lost_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConflictError("taken first")
        return "done"

    before = value(samples(web_broker), "broker_transaction_retries_total", cause="conflict")
    assert lost_once() == "done"
    after = samples(web_broker)
    assert value(after, "broker_transaction_retries_total", cause="conflict") == before + 1
    assert ("broker_transaction_retries_total", (("cause", "escalation"),)) in after


def test_a_waiting_request_shows_in_the_queue_and_its_wait_is_measured(web_broker):
    with BrokerClient(web_broker.address, holder="tester@bench") as client:
        client.create_resource("Calculator", "calc1", {"ip_address": "127.0.0.1"})
        lease, secret = client.acquire([calculator("calc1")])
        waited: list = []
        waiter = threading.Thread(
            target=lambda: waited.append(client.acquire([calculator("calc1")], max_wait=60))
        )
        waiter.start()
        deadline = time.monotonic() + 30
        while value(samples(web_broker), "broker_queue_depth", kind="Calculator") != 1:
            assert time.monotonic() < deadline, "the request never showed in the queue"
        client.release(lease.lease_id, secret)
        waiter.join(timeout=60)
        assert waited, "the waiting request was not granted"
        found = samples(web_broker)
    assert value(found, "broker_queue_depth", kind="Calculator") == 0
    assert value(found, "broker_grant_wait_seconds_count", kind="Calculator") == 2
    # The first grant waited for nothing, the second for the release.
    zero = {"kind": "Calculator", "le": "0.0"}
    assert value(found, "broker_grant_wait_seconds_bucket", **zero) == 1
    assert value(found, "broker_grant_wait_seconds_sum", kind="Calculator") > 0


def test_label_values_are_bounded_by_the_configuration(web_broker):
    """Many holders, leases and resource names: none of them becomes a
    label; kinds are the configured ones, methods the contract's."""
    with BrokerClient(web_broker.address, holder="tester@bench") as admin:
        for index in range(5):
            admin.create_resource("Calculator", f"calc-{index}", {"ip_address": "127.0.0.1"})
    for index in range(5):
        with BrokerClient(web_broker.address, holder=f"holder-{index}") as client:
            lease, secret = client.acquire([calculator(f"calc-{index}")])
            client.release(lease.lease_id, secret)
    labels = {pair for _, pairs in samples(web_broker) for pair in pairs}
    kinds = {v for k, v in labels if k == "kind"}
    assert kinds == {"Calculator", "Phone", "Licence"}
    methods = {v for k, v in labels if k == "method"}
    assert all(re.fullmatch(r"/broker\.v1\.\w+Service/\w+", m) for m in methods), methods
    text = get(web_broker, "/metrics")[1]
    assert "holder-" not in text and "calc-" not in text


def serve_config(tmp_path, web: dict):
    """A configuration file for `broker serve` with this `web` section."""
    return write_config(
        tmp_path / "web.yml",
        {
            "database": {"url": f"sqlite:///{tmp_path / 'web.sqlite3'}"},
            "server": {"address": "127.0.0.1:0"},
            "web": web,
        },
    )


def test_serve_prints_where_metrics_are(start_broker, tmp_path, monkeypatch):
    monkeypatch.delenv("BROKER_WEB_ADDRESS")
    config = serve_config(tmp_path, {"address": "127.0.0.1:0"})
    process = start_broker("--config", str(config))
    process.wait_listening()
    console, line = process.next_line() or "", process.next_line() or ""
    found = re.fullmatch(r"metrics and health on http://(127\.0\.0\.1:\d+)/metrics", line)
    assert found, line
    assert console == f"console on http://{found.group(1)}/"
    with urllib.request.urlopen(f"http://{found.group(1)}/healthz", timeout=10) as answer:
        assert answer.read() == b"ok\n"
    with urllib.request.urlopen(f"http://{found.group(1)}/", timeout=10) as answer:
        assert b"<title>Inventory" in answer.read()


def test_serve_prints_both_sites_when_metrics_have_their_own(start_broker, tmp_path, monkeypatch):
    monkeypatch.delenv("BROKER_WEB_ADDRESS")
    config = serve_config(tmp_path, {"address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0"})
    process = start_broker("--config", str(config))
    process.wait_listening()
    lines = [process.next_line(), process.next_line(), process.next_line()]
    assert re.fullmatch(r"console on http://127\.0\.0\.1:\d+/", lines[0] or ""), lines
    assert re.fullmatch(r"health on http://127\.0\.0\.1:\d+/healthz", lines[1] or ""), lines
    assert re.fullmatch(r"metrics on http://127\.0\.0\.1:\d+/metrics", lines[2] or ""), lines


def test_a_web_address_in_use_stops_the_broker_with_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("BROKER_WEB_ADDRESS")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = serve_config(tmp_path, {"address": address})
        result = run_serve("--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {address} (web.address)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_web_address_must_be_host_and_port():
    with pytest.raises(ConfigError, match=re.escape("web.address: 'localhost' is not HOST:PORT")):
        parse_config({"web": {"address": "localhost"}})


def test_the_readme_lists_every_metric_the_broker_serves(web_broker):
    from tests.sdk.test_readme_snippets import section

    text = section("Metrics and health")
    listed = set(re.findall(r"`(broker_[a-z_]+)`", text))
    served = {
        family.name
        for family in text_string_to_metric_families(get(web_broker, "/metrics")[1])
        if family.name.startswith("broker_")
    }
    # prometheus-client names a counter's family without `_total`.
    documented = {name.removesuffix("_total") for name in listed}
    if not is_sqlite(web_broker):
        # SQLite's writer only.
        documented -= {"broker_group_commits", "broker_group_commit_writes"}
    assert documented == served


def test_a_refused_call_is_timed_under_its_code(web_broker):
    with (
        BrokerClient(web_broker.address, holder="tester@bench") as client,
        pytest.raises(NotFoundError),
    ):
        client.get_resource("nothing-here")
    found = samples(web_broker)
    refused = (
        "broker_rpc_duration_seconds_count",
        (("code", "NOT_FOUND"), ("method", "/broker.v1.InventoryService/GetResource")),
    )
    assert found[refused] == 1


def test_the_web_address_defaults_to_port_8080_and_an_empty_override_turns_it_off():
    assert load_config(None, environ={}).web.address == "127.0.0.1:8080"
    assert load_config(None, environ={"BROKER_WEB_ADDRESS": ""}).web.address == ""
    moved = load_config(None, environ={"BROKER_WEB_ADDRESS": "127.0.0.1:9100"})
    assert moved.web.address == "127.0.0.1:9100"


def test_metrics_on_an_address_of_their_own(config):
    web = WebConfig("127.0.0.1:0", metrics_address="127.0.0.1:0")
    server = build_server(dataclasses.replace(config, base_dir=".", web=web), "127.0.0.1:0")
    server.start()
    try:
        assert server.metrics_address != server.web_address
        assert get(server, "/metrics")[0] == 200
        assert get(server, "/metrics", server.web_address)[0] == 404
        assert get(server, "/healthz")[0] == 200
        assert get(server, "/healthz", server.metrics_address)[0] == 404
    finally:
        server.stop(0)


def test_metrics_alone(config):
    web = WebConfig("", metrics_address="127.0.0.1:0")
    server = build_server(dataclasses.replace(config, base_dir=".", web=web), "127.0.0.1:0")
    server.start()
    try:
        assert server.web_address == ""
        assert get(server, "/metrics")[0] == 200
    finally:
        server.stop(0)
