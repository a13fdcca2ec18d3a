"""Page sizes and opaque page tokens for listings."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from broker.domain.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


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
    if not isinstance(position, dict) or set(position) != set(keys):
        raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
    return position
