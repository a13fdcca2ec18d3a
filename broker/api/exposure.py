"""Who can reach the broker: the start-up check of `server.address`
against authentication, made before anything binds.

Without authentication anyone who reaches the port may act as anyone, so
the broker listens only on loopback addresses. With it, a non-loopback
address also needs TLS (`server.tls`), else tokens would cross the network
in clear text; `server.allow_insecure: true` accepts that, and is logged as
a warning at every start. The same holds for the HTTP site
(`web.address`), which carries the whole contract and has no TLS of its
own; a site serving only metrics (`web.metrics_address`) may be anywhere.
"""

from __future__ import annotations

import ipaddress
import logging

from broker.config import Config, ConfigError

log = logging.getLogger("broker")

FIRST_TOKEN = "broker tokens create admin --role admin --config rotest.yml"


def is_loopback(address: str) -> bool:
    """Whether `HOST:PORT` names only this machine (127.0.0.0/8, ::1 or
    localhost); a wildcard or any other name is not."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config, address: str) -> None:
    """Refuses (`ConfigError` naming the key) to serve a non-loopback gRPC
    or HTTP address without authentication, or with it but without TLS
    unless `server.allow_insecure`; warns when that is allowed."""
    _check(config, "server.address", address, config.server.tls.enabled)
    if config.web.address:
        _check(config, "web.address", config.web.address, tls=False)


def _check(config: Config, key: str, address: str, tls: bool) -> None:
    if is_loopback(address):
        return
    if not config.auth.enabled:
        raise ConfigError(
            key,
            f"{address} is not a loopback address, and authentication is off, so anyone "
            "who reaches it could act as anyone: turn it on (`auth: {enabled: true}` in "
            f"rotest.yml, after making the first token with `{FIRST_TOKEN}`), or listen on "
            "127.0.0.1",
        )
    if tls:
        return
    remedy = (
        "give the server a certificate (`server.tls: {cert_file: ..., key_file: ...}`), "
        if key == "server.address"
        else "put it behind a TLS-terminating proxy on 127.0.0.1, "
    )
    if not config.server.allow_insecure:
        raise ConfigError(
            key,
            f"{address} is not a loopback address, and TLS is off, so tokens would cross "
            f"the network in clear text: {remedy}set `server.allow_insecure: true` to "
            "accept clear text on a network you trust, or listen on 127.0.0.1",
        )
    log.warning(
        "server.allow_insecure is set: tokens reach %s (%s) in clear text (no TLS); anyone "
        "who can watch the network can take them",
        address,
        key,
    )
