"""Settings of the notification service (env prefix `SMARTTASKS_`), documented field by field."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from smarttasks.core.settings import Environment, ServiceSettings


class SmtpSecurity(StrEnum):
    """How the SMTP connection is protected."""

    STARTTLS = "starttls"  # plain connect, then upgrade; submission port 587
    TLS = "tls"  # TLS from the first byte ("SMTPS"); port 465
    NONE = "none"  # no TLS at all; only for a relay on the same host or in tests


class SecretSource(StrEnum):
    """Where webhook signing keys named by a rule's `secretRef` are read from."""

    KUBERNETES = "kubernetes"  # a Secret in the rule's namespace (cluster mode)
    STATIC = "static"  # `webhook_secrets` below (embedded mode, tests)


class NotificationsSettings(ServiceSettings):
    """How the notification service sends email and webhooks, and how it retries."""

    # --- email -------------------------------------------------------------------------
    smtp_host: str = Field(
        default="",
        description=(
            "SMTP server to submit email to. Empty: no server, every email is written as an "
            "`.eml` file under `outbox_dir` instead (embedded mode)."
        ),
    )
    smtp_port: int = Field(
        default=587, ge=1, le=65535, description="SMTP port; 587 for STARTTLS, 465 for TLS."
    )
    smtp_security: SmtpSecurity = Field(
        default=SmtpSecurity.STARTTLS,
        description="starttls, tls or none. STARTTLS is required, never opportunistic.",
    )
    smtp_validate_certs: bool = Field(
        default=True, description="Verify the server certificate; turn off only for test relays."
    )
    smtp_username: str = Field(default="", description="SMTP AUTH user; empty: no AUTH.")
    smtp_password: str = Field(default="", description="SMTP AUTH password.", repr=False)
    smtp_timeout_seconds: float = Field(
        default=30.0, gt=0, le=300, description="Per SMTP command; a slow server is a retry."
    )
    smtp_pool_size: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "SMTP connections kept open and reused. More connections send in parallel; most "
            "relays limit connections per client, so keep this small."
        ),
    )
    mail_from: str = Field(
        default="SmartTasks <notifications@smarttasks.local>",
        description="`From` header and envelope sender, `Name <address>` or a bare address.",
    )
    message_id_domain: str = Field(
        default="smarttasks.local",
        description="Right-hand side of `Message-ID: <notification-id@domain>`.",
    )
    outbox_dir: str = Field(
        default=".smarttasks/outbox",
        description="Folder for `.eml` files when `smtp_host` is empty.",
    )

    # --- webhooks ----------------------------------------------------------------------
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Whole-request timeout of a webhook POST; a timeout is retried.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description=(
            "Allow webhook targets on loopback, private, link-local and other non-public "
            "addresses. Off by default so a rule cannot make the service probe its own network."
        ),
    )
    webhook_max_connections: int = Field(
        default=100, ge=1, le=1000, description="Open HTTP connections across all webhook hosts."
    )
    webhook_per_host_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Requests in flight to one host. Spares receivers a burst, and is faster than "
            "many parallel connections to one host."
        ),
    )
    secret_source: SecretSource = Field(
        default=SecretSource.STATIC,
        description="Where `secretRef`s are resolved: kubernetes (cluster) or static.",
    )
    webhook_secrets: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description=(
            'Static signing keys, `{"namespace/name/key": "whsec_..."}` (JSON in the '
            "environment); used when `secret_source` is static."
        ),
    )
    secret_cache_seconds: float = Field(
        default=60.0, ge=0, description="How long a Secret read from Kubernetes is reused."
    )

    # --- recipients --------------------------------------------------------------------
    users_api_url: str = Field(
        default="",
        description=(
            "Base URL of the users service (e.g. http://users:8000), whose "
            "`GET /api/v1/users/{id}` resolves `owner`/`assignee` to addresses."
        ),
    )
    users_api_token: str = Field(
        default="", repr=False, description="Service credential (bearer token) for that API."
    )
    users_api_token_file: str = Field(
        default="",
        description="File holding the service credential; re-read when it changes (rotation).",
    )
    users_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long a looked-up user (address, name, email preference) is reused. A changed "
            "preference takes effect within this time."
        ),
    )

    # --- retries -----------------------------------------------------------------------
    max_attempts: int = Field(
        default=8, ge=1, le=50, description="Attempts before a delivery is dead-lettered."
    )
    retry_base_seconds: float = Field(
        default=10.0, gt=0, description="Delay before the second attempt (before jitter)."
    )
    retry_factor: float = Field(
        default=3.0, ge=1, description="Each further delay is this many times the previous."
    )
    retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="No delay between attempts is longer than this."
    )
    retry_jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description=(
            "Fraction of each delay that is random, so deliveries failing together do not "
            "retry together (0: exact schedule; 1: anywhere between 0 and the delay)."
        ),
    )

    # --- delivery worker ---------------------------------------------------------------
    worker_enabled: bool = Field(
        default=True, description="Run the delivery worker in this process's lifespan."
    )
    consumer_enabled: bool = Field(
        default=True,
        description=(
            "Consume `notification.requested` from RabbitMQ in this process (cluster mode; "
            "broker and tuning from the `SMARTTASKS_AMQP_URL` and `SMARTTASKS_CONSUMER_*` "
            "settings)."
        ),
    )
    worker_count: int = Field(
        default=1,
        ge=0,
        le=32,
        description=(
            "Delivery workers in this process. Workers claim rows with SKIP LOCKED, so any "
            "number of them (and of replicas) can run at once."
        ),
    )
    worker_batch_size: int = Field(
        default=200, ge=1, le=1000, description="Due deliveries one worker claims at a time."
    )
    worker_concurrency: int = Field(
        default=100, ge=1, le=1000, description="Sends one worker has in flight at once."
    )
    worker_lease_seconds: float = Field(
        default=120.0,
        ge=5,
        description=(
            "A claimed delivery is due again after this long if its worker died mid-send; "
            "longer than the slowest send."
        ),
    )
    worker_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Longest sleep without a wake-up; the worker also wakes at the next due retry "
            "and on every new delivery (LISTEN/NOTIFY)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> NotificationsSettings:
        if self.environment is Environment.PROD:
            if self.webhook_allow_private:
                raise ValueError("SMARTTASKS_WEBHOOK_ALLOW_PRIVATE must not be true in prod")
            if self.smtp_host and self.smtp_security is SmtpSecurity.NONE and self.smtp_password:
                raise ValueError("SMTP AUTH without TLS would send the password in clear")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("retry_max_seconds must be at least retry_base_seconds")
        return self
