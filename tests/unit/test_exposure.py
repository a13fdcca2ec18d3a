"""Safe defaults: without authentication only loopback addresses; with it,
a non-loopback address only with TLS, or with `server.allow_insecure`,
warned about."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from broker.api.exposure import check_exposure, is_loopback
from broker.config import AuthConfig, Config, ConfigError, ServerConfig, TlsConfig, WebConfig

# A documentation address (RFC 5737): never bound by these tests.
EXPOSED = "192.0.2.1:50051"


def config_with(auth: bool = False, allow_insecure: bool = False, tls: bool = False) -> Config:
    server = ServerConfig(
        allow_insecure=allow_insecure,
        tls=TlsConfig("/etc/broker/cert.pem", "/etc/broker/key.pem") if tls else TlsConfig(),
    )
    return Config(server=server, auth=AuthConfig(enabled=auth))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:0", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (EXPOSED, False),
        ("lab-broker.example:50051", False),
    ],
)
def test_only_this_machine_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_loopback_needs_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        check_exposure(config_with(), "127.0.0.1:50051")
        check_exposure(config_with(auth=True), "127.0.0.1:50051")
    assert not caplog.records


def test_without_auth_a_network_address_is_refused_saying_how_to_turn_auth_on():
    with pytest.raises(ConfigError) as raised:
        check_exposure(config_with(allow_insecure=True), EXPOSED)
    assert raised.value.key == "server.address"
    assert "auth" in str(raised.value) and "broker tokens create admin" in str(raised.value)


def test_with_auth_a_network_address_needs_tls_or_allow_insecure():
    with pytest.raises(ConfigError) as raised:
        check_exposure(config_with(auth=True), EXPOSED)
    assert raised.value.key == "server.address"
    message = str(raised.value)
    assert "server.tls" in message and "server.allow_insecure" in message


def test_with_auth_and_tls_a_network_address_is_served_without_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="broker"):
        check_exposure(config_with(auth=True, tls=True), EXPOSED)
    assert not caplog.records


def test_tls_without_auth_still_keeps_to_loopback():
    with pytest.raises(ConfigError) as raised:
        check_exposure(config_with(tls=True), EXPOSED)
    assert "authentication is off" in str(raised.value)


def test_allow_insecure_is_warned_about_at_every_start(caplog):
    config = config_with(auth=True, allow_insecure=True)
    with caplog.at_level(logging.WARNING, logger="broker"):
        check_exposure(config, EXPOSED)
        check_exposure(dataclasses.replace(config), EXPOSED)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "clear text" in warnings[0].getMessage()


def test_the_http_site_keeps_to_loopback_without_auth_and_needs_allow_insecure_with_it(caplog):
    """It carries the whole contract, with no TLS of its own."""
    exposed_web = WebConfig(address="192.0.2.1:8080")
    with pytest.raises(ConfigError) as raised:
        check_exposure(dataclasses.replace(config_with(), web=exposed_web), "127.0.0.1:50051")
    assert raised.value.key == "web.address" and "authentication is off" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        check_exposure(
            dataclasses.replace(config_with(auth=True, tls=True), web=exposed_web), EXPOSED
        )
    assert raised.value.key == "web.address" and "server.allow_insecure" in str(raised.value)
    insecure = dataclasses.replace(config_with(auth=True, allow_insecure=True), web=exposed_web)
    with caplog.at_level(logging.WARNING, logger="broker"):
        check_exposure(insecure, "127.0.0.1:50051")
    assert "web.address" in caplog.records[-1].getMessage()


def test_a_site_of_metrics_alone_may_be_anywhere():
    metrics_only = WebConfig(address="", metrics_address="0.0.0.0:9100")
    check_exposure(dataclasses.replace(config_with(), web=metrics_only), "127.0.0.1:50051")
