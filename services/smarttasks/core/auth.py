"""JWT verification every service does itself: asymmetric keys from a JWKS, algorithms pinned."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import httpx
import jwt
import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from smarttasks.core.errors import Forbidden, ServiceUnavailable, Unauthorized

log = structlog.get_logger()

# Only this algorithm is ever accepted: `alg` in a token header cannot pick another one.
ALGORITHMS = ("ES256",)
ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as asserted by a verified access token."""

    user_id: uuid.UUID
    email: str
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


class KeySource(Protocol):
    """Where verification keys come from."""

    async def get_key(self, kid: str) -> jwt.PyJWK: ...


class StaticKeys:
    """Keys known in-process (the users service itself, and embedded mode)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._keys = {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}

    async def get_key(self, kid: str) -> jwt.PyJWK:
        try:
            return self._keys[kid]
        except KeyError:
            raise Unauthorized("Token signed with an unknown key") from None


class RemoteJWKS:
    """Keys fetched from the users service's JWKS URL, cached, refetched for an unknown `kid`."""

    def __init__(self, url: str, *, cache_seconds: int = 300, min_refetch_seconds: float = 5.0):
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refetch = min_refetch_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._min_refetch:
                return
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self._url)
                    response.raise_for_status()
                    data = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("jwks_fetch_failed", url=self._url, error=str(exc))
                if not self._keys:
                    raise ServiceUnavailable("Signing keys are not available") from exc
                return
            self._keys = {k["kid"]: jwt.PyJWK(k) for k in data.get("keys", []) if "kid" in k}
            self._fetched_at = time.monotonic()

    async def get_key(self, kid: str) -> jwt.PyJWK:
        stale = time.monotonic() - self._fetched_at > self._cache_seconds
        if stale or kid not in self._keys:
            await self._refresh()
        try:
            return self._keys[kid]
        except KeyError:
            raise Unauthorized("Token signed with an unknown key") from None


_CACHE_SECONDS = 60.0
_CACHE_SIZE = 10_000


class TokenVerifier:
    """Verifies access tokens: signature, `exp`, `iss`, `aud` all required."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        # Tokens already verified, until their expiry (at most `_CACHE_SECONDS`): a client
        # sends the same token with every request for minutes, and a signature check
        # costs more than the rest of a simple request's work.
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        principal, expires = await self._verify(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._forget_expired_or_oldest()
        self._verified[token] = (principal, min(expires, self._clock() + _CACHE_SECONDS))
        return principal

    def _forget_expired_or_oldest(self) -> None:
        now = self._clock()
        for token in [t for t, (_, until) in self._verified.items() if until <= now]:
            del self._verified[token]
        while len(self._verified) >= _CACHE_SIZE:
            del self._verified[next(iter(self._verified))]

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Malformed access token") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized("Token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("Token has no key id")
        key = await self._keys.get_key(kid)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=list(ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Access token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Invalid access token: {exc}") from None
        if claims.get("typ") != "access":
            raise Unauthorized("Not an access token")
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise Unauthorized("Invalid subject in access token") from None
        roles = claims.get("roles", [])
        principal = Principal(
            user_id=user_id,
            email=str(claims.get("email", "")),
            roles=frozenset(r for r in roles if isinstance(r, str)),
        )
        return principal, float(claims["exp"])


bearer_scheme = HTTPBearer(
    auto_error=False, description="Access token from POST /api/v1/auth/token"
)


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The verified caller; 401 without a valid bearer token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.verify(credentials.credentials)
    structlog.contextvars.bind_contextvars(user_id=str(principal.user_id))
    return principal


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The caller, who must be an admin; 403 otherwise."""
    if not principal.is_admin:
        raise Forbidden("Administrator role required")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
AdminPrincipal = Annotated[Principal, Depends(get_admin)]
