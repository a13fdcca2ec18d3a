"""The token table's rules: tokens are shown once and stored only as a hash,
names are unique among live tokens, revokes and expiries stick, and both
changes are events."""

from __future__ import annotations

import pytest

from broker.domain.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from broker.domain.tokens import TOKEN_PREFIX, Tokens, hash_token
from broker.domain.values import EventType, Principal, Role
from broker.models.event import Event
from broker.models.token import Token


@pytest.fixture
def tokens(database, clock) -> Tokens:
    return Tokens(clock)


def test_a_token_is_random_prefixed_and_stored_only_as_its_hash(tokens):
    view, token = tokens.create("alice", "user", ["lab-1", "lab-2"])
    _, other = tokens.create("bob", "user")
    assert token.startswith(TOKEN_PREFIX) and len(token) >= 40 and token != other
    [row, _] = Token.select().order_by(Token.id)
    assert row.token_hash == hash_token(token)
    assert token not in {getattr(row, field.name) for field in Token._meta.sorted_fields}
    assert view.principal == Principal("alice", Role.USER, ("lab-1", "lab-2"))
    assert tokens.find(token).principal == view.principal


def test_a_token_this_database_never_made_is_not_found(tokens):
    tokens.create("alice", "admin")
    assert tokens.find(TOKEN_PREFIX + "not-one-of-ours") is None
    assert tokens.find("no prefix at all") is None


def test_a_live_name_is_not_taken_twice_but_may_be_reused_after_a_revoke(tokens):
    tokens.create("alice", "user")
    with pytest.raises(AlreadyExistsError):
        tokens.create("alice", "admin")
    tokens.revoke("alice")
    view, _ = tokens.create("alice", "admin")
    assert view.role == Role.ADMIN
    assert [(v.name, v.state(tokens.clock())) for v in tokens.list()] == [
        ("alice", "revoked"),
        ("alice", "active"),
    ]


def test_revoke_and_expiry_show_in_the_record(tokens, clock):
    _, revoked = tokens.create("alice", "user")
    _, expiring = tokens.create("bob", "user", expires_in=60)
    tokens.revoke("alice")
    assert tokens.find(revoked).state(clock()) == "revoked"
    assert tokens.find(expiring).state(clock()) == "active"
    clock.advance(60)
    assert tokens.find(expiring).state(clock()) == "expired"
    with pytest.raises(NotFoundError):
        tokens.revoke("bob")  # nothing live to revoke


@pytest.mark.parametrize(
    ("name", "role", "groups", "expires_in", "field"),
    [
        ("", "user", (), None, "name"),
        ("has space", "user", (), None, "name"),
        ("x" * 65, "user", (), None, "name"),
        ("alice", "root", (), None, "role"),
        ("alice", "user", ("ok", "not ok"), None, "groups[1]"),
        ("alice", "user", (), 0, "expires"),
    ],
)
def test_bad_input_names_the_field_and_makes_nothing(tokens, name, role, groups, expires_in, field):
    with pytest.raises(InvalidArgumentError) as raised:
        tokens.create(name, role, groups, expires_in)
    assert [v.field for v in raised.value.violations] == [field]
    assert Token.select().count() == 0


def test_creating_and_revoking_are_events(tokens):
    tokens.create("alice", "user", actor="root")
    tokens.revoke("alice", actor="root")
    assert [(e.type, e.actor) for e in Event.select().order_by(Event.id)] == [
        (EventType.TOKEN_CREATED.value, "root"),
        (EventType.TOKEN_REVOKED.value, "root"),
    ]
