"""OpenID Connect identity tokens (JWTs) as credentials, `auth.oidc`.

A CI job shows the identity token its CI gives it; no secret is stored.
The token must be signed by a key of the issuer's key set (a JWKS file, or
a JWKS URL fetched and cached by `jwt.PyJWKClient`), with the algorithm of
that key (never `none`, never an HMAC keyed with a public key), and name
the configured issuer and audience and an expiry. `verify` blocks (it may
fetch the key set), so it runs off the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from broker.config import ConfigError, OidcConfig
from broker.domain.errors import UnauthenticatedError
from broker.domain.values import Principal, Role

# Asymmetric algorithms only: a token's algorithm must also be its key's.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Seconds a fetched key set is used before it is fetched again.
JWKS_LIFESPAN = 300.0
JWKS_TIMEOUT = 10.0
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts separated by dots."""
    return _JWT.fullmatch(token) is not None


def _refused(message: str, reason: str) -> UnauthenticatedError:
    return UnauthenticatedError(f"the OIDC token was refused: {message}", reason)


def _file_keys(path: str) -> Callable[[str | None], jwt.PyJWK]:
    """The key lookup of a JWKS file, read once (a `ConfigError` if it is
    not a key set)."""
    try:
        with open(path, encoding="utf-8") as stream:
            keys = jwt.PyJWKSet.from_dict(json.load(stream))
    except (OSError, ValueError, jwt.PyJWTError) as error:
        raise ConfigError("auth.oidc.jwks_file", f"{path} is not a usable JWKS: {error}") from error

    def lookup(kid: str | None) -> jwt.PyJWK:
        if kid is None:
            if len(keys.keys) == 1:
                return keys.keys[0]
            raise _refused("it names no key id (kid)", "UNKNOWN_KEY")
        try:
            return keys[kid]
        except KeyError:
            raise _refused(f"no key of the issuer has the id {kid!r}", "UNKNOWN_KEY") from None

    return lookup


def _url_keys(url: str) -> Callable[[str | None], jwt.PyJWK]:
    """The key lookup of a JWKS URL: fetched when first needed, kept for
    `JWKS_LIFESPAN`, fetched again for a key id it does not hold."""
    client = jwt.PyJWKClient(url, lifespan=JWKS_LIFESPAN, timeout=JWKS_TIMEOUT)

    def lookup(kid: str | None) -> jwt.PyJWK:
        try:
            if kid is None:
                keys = client.get_signing_keys()
                if len(keys) == 1:
                    return keys[0]
                raise _refused("it names no key id (kid)", "UNKNOWN_KEY")
            return client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as error:
            message = f"the issuer's keys cannot be fetched: {error}"
            raise _refused(message, "JWKS_UNAVAILABLE") from None
        except jwt.PyJWKClientError:
            raise _refused(f"no key of the issuer has the id {kid!r}", "UNKNOWN_KEY") from None

    return lookup


class OidcVerifier:
    """Turns a JWT into a `Principal`, or UNAUTHENTICATED with a reason:
    TOKEN_EXPIRED, WRONG_AUDIENCE, WRONG_ISSUER, BAD_SIGNATURE, UNKNOWN_KEY,
    BAD_CREDENTIAL (malformed, a claim missing, an algorithm refused)."""

    def __init__(self, config: OidcConfig):
        self.config = config
        self._key = _file_keys(config.jwks_file) if config.jwks_file else _url_keys(config.jwks_url)

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _refused(f"it is not a JWT: {error}", "BAD_CREDENTIAL") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise _refused(f"the algorithm {algorithm!r} is not accepted", "BAD_CREDENTIAL")
        key = self._key(header.get("kid"))
        if key.algorithm_name != algorithm:
            raise _refused(
                f"the token is signed with {algorithm}, its key is for {key.algorithm_name}",
                "BAD_SIGNATURE",
            )
        claims = self._decode(token, key, algorithm)
        return self.principal(claims)

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        config = self.config
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("it has expired: get a fresh one", "TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise _refused(f"its audience is not {config.audience!r}", "WRONG_AUDIENCE") from None
        except jwt.InvalidIssuerError:
            raise _refused(f"its issuer is not {config.issuer!r}", "WRONG_ISSUER") from None
        except jwt.InvalidSignatureError:
            raise _refused("its signature does not verify", "BAD_SIGNATURE") from None
        except jwt.MissingRequiredClaimError as error:
            raise _refused(f"it has no {error.claim!r} claim", "BAD_CREDENTIAL") from None
        except jwt.PyJWTError as error:
            raise _refused(str(error), "BAD_CREDENTIAL") from None

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The principal the claims name, its groups and its role."""
        config = self.config
        name = claims.get(config.principal_claim)
        if not isinstance(name, str) or not name:
            raise _refused(f"it has no {config.principal_claim!r} claim", "BAD_CREDENTIAL")
        listed = claims.get(config.groups_claim, ())
        listed = [listed] if isinstance(listed, str) else listed
        groups = tuple(g for g in listed if isinstance(g, str)) if isinstance(listed, list) else ()
        return Principal(name, self._role(claims.get(config.role_claim), name, groups), groups)

    def _role(self, claimed: Any, name: str, groups: tuple[str, ...]) -> Role:
        if isinstance(claimed, str) and claimed in {role.value for role in Role}:
            return Role(claimed)
        mapped = [Role(self.config.roles[n]) for n in (name, *groups) if n in self.config.roles]
        if mapped:
            return max(mapped, key=lambda role: role.rank)
        return Role(self.config.default_role)
