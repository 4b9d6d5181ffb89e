"""Accounts, login, refresh-token rotation and the JWKS, against the real PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import jwt
import pytest
from fastapi import FastAPI

from smarttasks.gateway.composition import create_embedded_app
from tests.fixtures.api import PASSWORD, UserFactory, login, settings_for

pytestmark = pytest.mark.integration


def _email() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@example.com"


async def test_register_returns_the_account(client: httpx.AsyncClient) -> None:
    email = _email()
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "Zoë Ängström"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == email
    assert body["display_name"] == "Zoë Ängström"
    assert body["is_admin"] is False
    assert "password" not in response.text and "hash" not in response.text


async def test_duplicate_email_is_a_conflict_whatever_the_case(client: httpx.AsyncClient) -> None:
    email = _email()
    body = {"email": email, "password": PASSWORD, "display_name": "A"}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
    again = await client.post("/api/v1/auth/register", json={**body, "email": email.upper()})
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short1234", "at least 10"), ("SAME-AS-EMAIL", "email")],
)
async def test_weak_passwords_are_refused(
    client: httpx.AsyncClient, password: str, reason: str
) -> None:
    email = "same-as-email@example.com" if password == "SAME-AS-EMAIL" else _email()
    response = await client.post(
        "/api/v1/auth/register",
        json={
            "email": email,
            "password": password.replace("SAME-AS-EMAIL", email),
            "display_name": "A",
        },
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors[0]["field"] == "password"
    assert reason in errors[0]["message"]


async def test_token_is_an_es256_jwt_with_the_required_claims(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    header = jwt.get_unverified_header(user.access_token)
    assert header["alg"] == "ES256"
    jwks = (await client.get("/.well-known/jwks.json")).json()
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == header["kid"]))
    claims = jwt.decode(user.access_token, key.key, algorithms=["ES256"], audience="smarttasks-api")
    assert claims["sub"] == str(user.id)
    assert claims["iss"] == "smarttasks"
    assert claims["exp"] - claims["iat"] == 15 * 60


async def test_wrong_password_and_unknown_account_look_the_same(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    wrong = await login(client, user.email, "not the password at all")
    unknown = await login(client, _email())
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != user.refresh_token
    # Presenting the spent token again is what a thief would do: everything is revoked.
    reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reuse.status_code == 401
    assert "revoked" in reuse.json()["detail"]
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": rotated})
    assert after.status_code == 401


async def test_logout_revokes_the_refresh_token(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh_token})
    assert out.status_code == 204
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert again.status_code == 401


async def test_profile_can_be_read_and_changed(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    patch = await client.patch(
        "/api/v1/users/me",
        headers=user.headers,
        json={"display_name": "Grace", "time_zone": "Europe/Berlin", "email_notifications": False},
    )
    assert patch.status_code == 200, patch.text
    me = (await client.get("/api/v1/users/me", headers=user.headers)).json()
    assert (me["display_name"], me["time_zone"], me["email_notifications"]) == (
        "Grace",
        "Europe/Berlin",
        False,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"time_zone": "Mars/Olympus_Mons"},
        {"time_zone": "../../etc/passwd"},
        {"display_name": ""},
        {"is_admin": True},
        {"email_notifications": "sometimes"},
    ],
)
async def test_profile_changes_are_validated(
    client: httpx.AsyncClient, make_user: UserFactory, body: dict[str, object]
) -> None:
    user = await make_user()
    response = await client.patch("/api/v1/users/me", headers=user.headers, json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == next(iter(body))


async def test_only_admins_list_users(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user()
    admin = await make_user(admin=True)
    assert (await client.get("/api/v1/users", headers=user.headers)).status_code == 403
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/users", headers=admin.headers, params=params)).json()
        seen += [u["email"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert user.email in seen and admin.email in seen
    assert len(seen) == len(set(seen))


async def test_no_token_or_a_forged_token_is_401(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    assert (await client.get("/api/v1/users/me")).status_code == 401
    head, body, _sig = user.access_token.split(".")
    forged_none = jwt.encode({"sub": str(user.id)}, None, algorithm="none")
    for token in (f"{head}.{body}.AAAA", forged_none, "garbage", ""):
        response = await client.get(
            "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"] == "Bearer"


async def test_login_is_rate_limited_per_account(database_url: str) -> None:
    app: FastAPI = create_embedded_app(
        settings_for(database_url, login_max_per_account=3, login_max_per_address=1000),
        background=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            email = _email()
            await client.post(
                "/api/v1/auth/register",
                json={"email": email, "password": PASSWORD, "display_name": "A"},
            )
            codes = [(await login(client, email, "wrong password!")).status_code for _ in range(3)]
            assert codes == [401, 401, 401]
            limited = await login(client, email)  # even the right password waits now
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 300
            other = _email()
            await client.post(
                "/api/v1/auth/register",
                json={"email": other, "password": PASSWORD, "display_name": "B"},
            )
            assert (await login(client, other)).status_code == 200


async def test_login_is_rate_limited_per_client_address(database_url: str) -> None:
    app = create_embedded_app(
        settings_for(database_url, login_max_per_account=1000, login_max_per_address=4),
        background=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = [(await login(client, _email())).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 401, 429]


async def test_a_service_reads_accounts_with_the_service_token_and_nothing_else(
    database_url: str,
) -> None:
    secret = "s" * 40
    app = create_embedded_app(settings_for(database_url, service_token=secret), background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            email = _email()
            registered = await client.post(
                "/api/v1/auth/register",
                json={"email": email, "password": PASSWORD, "display_name": "Ada"},
            )
            user_id = registered.json()["id"]
            token = (await login(client, email)).json()["access_token"]

            async def get(bearer: str) -> httpx.Response:
                return await client.get(
                    f"/api/v1/users/{user_id}", headers={"Authorization": f"Bearer {bearer}"}
                )

            read = await get(secret)
            assert read.status_code == 200 and read.json()["email"] == email
            # Nearly the secret, or a user's own token, is not enough.
            assert (await get(secret[:-1] + "t")).status_code == 401
            assert (await get(token)).status_code == 403
            # The service token is no access token anywhere else.
            me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"})
            assert me.status_code == 401


def test_a_short_service_token_is_refused_at_start(database_url: str) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        settings_for(database_url, service_token="short").read_service_token()
