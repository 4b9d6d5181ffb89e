"""Webhook signing keys named by a rule's `secretRef`, resolved without ever carrying the key."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger()


class SecretError(Exception):
    """A signing key could not be obtained."""


class SecretNotFound(SecretError):
    """The Secret or its key does not exist (yet): creating it fixes the delivery."""


class SecretUnavailable(SecretError):
    """The secret store did not answer; worth another try."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A key of a Secret in the rule's namespace: `secretRef: {name, key}`."""

    namespace: str
    name: str
    key: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}/{self.key}"


class SecretResolver(Protocol):
    """Returns the value of a referenced secret; raises SecretError when it cannot."""

    async def resolve(self, ref: SecretRef) -> str: ...


class StaticSecretResolver:
    """Secrets known in-process, keyed `namespace/name/key` (embedded mode and tests)."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._secrets = dict(secrets or {})

    def set(self, ref: SecretRef, value: str) -> None:
        self._secrets[str(ref)] = value

    async def resolve(self, ref: SecretRef) -> str:
        try:
            return self._secrets[str(ref)]
        except KeyError:
            raise SecretNotFound(f"no secret {ref}") from None


class KubernetesSecretResolver:
    """Reads `data[key]` of a Secret through the Kubernetes API, cached for a short while.

    The service account needs `get` on `secrets` in the namespaces whose rules send webhooks.
    """

    def __init__(self, api: Any, *, cache_seconds: float = 60.0) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._ttl = cache_seconds
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    @classmethod
    def from_environment(cls, *, cache_seconds: float = 60.0) -> KubernetesSecretResolver:
        """In a pod: the mounted service account; elsewhere: the current kubeconfig."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.CoreV1Api(), cache_seconds=cache_seconds)

    async def resolve(self, ref: SecretRef) -> str:
        data = await self._data(ref.namespace, ref.name)
        if ref.key not in data:
            raise SecretNotFound(f"secret {ref.namespace}/{ref.name} has no key {ref.key!r}")
        try:
            return base64.b64decode(data[ref.key], validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise SecretNotFound(f"key {ref} is not valid base64 text") from None

    async def _data(self, namespace: str, name: str) -> dict[str, str]:
        cached = self._cache.get((namespace, name))
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        from kubernetes.client.exceptions import ApiException

        try:
            secret = await asyncio.to_thread(
                self._api.read_namespaced_secret, name, namespace, _request_timeout=10
            )
        except ApiException as exc:
            if exc.status == 404:
                raise SecretNotFound(f"no secret {namespace}/{name}") from None
            # The body may quote the request; only the status is logged.
            log.warning("secret_read_failed", namespace=namespace, name=name, status=exc.status)
            raise SecretUnavailable(
                f"reading secret {namespace}/{name}: HTTP {exc.status}"
            ) from None
        except Exception as exc:  # urllib3 and socket errors: the API server is unreachable
            raise SecretUnavailable(
                f"reading secret {namespace}/{name}: {type(exc).__name__}"
            ) from None
        data = dict(secret.data or {})
        self._cache[(namespace, name)] = (time.monotonic(), data)
        return data
