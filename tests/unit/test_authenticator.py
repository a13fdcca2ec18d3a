"""The authenticator: bearer metadata, the cache's bound, what each
refusal says, and client certificates beside tokens."""

from __future__ import annotations

import asyncio

import pytest

from broker.api.auth import Authenticator, bearer_token
from broker.config import MtlsConfig
from broker.domain.errors import UnauthenticatedError
from broker.domain.tokens import Tokens
from broker.domain.values import Principal, Role
from tests.conftest import FakeClock


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "NO_CREDENTIAL"),
        ((("x-broker-holder", "alice"),), "NO_CREDENTIAL"),
        ((("authorization", "Basic YWxpY2U6eA=="),), "BAD_CREDENTIAL"),
        ((("authorization", "Bearer "),), "BAD_CREDENTIAL"),
    ],
)
def test_a_call_without_a_bearer_token_is_refused_with_what_to_do(metadata, reason):
    with pytest.raises(UnauthenticatedError) as raised:
        bearer_token(metadata)
    assert raised.value.reason == reason
    assert "Bearer <token>" in raised.value.message


def test_the_scheme_is_case_insensitive():
    assert bearer_token((("authorization", "bearer rbk_abc"),)) == "rbk_abc"


@pytest.fixture
def authenticator(database, clock):
    ticks = FakeClock(0.0)
    authenticator = Authenticator(Tokens(clock), cache_seconds=5.0, clock=ticks, wall_clock=clock)
    yield authenticator, ticks
    authenticator.close()


def check(authenticator: Authenticator, token: str) -> Principal:
    return asyncio.run(authenticator.authenticate((("authorization", f"Bearer {token}"),)))


def reason_of(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(UnauthenticatedError) as raised:
        check(authenticator, token)
    return raised.value.reason


def test_a_revoke_takes_effect_once_the_cached_verification_lapses(authenticator):
    authenticator, ticks = authenticator
    _, token = authenticator.tokens.create("alice", "user", ["lab"])
    assert check(authenticator, token) == Principal("alice", Role.USER, ("lab",))
    authenticator.tokens.revoke("alice")
    ticks.advance(4.9)
    assert check(authenticator, token).name == "alice"  # still within the bound
    ticks.advance(0.1)
    assert reason_of(authenticator, token) == "TOKEN_REVOKED"


def test_an_expiry_is_checked_on_every_call_cached_or_not(authenticator, clock):
    authenticator, _ = authenticator
    _, token = authenticator.tokens.create("alice", "user", expires_in=60)
    assert check(authenticator, token).name == "alice"
    clock.advance(60)
    assert reason_of(authenticator, token) == "TOKEN_EXPIRED"


def test_an_unknown_token_is_refused(authenticator):
    authenticator, _ = authenticator
    assert reason_of(authenticator, "rbk_never-made") == "BAD_CREDENTIAL"


CERTIFICATE = {"x509_common_name": [b"ci-runner"], "transport_security_type": [b"ssl"]}


@pytest.fixture
def with_mtls(database, clock):
    mtls = MtlsConfig(
        default_role="viewer", roles={"ci-runner": "admin"}, groups={"ci-runner": ("ci",)}
    )
    authenticator = Authenticator(Tokens(clock), cache_seconds=5.0, mtls=mtls, wall_clock=clock)
    yield authenticator
    authenticator.close()


def test_a_verified_certificate_names_the_principal_its_role_from_the_config(with_mtls):
    principal = asyncio.run(with_mtls.authenticate((), CERTIFICATE))
    assert principal == Principal("ci-runner", Role.ADMIN, ("ci",))
    other = {"x509_common_name": [b"bench-7"]}
    assert asyncio.run(with_mtls.authenticate((), other)) == Principal("bench-7", Role.VIEWER)


def test_a_bearer_token_wins_over_the_certificate(with_mtls):
    _, token = with_mtls.tokens.create("alice", "user")
    metadata = (("authorization", f"Bearer {token}"),)
    assert asyncio.run(with_mtls.authenticate(metadata, CERTIFICATE)).name == "alice"
    bad = (("authorization", "Bearer rbk_never-made"),)
    with pytest.raises(UnauthenticatedError):
        asyncio.run(with_mtls.authenticate(bad, CERTIFICATE))


def test_without_mutual_tls_a_certificate_names_no_one(authenticator):
    authenticator, _ = authenticator
    with pytest.raises(UnauthenticatedError) as raised:
        asyncio.run(authenticator.authenticate((), CERTIFICATE))
    assert raised.value.reason == "NO_CREDENTIAL"


def test_without_oidc_a_jwt_is_just_an_unknown_token(authenticator):
    authenticator, _ = authenticator
    assert reason_of(authenticator, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln") == "BAD_CREDENTIAL"
