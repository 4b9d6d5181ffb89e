"""Signing access tokens (ES256) and minting opaque refresh tokens."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smarttasks.core.auth import ALGORITHMS


def generate_private_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_or_create_key(*, pem: str, path: str) -> str:
    """The configured key, or one kept in `path` (created with mode 0600 on first use)."""
    if pem:
        return pem
    if not path:
        return generate_private_key_pem()
    file = Path(path)
    if file.exists():
        return file.read_text()
    file.parent.mkdir(parents=True, exist_ok=True)
    created = generate_private_key_pem()
    file.touch(mode=0o600)
    file.write_text(created)
    return created


class TokenSigner:
    """Issues access tokens and publishes the matching public key as a JWKS."""

    def __init__(self, private_key_pem: str, *, issuer: str, audience: str, ttl_seconds: int):
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the signing key must be an EC P-256 private key")
        self._key = key
        public_jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(
            key.public_key(), as_dict=True
        )
        thumb_input = '{{"crv":"{crv}","kty":"{kty}","x":"{x}","y":"{y}"}}'.format(**public_jwk)
        self.kid = jwt.utils.base64url_encode(
            hashlib.sha256(thumb_input.encode()).digest()
        ).decode()
        self._jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHMS[0]}
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def access_token(self, *, user_id: uuid.UUID, email: str, roles: list[str]) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "email": email,
            "roles": roles,
            "typ": "access",
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHMS[0], headers={"kid": self.kid})


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are stored only as this hash: a database leak does not leak sessions."""
    return hashlib.sha256(token.encode()).hexdigest()
