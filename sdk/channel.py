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
"""

from __future__ import annotations

import collections

import grpc

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


def open_channel(address: str, token: str = "") -> grpc.Channel:
    """An insecure channel to the one broker at `address` (`host:port`)
    with `CHANNEL_OPTIONS`; with a `token`, every call on it carries the
    metadata `authorization: Bearer <token>`."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if not token:
        return channel
    return grpc.intercept_channel(channel, BearerToken(token))


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
    """Adds `authorization: Bearer <token>` to every call, unary or stream.
    (gRPC's call credentials need a TLS channel, which the broker does not
    serve yet, so the token travels as plain metadata.)"""

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
