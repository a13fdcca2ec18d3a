"""The SDK's gRPC channels to the brokers, with explicit HTTP/2 keep-alive.

A client may be given one broker, `host:port`, or several sharing one
database, `host:port,host:port`; it opens one channel per address, each
only when first used (`sdk.brokers.Brokers` chooses which one serves a
call).

A client may keep a call open for minutes without sending a byte: an acquire
waiting in the queue, a session stream between two keep-alives. Without
pings, a broker that vanished or a connection that a NAT or firewall dropped
silently is noticed only when the call's deadline passes; with them, the call
fails with UNAVAILABLE within seconds and the SDK can retry or report the
session lost. The broker accepts pings every 5 s or more, idle or not
(`SERVER_OPTIONS` in `broker/api/server.py`); pinging more often would make
it answer GOAWAY (`too_many_pings`) and drop the connection.

With TLS (`TlsOptions`), the channel checks the broker's certificate against
a CA file or the system's roots, may show a client certificate (mutual
TLS), and sends the token as gRPC call credentials; without it, the token
travels as plain metadata, for a broker on loopback.
"""

from __future__ import annotations

import collections
import dataclasses

import grpc

from sdk.config import ClientConfig

# Ping the broker after 10 s without any frame on the connection: twice the
# broker's minimum ping interval of 5 s, so pings are never refused.
KEEPALIVE_TIME_MS = 10_000
# Declare the connection dead when a ping is not answered within 5 s: the open
# calls fail with UNAVAILABLE instead of hanging until their deadline.
KEEPALIVE_TIMEOUT_MS = 5_000
# Ping even while no call is open, so an idle client keeps a live connection
# and learns at once when the broker is gone (the broker permits it too).
KEEPALIVE_PERMIT_WITHOUT_CALLS = 1
# No cap on the pings sent while no data frame goes out: a long wait in the
# queue or a quiet session stream sends no data, yet must stay watched. (The
# default, 2, would stop pinging after two pings on a silent connection.)
MAX_PINGS_WITHOUT_DATA = 0

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", KEEPALIVE_PERMIT_WITHOUT_CALLS),
    ("grpc.http2.max_pings_without_data", MAX_PINGS_WITHOUT_DATA),
)


def addresses_of(address: str) -> tuple[str, ...]:
    """The brokers named by `address`, in the order they are tried: one
    `host:port`, or several separated by commas. An empty entry is a
    `ValueError` naming the address."""
    addresses = tuple(part.strip() for part in address.split(","))
    if not all(addresses):
        raise ValueError(
            f"broker address {address!r} has an empty entry: "
            "give host:port, or several as host:port,host:port"
        )
    return addresses


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    """TLS to the broker. `ca_file`: the PEM file of the CA that signed the
    broker's certificate ("": the system's roots); `cert_file` and
    `key_file`: this client's certificate and key, for a broker asking for
    one (mutual TLS); `server_name`: the name to expect in the broker's
    certificate instead of the address's host. The files are read once,
    when the options are made (a `ValueError` naming one that cannot be)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    _pem: tuple[bytes | None, ...] = dataclasses.field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs its key: give cert_file and key_file")
        pem = tuple(_read(path) for path in (self.ca_file, self.key_file, self.cert_file))
        object.__setattr__(self, "_pem", pem)

    def credentials(self) -> grpc.ChannelCredentials:
        root_certificates, private_key, certificate_chain = self._pem
        return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def tls_options(tls: bool | TlsOptions) -> TlsOptions | None:
    """`BrokerClient`'s `tls=`: True is TLS with the system's roots, False
    plain TCP."""
    if isinstance(tls, bool):
        return TlsOptions() if tls else None
    if isinstance(tls, TlsOptions):
        return tls
    raise TypeError(f"tls is True, False, None or a TlsOptions, not {tls!r}")


def configured_tls(config: ClientConfig) -> TlsOptions | None:
    """The TLS options a client configuration gives: its files make TLS, as
    `client.tls: true` does with the system's roots; None is plain TCP."""
    if not (config.tls or config.ca_file or config.cert_file or config.key_file):
        return None
    return TlsOptions(config.ca_file, config.cert_file, config.key_file)


def _read(path: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ValueError(f"cannot read the TLS file {path}: {error.strerror}") from error


def open_channel(address: str, token: str = "", tls: TlsOptions | None = None) -> grpc.Channel:
    """A channel to the one broker at `address` (`host:port`) with
    `CHANNEL_OPTIONS`: plain TCP, or TLS with `tls`. With a `token`, every
    call on it carries the metadata `authorization: Bearer <token>`."""
    if tls is None:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
    credentials = tls.credentials()
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    options: tuple[tuple[str, int | str], ...] = CHANNEL_OPTIONS
    if tls.server_name:
        options = (*options, ("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address, credentials, options=options)


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A call's details with metadata of the SDK's own added."""


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call, unary or stream,
    on a plain-TCP channel (gRPC's call credentials need TLS)."""

    def __init__(self, token: str):
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)
