"""Settings of the automation operator, and the kopf settings made from them.

Every field says what it means, its unit and default, and why the default is what it
is, in the manner of kopf's own ``configuration.py``. Values come from ``SMARTTASKS_*``
environment variables, read at start-up.
"""

from __future__ import annotations

import logging
import secrets
from enum import StrEnum
from typing import Annotated, Any

import kopf
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from smarttasks.automation import API_GROUP
from smarttasks.core.settings import ServiceSettings

ANNOTATIONS_PREFIX = f"automation.{API_GROUP}"
"""Prefix of every annotation the operator writes (kopf's progress and last-handled spec)."""
FINALIZER = f"{ANNOTATIONS_PREFIX}/finalizer"
"""Finalizer that keeps a rule until the operator has let go of it."""
LAST_HANDLED = "last-handled-configuration"


class PeeringMode(StrEnum):
    """How replicas of the operator find each other (kopf peering)."""

    AUTO = "auto"
    """Use the peering object if it exists, run alone otherwise (kopf's auto-detection)."""
    MANDATORY = "mandatory"
    """Require the peering object: a standby replica waits while another one is active."""
    STANDALONE = "standalone"
    """Never peer: only for a single replica (development, tests)."""


class OperatorSettings(ServiceSettings):
    """How the automation operator runs (env prefix ``SMARTTASKS_``)."""

    operator_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Namespaces whose AutomationRules the operator serves, comma-separated "
            "(SMARTTASKS_OPERATOR_NAMESPACES=team-a,team-b). Empty (the default) means every "
            "namespace, which needs a ClusterRole; naming namespaces works with Roles in "
            "just those. Exact names only: patterns would need the right to list namespaces."
        ),
    )
    operator_kubeconfig: str = Field(
        default="",
        description=(
            "Path of a kubeconfig to authenticate with. Empty (the default) means the pod's "
            "ServiceAccount when in a cluster, else the usual KUBECONFIG/~/.kube/config."
        ),
    )
    operator_peering_mode: PeeringMode = Field(
        default=PeeringMode.AUTO,
        description=(
            "auto, mandatory or standalone (see PeeringMode). The chart runs two replicas "
            "with mandatory peering: one handles rules, the other stands by."
        ),
    )
    operator_peering_name: str = Field(
        default="smarttasks-automation",
        min_length=1,
        max_length=253,
        description=(
            "Name of the (Cluster)KopfPeering object replicas meet at. Distinct names keep "
            "distinct installations in one cluster from pausing each other."
        ),
    )
    operator_peering_priority: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description=(
            "This replica's priority; the highest live one is active. Unset (the default) "
            "picks a random one at start, because kopf pauses every replica when two share "
            "a priority, and replicas of a Deployment cannot be told apart otherwise."
        ),
    )
    operator_peering_lifetime_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description=(
            "Seconds a replica's peering record counts as alive without renewal. A standby "
            "takes over at most this long after the active replica died; shorter means "
            "faster failover and more keep-alive PATCHes."
        ),
    )
    operator_watch_server_timeout_seconds: int = Field(
        default=300,
        ge=10,
        le=3600,
        description=(
            "Seconds the API server keeps one watch request open before ending it; the "
            "operator then re-lists and watches again. The server's own default is random "
            "between 30 and 60 minutes; 5 minutes bounds how long a watch that a load "
            "balancer silently dropped can go unnoticed, at the cost of one LIST per 5 min."
        ),
    )
    operator_watch_client_timeout_seconds: int = Field(
        default=330,
        ge=15,
        le=3660,
        description=(
            "Seconds the operator waits for a watch request to end on its own before "
            "cutting it. A little longer than the server timeout, so the server normally "
            "closes first and a stuck connection is still cut."
        ),
    )
    operator_connect_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds to establish a connection to the API server before retrying.",
    )
    operator_request_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description=(
            "Seconds one non-watch API request (PATCH of status, finalizers) may take. "
            "kopf's default is 5 minutes; a minute is plenty and keeps a hung request from "
            "stalling a rule's handling for long."
        ),
    )
    operator_event_level: str = Field(
        default="WARNING",
        description=(
            "Lowest level of the operator's log lines about a rule (and of its own Events) "
            "that are posted as Kubernetes Events on the rule, for kubectl describe. "
            "WARNING (the default) posts problems (a rule that does not compile, a failing "
            "handler) but not every successful handling, which would be one Event per change."
        ),
    )
    operator_liveness_port: int | None = Field(
        default=8080,
        ge=1,
        le=65535,
        description=(
            "Port of the liveness endpoint (/healthz) for the pod's probe; unset disables it."
        ),
    )
    operator_engine_enabled: bool = Field(
        default=True,
        description=(
            "Run the automation engine (task events, deadlines, schedules) in the operator "
            "process. Off only where the operator is run for its rule handling alone."
        ),
    )

    @field_validator("operator_namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("operator_event_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if logging.getLevelName(value.upper()) not in range(60):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @property
    def clusterwide(self) -> bool:
        """True when the operator serves every namespace."""
        return not self.operator_namespaces


def kopf_settings(config: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings for this operator; see each field of :class:`OperatorSettings`."""
    settings = kopf.OperatorSettings()

    # Names derived from the API group, so that `kubectl get -o yaml` shows who wrote what.
    settings.persistence.finalizer = FINALIZER
    # Progress of handlers goes into annotations, not `status.kopf`: the CRD's structural
    # schema would prune an unknown status field, and kopf would then retry for ever.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key=LAST_HANDLED
    )

    settings.peering.name = config.operator_peering_name
    settings.peering.clusterwide = config.clusterwide
    settings.peering.mandatory = config.operator_peering_mode is PeeringMode.MANDATORY
    settings.peering.standalone = config.operator_peering_mode is PeeringMode.STANDALONE
    settings.peering.lifetime = config.operator_peering_lifetime_seconds
    settings.peering.priority = (
        config.operator_peering_priority
        if config.operator_peering_priority is not None
        else secrets.randbelow(2**31 - 1) + 1
    )
    settings.peering.stealth = True  # keep-alives every minute are noise in the logs

    # Watch timeouts: see operator_watch_*_timeout_seconds for why these values.
    settings.watching.server_timeout = config.operator_watch_server_timeout_seconds
    settings.watching.client_timeout = config.operator_watch_client_timeout_seconds
    settings.watching.connect_timeout = config.operator_connect_timeout_seconds
    settings.networking.connect_timeout = config.operator_connect_timeout_seconds
    settings.networking.request_timeout = config.operator_request_timeout_seconds

    # Least privilege: no list/watch of CRDs and namespaces. The CRD must exist at start
    # (the chart installs it first); served namespaces are exact names, never patterns.
    settings.scanning.disabled = True

    settings.posting.level = logging.getLevelName(config.operator_event_level)
    settings.posting.loggers = True  # kopf's own handler errors become Events too
    settings.posting.reporting_component = "smarttasks-automation"
    # A failed handling is retried after this many seconds unless the handler says otherwise.
    settings.execution.default_backoff = 30
    return settings


__all__ = [
    "ANNOTATIONS_PREFIX",
    "FINALIZER",
    "OperatorSettings",
    "PeeringMode",
    "kopf_settings",
]
