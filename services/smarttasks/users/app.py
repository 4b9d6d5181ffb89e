"""Assembly of the users service: its state, its routers and its stand-alone app."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, FastAPI
from redis.asyncio import Redis

from smarttasks.core.auth import StaticKeys, TokenVerifier
from smarttasks.core.service_app import create_service_app
from smarttasks.users.endpoints import jwks_router, router
from smarttasks.users.passwords import PasswordHasher
from smarttasks.users.ratelimit import LoginGuard, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from smarttasks.users.service import AuthContext
from smarttasks.users.settings import UsersSettings
from smarttasks.users.tokens import TokenSigner, load_or_create_key

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "users"
ROUTERS: tuple[APIRouter, ...] = (router, jwks_router)


def build_auth(settings: UsersSettings) -> AuthContext:
    """The signer, hasher and login guard this service (or the embedded app) runs with."""
    pem = load_or_create_key(pem=settings.signing_key_pem, path=settings.signing_key_file)
    signer = TokenSigner(
        pem,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    limiter: RateLimiter
    if settings.redis_url:
        limiter = RedisRateLimiter(
            Redis.from_url(settings.redis_url), window_seconds=settings.login_window_seconds
        )
    else:
        limiter = MemoryRateLimiter(window_seconds=settings.login_window_seconds)
    return AuthContext(
        signer=signer,
        hasher=PasswordHasher(memory_kib=settings.password_memory_kib),
        guard=LoginGuard(
            limiter,
            per_account=settings.login_max_per_account,
            per_address=settings.login_max_per_address,
        ),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        service_token=settings.read_service_token(),
    )


def local_verifier(auth: AuthContext) -> TokenVerifier:
    """A verifier that trusts this process's own signing key."""
    return TokenVerifier(
        StaticKeys(auth.signer.jwks), issuer=auth.signer.issuer, audience=auth.signer.audience
    )


def create_users_app(settings: UsersSettings) -> FastAPI:
    """The users service as its own deployable; it verifies tokens with its own key."""

    def setup(app: FastAPI) -> None:
        auth = build_auth(settings)
        app.state.users_auth = auth
        app.state.verifier = local_verifier(auth)

    return create_service_app(
        service="users", title="SmartTasks users", settings=settings, routers=ROUTERS, setup=setup
    )
