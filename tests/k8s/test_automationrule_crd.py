"""The AutomationRule CRD as users meet it: install, samples, kubectl get/explain, status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.k8s import CRD_FILE, REPO_ROOT, ControlPlane

pytestmark = pytest.mark.k8s

SAMPLES = REPO_ROOT / "manifests" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))


def _schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _schema_nodes(node["items"], f"{path}[]")


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_schema_field_is_described_and_bounded() -> None:
    undescribed, unbounded = [], []
    for path, node in _schema_nodes(_crd_schema(), "AutomationRule"):
        if path == "AutomationRule.metadata":
            continue  # the API server allows nothing but its type there
        if not node.get("description", "").strip():
            undescribed.append(path)
        if path.startswith(("AutomationRule.apiVersion", "AutomationRule.kind")):
            continue
        is_free_text = node.get("type") == "string" and not {"enum", "format"} & node.keys()
        if is_free_text and "maxLength" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)

    assert undescribed == []
    assert unbounded == []


def test_crd_is_established_with_names(k8s: ControlPlane, automationrule_crd: str) -> None:
    crd = json.loads(k8s.kubectl("get", "crd", automationrule_crd, "-o", "json").stdout)

    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["ar"]
    assert crd["status"]["acceptedNames"]["categories"] == ["smarttasks"]


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_sample_applies_server_side(
    k8s: ControlPlane, automationrule_crd: str, namespace: str, sample: Path
) -> None:
    k8s.kubectl(
        "apply", "--server-side", "--validate=strict", "--field-manager=smarttasks-tests",
        "-n", namespace, "-f", str(sample),
    )  # fmt: skip

    doc = yaml.safe_load(sample.read_text())
    stored = json.loads(
        k8s.kubectl(
            "get", doc["kind"], doc["metadata"]["name"], "-n", namespace, "-o", "json"
        ).stdout
    )
    if doc["kind"] == "AutomationRule":
        assert stored["spec"]["enabled"] is True  # defaulted
        assert stored["spec"]["trigger"] == doc["spec"]["trigger"]


def test_samples_cover_every_kind_of_rule() -> None:
    rules = [
        yaml.safe_load(p.read_text())
        for p in SAMPLE_FILES
        if yaml.safe_load(p.read_text())["kind"] == "AutomationRule"
    ]
    events = {r["spec"]["trigger"]["event"] for r in rules}
    channels = {a["notify"]["channel"] for r in rules for a in r["spec"]["actions"]}
    secret_refs = {
        a["notify"]["secretRef"]["name"]
        for r in rules
        for a in r["spec"]["actions"]
        if "secretRef" in a["notify"]
    }
    secrets = {
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in SAMPLE_FILES
        if yaml.safe_load(p.read_text())["kind"] == "Secret"
    }

    assert {
        "TaskOverdue",
        "DeadlineApproaching",
        "TaskCompleted",
        "TaskUpdated",
        "Schedule",
    } <= events
    assert channels == {"email", "webhook"}
    assert secret_refs <= secrets


def test_get_shows_the_printer_columns(
    k8s: ControlPlane, automationrule_crd: str, namespace: str
) -> None:
    k8s.kubectl("apply", "--server-side", "-n", namespace, "-f", str(SAMPLES))

    header, *rows = k8s.kubectl("get", "ar", "-n", namespace).stdout.splitlines()

    assert header.split() == ["NAME", "EVENT", "READY", "FIRED", "LAST", "FIRED", "AGE"]
    assert len(rows) == len([p for p in SAMPLE_FILES if "kind: AutomationRule" in p.read_text()])
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["overdue-high-priority"][1] == "TaskOverdue"
    # The category groups rules with the rest of SmartTasks' resources.
    listed = k8s.kubectl("get", "smarttasks", "-n", namespace, "-o", "name").stdout.split()
    assert "automationrule.smarttasks.io/weekday-digest" in listed


def test_status_subresource_feeds_the_columns(
    k8s: ControlPlane, automationrule_crd: str, namespace: str
) -> None:
    k8s.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(SAMPLES / "overdue-high-priority.yaml")
    )
    status = {
        "status": {
            "observedGeneration": 1,
            "firedCount": 3,
            "lastFiredAt": "2026-01-05T09:00:00Z",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Compiled",
                    "message": "rule compiled",
                    "lastTransitionTime": "2026-01-05T08:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        }
    }

    k8s.kubectl(
        "patch", "ar", "overdue-high-priority", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip

    row = k8s.kubectl("get", "ar", "overdue-high-priority", "-n", namespace, "--no-headers").stdout
    assert row.split()[1:4] == ["TaskOverdue", "True", "3"]
    # Writing status through the main resource is ignored, and spec through status too.
    k8s.kubectl(
        "patch", "ar", "overdue-high-priority", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"firedCount": 99}}),
    )  # fmt: skip
    fired = k8s.kubectl(
        "get", "ar", "overdue-high-priority", "-n", namespace, "-o", "jsonpath={.status.firedCount}"
    ).stdout
    assert fired == "3"


def test_status_refuses_a_malformed_condition(
    k8s: ControlPlane, automationrule_crd: str, namespace: str
) -> None:
    k8s.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(SAMPLES / "overdue-high-priority.yaml")
    )
    bad = {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}

    proc = k8s.kubectl(
        "patch", "ar", "overdue-high-priority", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(bad), check=False,
    )  # fmt: skip

    assert proc.returncode != 0
    assert "status.conditions[0].status" in proc.stderr
    assert "status.conditions[0].lastTransitionTime: Required value" in proc.stderr


def test_explain_shows_the_descriptions(k8s: ControlPlane, automationrule_crd: str) -> None:
    # The OpenAPI document is republished shortly after the CRD is established; until
    # then explain does not know the resource, so poll with a deadline.
    deadline = time.monotonic() + 30
    while True:
        proc = k8s.kubectl("explain", "automationrule.spec.trigger", check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "GROUP: smarttasks.io" in text
    assert "When the rule fires." in text
    assert "DeadlineApproaching only, and required there" in text
    assert "enum: TaskCreated, TaskUpdated" in text
    assert "-required-" in proc.stdout  # event

    notify = k8s.kubectl("explain", "ar.spec.actions.notify.url").stdout
    assert "Webhook only, and required there" in " ".join(notify.split())
