"""Access tokens: what the verifier accepts and what it refuses."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from smarttasks.core.auth import StaticKeys, TokenVerifier
from smarttasks.core.errors import Unauthorized
from smarttasks.users.tokens import TokenSigner, generate_private_key_pem

ISSUER, AUDIENCE = "smarttasks", "smarttasks-api"


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner(
        generate_private_key_pem(), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=900
    )


@pytest.fixture(scope="module")
def verifier(signer: TokenSigner) -> TokenVerifier:
    return TokenVerifier(StaticKeys(signer.jwks), issuer=ISSUER, audience=AUDIENCE)


def _forge(signer: TokenSigner, **overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "typ": "access",
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, signer._key, algorithm="ES256", headers={"kid": signer.kid})


async def test_a_fresh_token_verifies(signer: TokenSigner, verifier: TokenVerifier) -> None:
    user_id = uuid.uuid4()
    token = signer.access_token(user_id=user_id, email="a@example.com", roles=["admin"])
    principal = await verifier.verify(token)
    assert principal.user_id == user_id and principal.is_admin


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 10},
        {"exp": None},
        {"iss": "someone-else"},
        {"iss": None},
        {"aud": "another-api"},
        {"aud": None},
        {"typ": "refresh"},
        {"sub": "not-a-uuid"},
    ],
)
async def test_claims_are_enforced(
    signer: TokenSigner, verifier: TokenVerifier, overrides: dict[str, object]
) -> None:
    with pytest.raises(Unauthorized):
        await verifier.verify(_forge(signer, **overrides))


async def test_other_keys_and_algorithms_are_refused(
    signer: TokenSigner, verifier: TokenVerifier
) -> None:
    stranger = TokenSigner(
        generate_private_key_pem(), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=900
    )
    foreign = stranger.access_token(user_id=uuid.uuid4(), email="x@example.com", roles=[])
    hs256 = jwt.encode(
        {"sub": "x"},
        "secret-key-of-enough-length-32b!",
        algorithm="HS256",
        headers={"kid": signer.kid},
    )
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none", headers={"kid": signer.kid})
    for token in (foreign, hs256, unsigned, "a.b.c", ""):
        with pytest.raises(Unauthorized):
            await verifier.verify(token)


def test_jwks_publishes_only_the_public_key(signer: TokenSigner) -> None:
    (key,) = signer.jwks["keys"]
    assert key["kty"] == "EC" and key["alg"] == "ES256" and key["kid"] == signer.kid
    assert "d" not in key


def test_only_p256_keys_are_accepted() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        TokenSigner(p384.decode(), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=900)


class CountingKeys(StaticKeys):
    """Counts key lookups: each one is a signature check the verifier could not skip."""

    lookups = 0

    async def get_key(self, kid: str) -> jwt.PyJWK:
        self.lookups += 1
        return await super().get_key(kid)


async def test_a_verified_token_is_remembered_until_it_expires(signer: TokenSigner) -> None:
    now = [time.time()]
    keys = CountingKeys(signer.jwks)
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, clock=lambda: now[0])
    token = _forge(signer, exp=int(now[0]) + 30)
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert keys.lookups == 1
    # Past its `exp`, the token is checked again (and the real check refuses it then).
    now[0] += 31
    await verifier.verify(token)
    assert keys.lookups == 2
    # Another token is never answered from the first one's entry.
    other = _forge(signer)
    assert (await verifier.verify(other)).user_id != first.user_id
    assert keys.lookups == 3


async def test_a_refused_token_is_not_remembered(signer: TokenSigner) -> None:
    keys = CountingKeys(signer.jwks)
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    token = _forge(signer, typ="refresh")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await verifier.verify(token)
    assert keys.lookups == 2
