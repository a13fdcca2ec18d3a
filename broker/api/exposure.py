"""Who can reach the broker: the start-up check of `server.address`
against authentication, made before anything binds.

Without authentication anyone who reaches the port may act as anyone, so
the broker listens only on loopback addresses. With it, a non-loopback
address also needs TLS (`server.tls`), else tokens would cross the network
in clear text; `server.allow_insecure: true` accepts that, and is logged as
a warning at every start.
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
    """Refuses (`ConfigError` on `server.address`) to serve a non-loopback
    address without authentication, or with it but without TLS unless
    `server.allow_insecure`; warns when that is allowed."""
    if is_loopback(address):
        return
    if not config.auth.enabled:
        raise ConfigError(
            "server.address",
            f"{address} is not a loopback address, and authentication is off, so anyone "
            "who reaches it could act as anyone: turn it on (`auth: {enabled: true}` in "
            f"rotest.yml, after making the first token with `{FIRST_TOKEN}`), or listen on "
            "127.0.0.1",
        )
    if config.server.tls.enabled:
        return
    if not config.server.allow_insecure:
        raise ConfigError(
            "server.address",
            f"{address} is not a loopback address, and TLS is off, so tokens would cross "
            "the network in clear text: give the server a certificate (`server.tls: "
            "{cert_file: ..., key_file: ...}`), set `server.allow_insecure: true` to accept "
            "clear text on a network you trust, or listen on 127.0.0.1",
        )
    log.warning(
        "server.allow_insecure is set: tokens reach %s in clear text (no TLS); anyone who "
        "can watch the network can take them",
        address,
    )
