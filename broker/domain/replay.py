"""Recognising a retried acquire by its `request_id`, without keeping the id.

A client that lost an acquire's reply retries it with the same `request_id`
and must get the same lease (and secret), or go on waiting in its place.
Whoever else learns the id must get nothing from it: so the broker stores
only a keyed hash of the id (to find the earlier request) and a keyed hash
of what was asked (requirements, holder, principal, session, TTL), and honours a retry
only when it repeats the request exactly. Both hashes use the database's
secret key, so reading the database reveals neither the ids nor a way to
test guesses of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

from broker.domain.errors import InvalidArgumentError
from broker.domain.values import AcquireRequest, Check, Requirement


@dataclasses.dataclass(frozen=True)
class Replay:
    """What is stored of a request that carried a `request_id`: the keyed
    hash of the id, and that of the request it names."""

    key: str
    digest: str

    def check(self, stored_digest: str | None) -> InvalidArgumentError | None:
        """The error for a different request that reuses a used id."""
        if stored_digest is not None and hmac.compare_digest(stored_digest, self.digest):
            return None
        return InvalidArgumentError.of(
            "request_id",
            "was already used by a different request: a retry must repeat the original "
            "request exactly (requirements, holder, session and TTL); give a new request "
            "a new request_id",
        )


def _asked(requirement: Requirement) -> dict:
    """A requirement as its fingerprint reads it: an equality keeps the form
    it had before constraints had other tests, so a retry across an upgrade
    is still the same request."""
    constraints = []
    for c in requirement.constraints:
        asked = {"field": c.field, "values": list(c.values), "any_of": c.any_of}
        if c.test not in (Check.EQUALS, Check.ANY_OF) or c.negate:
            asked |= {"test": c.test.value, "negate": c.negate}
        constraints.append(asked)
    return {
        "kind": requirement.kind,
        "constraints": constraints,
        "count": requirement.count,
        "label": requirement.label,
    }


def replay_of(secret: bytes, request: AcquireRequest, ttl: float) -> Replay | None:
    """The stored form of a request's `request_id`, None if it has none."""
    if not request.request_id:
        return None
    asked = json.dumps(
        [
            [_asked(r) for r in request.requirements],
            request.holder,
            request.who,
            request.session_id,
            repr(float(ttl)),
        ],
        separators=(",", ":"),
    )
    return Replay(
        _keyed(secret, "request-id", request.request_id), _keyed(secret, "request", asked)
    )


def _keyed(secret: bytes, purpose: str, text: str) -> str:
    return hmac.new(secret, f"{purpose}\0{text}".encode(), hashlib.sha256).hexdigest()
