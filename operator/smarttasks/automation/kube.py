"""A Kubernetes API client configured like the operator: a kubeconfig, in-cluster, or default."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client, config

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def client_configuration(kubeconfig: str = "") -> client.Configuration:
    """Connection settings from ``kubeconfig``, else the pod's ServiceAccount, else KUBECONFIG.

    Blocking (reads files); call it at start-up or off the event loop.
    """
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    elif SERVICE_ACCOUNT_TOKEN.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, persist_config=False
        )
    return configuration


def api_client(kubeconfig: str = "") -> client.ApiClient:
    """A synchronous ``ApiClient``; use it through ``asyncio.to_thread`` in async code."""
    return client.ApiClient(client_configuration(kubeconfig))


def bearer_token(configuration: client.Configuration) -> str | None:
    """The bearer token a configuration authenticates with, if any.

    The client keeps it under ``BearerToken`` (recent releases) or ``authorization``.
    """
    keys = configuration.api_key or {}
    value = str(keys.get("BearerToken") or keys.get("authorization") or "")
    token = value.removeprefix("Bearer ").strip()
    return token or None


__all__ = ["api_client", "bearer_token", "client_configuration"]
