"""Business logic of the users service: accounts, logins and refresh-token rotation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.auth import ADMIN_ROLE
from smarttasks.core.errors import Conflict, NotFound, TooManyRequests, Unauthorized
from smarttasks.users.models import RefreshToken, User
from smarttasks.users.passwords import PasswordHasher
from smarttasks.users.ratelimit import LoginGuard
from smarttasks.users.repository import RefreshTokenRepository, UserRepository
from smarttasks.users.schemas import RegisterIn, TokenOut, UserPatch
from smarttasks.users.tokens import TokenSigner, hash_refresh_token, new_refresh_token

log = structlog.get_logger()


@dataclass(frozen=True)
class AuthContext:
    """What the auth operations need besides the session: keys, hashing and login limits."""

    signer: TokenSigner
    hasher: PasswordHasher
    guard: LoginGuard
    refresh_ttl: timedelta
    service_token: str = ""
    """Bearer secret that lets other services read accounts; '' when unset."""


async def register(
    session: AsyncSession, *, data: RegisterIn, hasher: PasswordHasher, is_admin: bool = False
) -> User:
    """Create an account; 409 when the email is taken."""
    users = UserRepository(session)
    email = data.email.lower()
    if await users.by_email(email) is not None:
        raise Conflict("An account with this email already exists")
    user = User(
        email=email,
        password_hash=await hasher.hash(data.password),
        display_name=data.display_name,
        is_admin=is_admin,
    )
    try:
        await users.add(user)
    except IntegrityError:  # a concurrent registration won the race
        raise Conflict("An account with this email already exists") from None
    log.info("user_registered", new_user_id=str(user.id))
    return user


async def login(
    session: AsyncSession, *, email: str, password: str, address: str, auth: AuthContext
) -> TokenOut:
    """Check a password and open a new refresh-token family; rate limited."""
    account = email.strip().lower()
    wait = await auth.guard.check(account=account, address=address)
    if wait is not None:
        raise TooManyRequests("Too many login attempts; try again later", retry_after=wait)
    user = await UserRepository(session).by_email(account)
    if not await auth.hasher.verify(password, user.password_hash if user else None) or not user:
        raise Unauthorized("Incorrect email or password")
    await auth.guard.succeeded(account=account)
    return await _issue(session, user=user, family_id=uuid.uuid4(), auth=auth)


async def refresh(session: AsyncSession, *, token: str, auth: AuthContext) -> TokenOut:
    """Rotate a refresh token; presenting a spent one revokes its whole family."""
    tokens = RefreshTokenRepository(session)
    row = await tokens.by_hash_for_update(hash_refresh_token(token))
    now = datetime.now(UTC)
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise Unauthorized("Refresh token is invalid or expired")
    if row.used_at is not None:
        # Reuse means the token leaked: end every session descended from it. Committed here
        # because the error below would otherwise roll the revocation back.
        await tokens.revoke_family(row.family_id, at=now)
        await session.commit()
        log.warning("refresh_token_reuse", family_id=str(row.family_id))
        raise Unauthorized("Refresh token was already used; all its sessions are revoked")
    row.used_at = now
    user = await UserRepository(session).by_id(row.user_id)
    if user is None:
        raise Unauthorized("Refresh token is invalid or expired")
    return await _issue(session, user=user, family_id=row.family_id, auth=auth)


async def logout(session: AsyncSession, *, token: str) -> None:
    """Revoke the family of a refresh token (idempotent)."""
    tokens = RefreshTokenRepository(session)
    row = await tokens.by_hash_for_update(hash_refresh_token(token))
    if row is not None:
        await tokens.revoke_family(row.family_id, at=datetime.now(UTC))


async def _issue(
    session: AsyncSession, *, user: User, family_id: uuid.UUID, auth: AuthContext
) -> TokenOut:
    raw = new_refresh_token()
    await RefreshTokenRepository(session).add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id,
            token_hash=hash_refresh_token(raw),
            expires_at=datetime.now(UTC) + auth.refresh_ttl,
        )
    )
    roles = [ADMIN_ROLE] if user.is_admin else []
    return TokenOut(
        access_token=auth.signer.access_token(user_id=user.id, email=user.email, roles=roles),
        refresh_token=raw,
        expires_in=auth.signer.ttl_seconds,
    )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await UserRepository(session).by_id(user_id)
    if user is None:
        raise NotFound("User not found")
    return user


async def update_me(session: AsyncSession, *, user_id: uuid.UUID, patch: UserPatch) -> User:
    user = await get_user(session, user_id)
    for field, value in patch.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(user, field, value)
    await session.flush()
    await session.refresh(user)
    return user
