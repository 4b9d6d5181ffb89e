"""Settings shared by every deployable; each component subclasses `ServiceSettings`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SMARTTASKS_"


class Environment(StrEnum):
    """Where the process runs; `dev` relaxes secret checks and logs for humans."""

    DEV = "dev"
    TEST = "test"
    PROD = "prod"


class ServiceSettings(BaseSettings):
    """Settings every service needs: where its database is, how to log, how to verify JWTs.

    Loaded from `SMARTTASKS_*` environment variables at start-up (never at import time).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Environment = Field(
        default=Environment.DEV, description="dev, test or prod; prod refuses unsafe defaults."
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of PostgreSQL, e.g. postgresql+psycopg://user:pw@host/db.",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=200,
        description=(
            "The most connections one engine opens; each is kept once opened, and work "
            "beyond that many waits for one."
        ),
    )
    log_level: str = Field(default="INFO", description="Lowest level that is logged.")
    log_json: bool | None = Field(
        default=None, description="JSON log lines; default: on in prod, off in dev."
    )
    jwt_issuer: str = Field(default="smarttasks", description="Expected `iss` claim.")
    jwt_audience: str = Field(default="smarttasks-api", description="Expected `aud` claim.")
    jwks_url: str = Field(
        default="",
        description="Where the users service publishes its JWKS; empty in embedded mode.",
    )
    http_max_in_flight: int = Field(
        default=200,
        ge=0,
        le=100_000,
        description=(
            "Requests one process serves at once; more are answered 503 with Retry-After "
            "instead of queueing without bound. 0: no limit."
        ),
    )
    jwks_cache_seconds: int = Field(
        default=300, ge=1, description="How long fetched signing keys are trusted before refetch."
    )

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.environment is Environment.PROD

    @model_validator(mode="after")
    def _refuse_unsafe_prod(self) -> ServiceSettings:
        if self.environment is Environment.PROD and not self.database_url:
            raise ValueError("SMARTTASKS_DATABASE_URL must be set in prod")
        return self
