"""The OIDC verifier: claims to a principal, and each refusal with its own
reason; keys from a JWKS file and from a JWKS URL (served on 127.0.0.1)."""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import threading

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.api.oidc import OidcVerifier, looks_like_jwt
from broker.config import ConfigError, OidcConfig
from broker.domain.errors import UnauthenticatedError
from broker.domain.values import Principal, Role
from tests.integration.certs import SigningKey, jwks

ISSUER = "https://ci.example"
AUDIENCE = "lab-broker"
CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "repo:lab/firmware"}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("key-1")


@pytest.fixture(scope="module")
def impostor() -> SigningKey:
    """Another key that claims the issuer's key id."""
    return SigningKey("key-1")


@pytest.fixture
def jwks_file(tmp_path, key):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(key, SigningKey("key-2"))))
    return path


def verifier_for(jwks_file, **settings) -> OidcVerifier:
    return OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks_file), **settings)
    )


def reason_of(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(UnauthenticatedError) as raised:
        verifier.verify(token)
    assert raised.value.message.startswith("the OIDC token was refused: ")
    return raised.value.reason


def test_the_claims_name_the_principal_its_groups_and_its_role(jwks_file, key):
    verifier = verifier_for(jwks_file)
    token = key.token({**CLAIMS, "groups": ["firmware", "ci"], "role": "admin"})
    assert verifier.verify(token) == Principal("repo:lab/firmware", Role.ADMIN, ("firmware", "ci"))


def test_without_a_role_claim_the_roles_mapping_then_the_default_role_decide(jwks_file, key):
    verifier = verifier_for(
        jwks_file,
        principal_claim="job",
        groups_claim="teams",
        default_role="viewer",
        roles={"release": "admin", "firmware": "user"},
    )
    claims = {**CLAIMS, "job": "build-42", "role": "superuser"}
    both = key.token({**claims, "teams": ["firmware", "release"]})
    assert verifier.verify(both).role == Role.ADMIN  # the highest mapped
    assert verifier.verify(key.token({**claims, "teams": "firmware"})).groups == ("firmware",)
    principal = verifier.verify(key.token(claims))
    assert (principal.name, principal.role) == ("build-42", Role.VIEWER)


def test_each_refusal_has_its_own_reason(jwks_file, key, impostor):
    verifier = verifier_for(jwks_file)
    refused = {
        "TOKEN_EXPIRED": key.token(CLAIMS, expires_in=-60),
        "WRONG_AUDIENCE": key.token({**CLAIMS, "aud": "another-service"}),
        "WRONG_ISSUER": key.token({**CLAIMS, "iss": "https://elsewhere.example"}),
        "BAD_SIGNATURE": impostor.token(CLAIMS),
        "UNKNOWN_KEY": key.token(CLAIMS, kid="key-9"),
    }
    assert {reason: reason_of(verifier, token) for reason, token in refused.items()} == {
        reason: reason for reason in refused
    }


def test_leeway_allows_that_much_clock_skew(jwks_file, key):
    token = key.token(CLAIMS, expires_in=-30)
    assert reason_of(verifier_for(jwks_file), token) == "TOKEN_EXPIRED"
    assert verifier_for(jwks_file, leeway=60.0).verify(token).name == "repo:lab/firmware"


def test_a_token_must_carry_an_expiry(jwks_file, key):
    token = jwt.encode(CLAIMS, key.key, algorithm="RS256", headers={"kid": key.kid})
    assert reason_of(verifier_for(jwks_file), token) == "BAD_CREDENTIAL"


def _encoded(part: dict | bytes) -> bytes:
    raw = part if isinstance(part, bytes) else json.dumps(part).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@pytest.mark.parametrize("algorithm", ["none", "HS256"])
def test_unsigned_and_symmetric_tokens_are_refused(jwks_file, key, algorithm):
    # An HMAC keyed with the issuer's public key (which anyone has) would
    # verify if the verifier let the token choose its algorithm.
    body = _encoded({"alg": algorithm, "kid": key.kid}) + b"." + _encoded({**CLAIMS, "exp": 4e9})
    public = key.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = b"" if algorithm == "none" else hmac.digest(public, body, "sha256")
    token = (body + b"." + _encoded(signature)).decode()
    assert reason_of(verifier_for(jwks_file), token) == "BAD_CREDENTIAL"


def test_a_jwt_is_three_base64url_parts():
    assert looks_like_jwt("eyJh.eyJz.c2ln")
    assert not looks_like_jwt("rbk_abcdef")
    assert not looks_like_jwt("a.b")


def test_a_jwks_file_that_is_not_a_key_set_is_a_config_error(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text("{}")
    with pytest.raises(ConfigError) as raised:
        verifier_for(path)
    assert raised.value.key == "auth.oidc.jwks_file"


@pytest.fixture
def jwks_url(key):
    """The JWKS served over HTTP on 127.0.0.1, and how many times it was fetched."""
    body = json.dumps(jwks(key)).encode()
    fetched = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", fetched
    server.shutdown()
    server.server_close()
    thread.join()


def test_keys_from_a_jwks_url_are_fetched_once_and_kept(jwks_url, key):
    url, fetched = jwks_url
    config = OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url)
    verifier = OidcVerifier(config)
    assert verifier.verify(key.token(CLAIMS)).name == "repo:lab/firmware"
    assert verifier.verify(key.token({**CLAIMS, "sub": "other"})).name == "other"
    assert fetched == ["/jwks.json"]
    assert reason_of(verifier, key.token(CLAIMS, kid="key-9")) == "UNKNOWN_KEY"


def test_an_unreachable_jwks_url_refuses_saying_so(jwks_url, key):
    url, _ = jwks_url
    config = OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url + "-missing")
    verifier = OidcVerifier(config)
    assert reason_of(verifier, key.token(CLAIMS)) == "JWKS_UNAVAILABLE"
