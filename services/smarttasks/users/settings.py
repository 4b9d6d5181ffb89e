"""Settings of the users service (env prefix `SMARTTASKS_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from smarttasks.core.settings import Environment, ServiceSettings


class UsersSettings(ServiceSettings):
    """How the users service signs tokens and guards logins."""

    signing_key_pem: str = Field(
        default="",
        description="EC P-256 private key (PEM) that signs access tokens; required in prod.",
        repr=False,
    )
    signing_key_file: str = Field(
        default="",
        description="Path of a PEM file holding the signing key; created on first use in dev.",
    )
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=3600)
    redis_url: str = Field(default="", description="Redis for shared login rate limits.")
    login_window_seconds: int = Field(default=300, ge=1, description="Rate-limit window.")
    login_max_per_account: int = Field(
        default=10, ge=1, description="Login attempts per account per window."
    )
    login_max_per_address: int = Field(
        default=100, ge=1, description="Login attempts per client address per window."
    )
    service_token: str = Field(
        default="",
        repr=False,
        description=(
            "Shared secret other services (the notification service) present as a bearer "
            "token to read accounts (`GET /api/v1/users/{id}`); empty turns it off. At "
            "least 32 characters."
        ),
    )
    service_token_file: str = Field(
        default="", description="File holding `service_token` (a mounted Secret)."
    )
    password_memory_kib: int = Field(
        default=65536, ge=1024, description="argon2id memory cost; lower only in tests."
    )

    def read_service_token(self) -> str:
        """The service token from `service_token` or its file ('' when neither is set)."""
        token = self.service_token
        if not token and self.service_token_file:
            token = Path(self.service_token_file).read_text().strip()
        if token and len(token) < 32:
            raise ValueError("the service token must be at least 32 characters")
        return token

    @model_validator(mode="after")
    def _require_key_in_prod(self) -> UsersSettings:
        if self.environment is Environment.PROD and not (
            self.signing_key_pem or self.signing_key_file
        ):
            raise ValueError("SMARTTASKS_SIGNING_KEY_PEM or _FILE must be set in prod")
        return self
