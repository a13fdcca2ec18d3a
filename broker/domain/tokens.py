"""API tokens: creating, listing, revoking, and recognising them.

A token is a high-entropy random string with a recognisable prefix, shown
once when made; the database keeps only its SHA-256 (a fast hash suffices
for 256 random bits), so reading the database gives no usable token. Each
token stands for a principal: a name, a role and groups, until it expires
or is revoked. Creating and revoking are recorded as events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence

from broker.domain import events
from broker.domain.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, clip
from broker.domain.values import EventType, Principal, Role
from broker.models import token as token_model
from broker.models.transactions import write_transaction, writes

TOKEN_PREFIX = "rbk_"
TOKEN_BYTES = 32
MAX_NAME = 64
MAX_GROUPS = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


@dataclasses.dataclass(frozen=True)
class TokenView:
    """A token as listed (never the token itself)."""

    name: str
    role: Role
    groups: tuple[str, ...]
    create_time: float
    expire_time: float | None
    revoke_time: float | None

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.groups)

    def state(self, now: float) -> str:
        """`active`, `expired` or `revoked`."""
        if self.revoke_time is not None:
            return "revoked"
        if self.expire_time is not None and self.expire_time <= now:
            return "expired"
        return "active"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(field: str, name: str) -> None:
    if not name:
        raise InvalidArgumentError.of(field, "is required")
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidArgumentError.of(
            field,
            f"{clip(name)!r} is not a name: 1 to {MAX_NAME} letters, digits and . _ @ + -, "
            "starting with a letter or digit",
        )


class Tokens:
    """The token table's rules."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock

    @writes
    def create(
        self,
        name: str,
        role: str,
        groups: Sequence[str] = (),
        expires_in: float | None = None,
        actor: str = "",
    ) -> tuple[TokenView, str]:
        """A new token for principal `name`; returns it with the token,
        which is never shown again. A name already held by a live token is
        ALREADY_EXISTS: revoke that one first."""
        check_name("name", name)
        try:
            role_value = Role(role)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidArgumentError.of(
                "role", f"{clip(role)!r} is not a role (roles: {known})"
            ) from None
        if len(groups) > MAX_GROUPS:
            raise InvalidArgumentError.of("groups", f"at most {MAX_GROUPS} groups")
        for index, group in enumerate(groups):
            check_name(f"groups[{index}]", group)
        if expires_in is not None and not expires_in > 0:
            raise InvalidArgumentError.of("expires", "must be a positive duration")
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        with write_transaction():
            now = self.clock()
            if token_model.live_by_name(name, now):
                raise AlreadyExistsError("token", name)
            row = token_model.insert_token(
                {
                    "name": name,
                    "token_hash": hash_token(token),
                    "role": role_value.value,
                    "groups": json.dumps(list(dict.fromkeys(groups))),
                    "create_time": now,
                    "expire_time": None if expires_in is None else now + expires_in,
                    "revoke_time": None,
                }
            )
            events.record(
                events.event(
                    EventType.TOKEN_CREATED,
                    now,
                    actor=actor,
                    detail={"name": name, "role": role_value.value},
                )
            )
        return _view(row), token

    @writes
    def revoke(self, name: str, actor: str = "") -> TokenView:
        """Revokes the live token of principal `name`: calls with it are
        refused once brokers' caches of it lapse."""
        check_name("name", name)
        with write_transaction():
            now = self.clock()
            rows = token_model.live_by_name(name, now)
            if not rows:
                raise NotFoundError("token", name)
            token_model.revoke_tokens([row.id for row in rows], now)
            events.record(
                events.event(EventType.TOKEN_REVOKED, now, actor=actor, detail={"name": name})
            )
        rows[0].revoke_time = now
        return _view(rows[0])

    def list(self) -> list[TokenView]:
        """Every token made, oldest first, revoked and expired ones too."""
        return [_view(row) for row in token_model.all_tokens()]

    def find(self, token: str) -> TokenView | None:
        """The token's record, revoked or expired alike; None for a token
        this database never made."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        row = token_model.by_hash(hash_token(token))
        return None if row is None else _view(row)


def _view(row: token_model.Token) -> TokenView:
    return TokenView(
        name=row.name,
        role=Role(row.role),
        groups=tuple(json.loads(row.groups)),
        create_time=row.create_time,
        expire_time=row.expire_time,
        revoke_time=row.revoke_time,
    )
