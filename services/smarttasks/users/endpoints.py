"""HTTP endpoints of the users service (thin: validate, authorise, call the service)."""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, OAuth2PasswordRequestForm

from smarttasks.core.auth import (
    AdminPrincipal,
    CurrentPrincipal,
    bearer_scheme,
    get_admin,
    get_principal,
)
from smarttasks.core.db import SessionDep
from smarttasks.core.errors import BadRequest, problem_responses
from smarttasks.users import service
from smarttasks.users.repository import UserRepository
from smarttasks.users.schemas import RefreshIn, RegisterIn, TokenOut, UserOut, UserPage, UserPatch
from smarttasks.users.service import AuthContext

router = APIRouter(prefix="/api/v1")

ERRORS = problem_responses(
    {401: "Missing or invalid access token", 422: "Invalid input; `errors` names each field"}
)
NOT_ADMIN = problem_responses({403: "Not an administrator"})


def _auth(request: Request) -> AuthContext:
    ctx: AuthContext = request.app.state.users_auth
    return ctx


AuthDep = Annotated[AuthContext, Depends(_auth)]


async def _account_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    auth: AuthDep,
) -> None:
    """An administrator, or a service presenting the configured service token."""
    if (
        auth.service_token
        and credentials is not None
        and credentials.scheme.lower() == "bearer"
        and hmac.compare_digest(credentials.credentials.encode(), auth.service_token.encode())
    ):
        return
    await get_admin(await get_principal(request, credentials))


AccountReader = Annotated[None, Depends(_account_reader)]


@router.post(
    "/auth/register",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    tags=["auth"],
    summary="Create an account",
    responses={**ERRORS, **problem_responses({409: "Email already registered"})},
)
async def register(data: RegisterIn, session: SessionDep, auth: AuthDep) -> UserOut:
    user = await service.register(session, data=data, hasher=auth.hasher)
    return UserOut.model_validate(user)


@router.post(
    "/auth/token",
    response_model=TokenOut,
    tags=["auth"],
    summary="Log in with email and password (OAuth2 password flow)",
    responses=problem_responses(
        {401: "Incorrect email or password", 429: "Too many attempts; see Retry-After"}
    ),
)
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    session: SessionDep,
    auth: AuthDep,
) -> TokenOut:
    if len(form.username) > 320 or len(form.password) > 1024:
        raise BadRequest("username or password too long")
    address = request.client.host if request.client else "unknown"
    return await service.login(
        session, email=form.username, password=form.password, address=address, auth=auth
    )


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    tags=["auth"],
    summary="Exchange a refresh token for new tokens (the old one is spent)",
    responses=problem_responses({401: "Invalid, expired, revoked or reused token"}),
)
async def refresh(data: RefreshIn, session: SessionDep, auth: AuthDep) -> TokenOut:
    return await service.refresh(session, token=data.refresh_token, auth=auth)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["auth"],
    summary="Revoke a refresh token and every token rotated from it",
)
async def logout(data: RefreshIn, session: SessionDep) -> None:
    await service.logout(session, token=data.refresh_token)


@router.get(
    "/users/me", response_model=UserOut, tags=["users"], summary="Your profile", responses=ERRORS
)
async def me(principal: CurrentPrincipal, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await service.get_user(session, principal.user_id))


@router.patch(
    "/users/me",
    response_model=UserOut,
    tags=["users"],
    summary="Change your display name, time zone or email notifications",
    responses=ERRORS,
)
async def patch_me(patch: UserPatch, principal: CurrentPrincipal, session: SessionDep) -> UserOut:
    user = await service.update_me(session, user_id=principal.user_id, patch=patch)
    return UserOut.model_validate(user)


@router.get(
    "/users",
    response_model=UserPage,
    tags=["users"],
    summary="List accounts (administrators)",
    responses={**ERRORS, **NOT_ADMIN},
)
async def list_users(
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[uuid.UUID | None, Query(description="`next_cursor` of the last page")] = None,
) -> UserPage:
    users = await UserRepository(session).page(after=cursor, limit=limit + 1)
    items = [UserOut.model_validate(u) for u in users[:limit]]
    next_cursor = str(items[-1].id) if len(users) > limit else None
    return UserPage(items=items, next_cursor=next_cursor)


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    tags=["users"],
    summary="One account (administrators and services)",
    responses={**ERRORS, **NOT_ADMIN},
)
async def get_user(user_id: uuid.UUID, _reader: AccountReader, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await service.get_user(session, user_id))


jwks_router = APIRouter()


@jwks_router.get(
    "/.well-known/jwks.json", tags=["auth"], summary="Public keys that verify access tokens"
)
async def jwks(auth: AuthDep) -> dict[str, Any]:
    return auth.signer.jwks
