"""Who is calling. Until authentication lands, a caller names itself: the
request's `holder` field, else the `x-broker-holder` metadata. This module is
the one seam where verified identities will plug in."""

from __future__ import annotations

import grpc

HOLDER_METADATA = "x-broker-holder"


def caller(context: grpc.ServicerContext) -> str:
    """The name the caller gave in its metadata, or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == HOLDER_METADATA:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def holder(requested: str, context: grpc.ServicerContext) -> str:
    """The holder a lease is recorded under."""
    return requested or caller(context)
