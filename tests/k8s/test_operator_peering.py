"""Two replicas with mandatory peering: one handles rules, the other stands by and takes over."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from smarttasks.automation.operator_settings import OperatorSettings, PeeringMode
from tests.fixtures.k8s import ControlPlane
from tests.k8s.test_operator import (  # noqa: F401 - a fixture
    Operator,
    eventually,
    observed,
    operator_kubeconfig,
    rule_manifest,
    simple_spec,
    wait_for,
)

pytestmark = pytest.mark.k8s

# kopf's cluster-wide peering resource, as its documentation ships it (peering.yaml).
PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Cluster",
        "names": {"plural": "clusterkopfpeerings", "singular": "clusterkopfpeering",
                  "kind": "ClusterKopfPeering"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def peering_name(k8s: ControlPlane, automationrule_crd: str) -> str:
    """A fresh ClusterKopfPeering object (the chart creates one per installation)."""
    k8s.kubectl("apply", "-f", "-", input=json.dumps(PEERING_CRD))
    k8s.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev")
    name = f"smarttasks-{uuid.uuid4().hex[:8]}"
    k8s.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ),
    )
    return name


@pytest.fixture(scope="module")
def peering_api(k8s: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    raw = config.new_client_from_config(config_file=str(k8s.kubeconfig))
    yield client.CustomObjectsApi(raw)
    raw.close()


def replica(kubeconfig: Path, peering: str, priority: int) -> Operator:
    return Operator(
        OperatorSettings(
            operator_kubeconfig=str(kubeconfig),
            operator_peering_mode=PeeringMode.MANDATORY,
            operator_peering_name=peering,
            operator_peering_priority=priority,
            operator_peering_lifetime_seconds=10,
            operator_liveness_port=None,
            operator_engine_enabled=False,
        )
    )


def test_the_standby_replica_takes_over_when_the_active_one_stops(
    k8s: ControlPlane,
    operator_kubeconfig: Path,  # noqa: F811 - the fixture imported above
    peering_name: str,
    peering_api: client.CustomObjectsApi,
    namespace: str,
) -> None:
    def peers() -> dict[str, Any]:
        found = peering_api.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering_name
        )
        return dict(found.get("status") or {})

    active = replica(operator_kubeconfig, peering_name, priority=200)
    standby = replica(operator_kubeconfig, peering_name, priority=100)
    active.start()
    try:
        eventually(lambda: len(peers()) == 1)
        standby.start()
        eventually(lambda: len(peers()) == 2)
        assert sorted(p["priority"] for p in peers().values()) == [100, 200]

        k8s.kubectl(
            "apply", "-n", namespace, "-f", "-", input=rule_manifest("first", simple_spec())
        )
        wait_for(peering_api, namespace, "first", observed(1, "True"))
        handled_by_standby = standby.handled

        active.stop()
        eventually(lambda: len(peers()) == 1)  # a clean exit removes its record at once
        started = time.monotonic()
        k8s.kubectl(
            "apply", "-n", namespace, "-f", "-", input=rule_manifest("second", simple_spec())
        )
        wait_for(peering_api, namespace, "second", observed(1, "True"))
        took_over = time.monotonic() - started
        resumed_first = standby.rules.by_key(f"{namespace}/first") is not None
    finally:
        standby.stop()
        active.stop()

    assert handled_by_standby == 0  # paused while the active replica ran
    assert resumed_first  # then it took over every rule ...
    assert took_over < 10, took_over  # ... and handled new ones, at once after a clean exit
