"""Page sizes and opaque page tokens for listings."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from broker.domain.errors import InvalidArgumentError
from broker.domain.kinds import INT64_MAX, INT64_MIN

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# What a token's values may be: text as the broker stores it (names, ids),
# and numbers every database compares alike.
MAX_TOKEN_TEXT = 256


def page_size(requested: int) -> int:
    """0 means the default; negative or too large is the caller's error."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgumentError.of("page_size", f"must be 0 to {MAX_PAGE_SIZE}, not {requested}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(position: dict[str, Any]) -> str:
    """An opaque token for where the next page starts."""
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The position a token holds, None for an empty token; a token this
    broker did not make is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if (
        not isinstance(position, dict)
        or set(position) != set(keys)
        or not all(_storable(value) for value in position.values())
    ):
        raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
    return position


def _storable(value: Any) -> bool:
    """Whether a token's value is one the broker could have put there: a
    forged one must not reach the database (a huge integer, NaN, a NUL)."""
    if isinstance(value, str):
        return len(value) <= MAX_TOKEN_TEXT and "\0" not in value
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    return False
