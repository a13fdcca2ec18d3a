"""Authentication of every broker call.

The interceptor (`broker.api.errors.ErrorInterceptor`) asks `Authenticator`
who a call is, from its `authorization: Bearer <token>` metadata, else from
the client certificate TLS verified (mutual TLS), and nothing else. A bearer
that is a JWT goes to the OIDC verifier when `auth.oidc` is configured;
any other is an API token. Looking a token up reads the database (or, for a
JWT, may fetch the issuer's keys), so it runs on threads of the
authenticator's own, off the event loop; a verified API token is then
trusted for `cache_seconds` (a revoke takes effect within that bound),
while an expiry is checked on every call.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from broker.api.oidc import OidcVerifier, looks_like_jwt
from broker.api.permissions import authorize
from broker.api.runner import ThreadRunner
from broker.config import MtlsConfig
from broker.domain.errors import UnauthenticatedError
from broker.domain.tokens import Tokens, TokenView, hash_token
from broker.domain.values import Principal, Role

Metadata = Sequence[tuple[str, str | bytes]] | None
# What `grpc.aio.ServicerContext.auth_context()` gives: property -> values.
AuthContext = Mapping[str, Sequence[bytes]] | None

AUTHORIZATION_METADATA = "authorization"
# Threads that look tokens up.
AUTH_WORKERS = 2
# Tokens remembered at once; the least recently verified go first.
CACHE_LIMIT = 4096

HOW_TO = (
    "send the metadata `authorization: Bearer <token>` (BrokerClient(token=...), "
    "`broker --token`, or BROKER_TOKEN); an administrator makes tokens with "
    "`broker tokens create NAME --role ROLE`"
)


def bearer_token(metadata: Metadata) -> str:
    """The token of the call's `authorization` metadata; UNAUTHENTICATED if
    there is none or it is not `Bearer <token>`."""
    for key, value in metadata or ():
        if key != AUTHORIZATION_METADATA:
            continue
        text = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError(
                f"the authorization metadata is not `Bearer <token>`: {HOW_TO}", "BAD_CREDENTIAL"
            )
        return token.strip()
    raise UnauthenticatedError(f"this broker needs a token: {HOW_TO}", "NO_CREDENTIAL")


def has_bearer(metadata: Metadata) -> bool:
    return any(key == AUTHORIZATION_METADATA for key, _ in metadata or ())


def certificate_name(auth_context: AuthContext) -> str | None:
    """The common name of the client certificate TLS verified, if any."""
    names = (auth_context or {}).get("x509_common_name") or ()
    return names[0].decode(errors="replace") if names else None


class Authenticator:
    """Verifies API tokens against the token table (with a short-lived
    cache), OIDC tokens with `oidc`, and client certificates with `mtls`
    (None: certificates name no one)."""

    def __init__(
        self,
        tokens: Tokens,
        cache_seconds: float,
        *,
        oidc: OidcVerifier | None = None,
        mtls: MtlsConfig | None = None,
        workers: int = AUTH_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.tokens = tokens
        self.cache_seconds = cache_seconds
        self.oidc = oidc
        self.mtls = mtls
        self.clock = clock
        self.wall_clock = wall_clock
        self._run = ThreadRunner(workers)
        self._cache: OrderedDict[str, tuple[TokenView | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._run.close()

    async def authenticate(self, metadata: Metadata, auth_context: AuthContext = None) -> Principal:
        """The call's principal: its bearer token's if it has one, else its
        verified client certificate's; UNAUTHENTICATED, saying what to do,
        for no credential or a bad, revoked or expired one."""
        if self.mtls is not None and not has_bearer(metadata):
            name = certificate_name(auth_context)
            if name:
                return self.certificate_principal(name)
        token = bearer_token(metadata)
        if self.oidc is not None and looks_like_jwt(token):
            return await self._run(self.oidc.verify, token)
        return await self._api_token(token)

    def certificate_principal(self, name: str) -> Principal:
        """The principal a client certificate's common name stands for."""
        mtls = self.mtls
        assert mtls is not None, "only called with client certificates on"
        return Principal(
            name, Role(mtls.roles.get(name, mtls.default_role)), mtls.groups.get(name, ())
        )

    async def _api_token(self, token: str) -> Principal:
        key = hash_token(token)
        view = self._cached(key)
        if view is False:
            view = await self._run(self.tokens.find, token)
            self._remember(key, view)
        if view is None:
            raise UnauthenticatedError(
                f"the token is not one this broker knows: {HOW_TO}", "BAD_CREDENTIAL"
            )
        state = view.state(self.wall_clock())
        if state == "revoked":
            raise UnauthenticatedError(
                f"the token of {view.name} was revoked: ask an administrator for a new one",
                "TOKEN_REVOKED",
            )
        if state == "expired":
            raise UnauthenticatedError(
                f"the token of {view.name} has expired: ask an administrator for a new one",
                "TOKEN_EXPIRED",
            )
        return view.principal

    def _cached(self, key: str) -> TokenView | Literal[False] | None:
        """The cached record (None: unknown token), or False if it must be
        read again."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or self.clock() - entry[1] >= self.cache_seconds:
                return False
            self._cache.move_to_end(key)
            return entry[0]

    def _remember(self, key: str, view: TokenView | None) -> None:
        with self._lock:
            self._cache[key] = (view, self.clock())
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_LIMIT:
                self._cache.popitem(last=False)

    async def admit(self, method: str, metadata: Metadata, auth_context: AuthContext = None):
        """The interceptor's gate: the principal of a call to `method`, if
        its role allows the method (`broker.api.permissions`), decided
        before the call looks anything up."""
        principal = await self.authenticate(metadata, auth_context)
        authorize(method, principal)
        return principal
