"""Authenticate with the configured kubeconfig, the pod's ServiceAccount, or the defaults."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state
from smarttasks.automation.kube import bearer_token, client_configuration


@kopf.on.login(registry=registry, retries=3, backoff=5)
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Credentials from ``SMARTTASKS_OPERATOR_KUBECONFIG`` if set, else in-cluster or default."""
    configuration = client_configuration(state(memo).config.operator_kubeconfig)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=bearer_token(configuration),
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
