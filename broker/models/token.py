"""Storage of API tokens: each row maps the SHA-256 of a token (never the
token) to the principal it stands for."""

from __future__ import annotations

import peewee

from broker.models.base import BaseModel


class Token(BaseModel):
    """One token: `role` is a `broker.domain.values.Role` value, `groups` a
    JSON list. A revoked token keeps its row (listings show it) and its
    `revoke_time`."""

    id = peewee.AutoField()
    name = peewee.CharField(max_length=64, index=True)
    token_hash = peewee.CharField(max_length=64, unique=True)
    role = peewee.CharField(max_length=16)
    groups = peewee.TextField(default="[]")
    create_time = peewee.DoubleField()
    expire_time = peewee.DoubleField(null=True)
    revoke_time = peewee.DoubleField(null=True)


def insert_token(values: dict) -> Token:
    """Stores a new token."""
    return Token.create(**values)


def by_hash(token_hash: str) -> Token | None:
    """The token with this hash, revoked or not."""
    return Token.get_or_none(Token.token_hash == token_hash)


def live_by_name(name: str, now: float) -> list[Token]:
    """The tokens of this name that are neither revoked nor expired."""
    return list(
        Token.select().where(
            (Token.name == name)
            & Token.revoke_time.is_null()
            & (Token.expire_time.is_null() | (Token.expire_time > now))
        )
    )


def revoke_tokens(ids: list[int], now: float) -> None:
    """Marks tokens revoked."""
    if ids:
        Token.update(revoke_time=now).where(Token.id.in_(ids)).execute()


def all_tokens() -> list[Token]:
    """Every token, oldest first."""
    return list(Token.select().order_by(Token.create_time, Token.id))
