"""OIDC tokens over the wire: a CI job's identity token is a credential
(principal, groups and role from its claims) beside the API tokens, and a
refused one is UNAUTHENTICATED with the reason in its ErrorInfo."""

from __future__ import annotations

import dataclasses
import json

import pytest

from broker.api.server import build_server
from broker.config import AuthConfig, OidcConfig
from sdk import BrokerClient
from sdk.errors import PermissionDeniedError, UnauthenticatedError, reason_of
from tests.conftest import make_config, wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
from tests.integration.certs import SigningKey, jwks
from tests.integration.helpers import requirement

ISSUER = "https://ci.example"
AUDIENCE = "lab-broker"
CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "build-7", "groups": ["firmware"]}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("ci-key")


@pytest.fixture
def oidc_broker(tmp_path, key):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(key)))
    oidc = OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path), default_role="viewer")
    config = dataclasses.replace(
        make_config(tmp_path),
        auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS, oidc=oidc),
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    yield server, make_tokens()
    server.stop(0)


def test_an_identity_token_is_a_credential_beside_api_tokens(oidc_broker, key):
    server, tokens = oidc_broker
    with BrokerClient(server.address, token=tokens["admin"], session=False) as admin:
        admin.create_resource("Licence", "licence", {"product": "compiler"})
    with BrokerClient(server.address, token=key.token({**CLAIMS, "role": "user"})) as job:
        lease, secret = job.acquire([requirement("Licence")])
        assert lease.principal == "build-7"
        job.release(lease.lease_id, secret)
    # No role claim: the default role, viewer, reads but holds nothing.
    with BrokerClient(server.address, token=key.token(CLAIMS), session=False) as viewer:
        assert viewer.list_kinds()
        with pytest.raises(PermissionDeniedError):
            viewer.acquire([requirement("Licence")])


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({**CLAIMS, "aud": "another-service"}, "WRONG_AUDIENCE"),
        ({**CLAIMS, "iss": "https://elsewhere.example"}, "WRONG_ISSUER"),
    ],
)
def test_a_refused_identity_token_says_why(oidc_broker, key, claims, reason):
    server, _ = oidc_broker
    client = BrokerClient(server.address, token=key.token(claims), session=False)
    with client, pytest.raises(UnauthenticatedError) as raised:
        client.list_kinds()
    assert reason_of(raised.value) == reason


def test_an_expired_identity_token_is_refused(oidc_broker, key):
    server, _ = oidc_broker
    token = key.token(CLAIMS, expires_in=-60)
    client = BrokerClient(server.address, token=token, session=False)
    with client, pytest.raises(UnauthenticatedError) as raised:
        client.list_kinds()
    assert reason_of(raised.value) == "TOKEN_EXPIRED" and "expired" in str(raised.value)
