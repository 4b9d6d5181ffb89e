"""The chart against a real API server: server-side dry runs, helm install, and its RBAC.

The test control plane has no kubelet and no controllers: objects are validated,
admitted, stored and authorised exactly as in a cluster, but no pod ever runs. So the
migration hook Job could never complete: installs here use `--no-hooks`, and the Job's
manifest is checked by the server-side dry run instead (and by `helm get hooks`).
Pods starting for real is the end-to-end job on kind in CI (test_chart_cluster.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.k8s import REPO_ROOT, ControlPlane, require_controlplane, run_controlplane
from tests.k8s.test_chart import (
    ALL_FEATURES,
    CHART,
    COMPONENTS,
    MANIFESTS,
    MINIMAL,
    helm,
    render_operator_rbac,
    set_args,
    template_args,
)

pytestmark = pytest.mark.k8s

RELEASE = "st"
NAMESPACE = "smarttasks-test"
KIND_VALUES = CHART / "ci" / "kind-values.yaml"
SAMPLES = sorted((REPO_ROOT / "manifests" / "samples").glob("*.yaml"))
RULES = "automationrules.smarttasks.io"

# Just enough of the Prometheus Operator's CRD for a ServiceMonitor to be accepted.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def _start() -> Path:
    try:
        return require_controlplane()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """An API server of this module's own: the chart owns cluster-wide objects (the CRD,
    ClusterRoles) that other suites' fixtures would otherwise have made first."""
    with run_controlplane(_start()) as controlplane:
        yield controlplane


def _apply(cluster: ControlPlane, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))


def _namespaces(cluster: ControlPlane, *names: str) -> None:
    """Namespaces with their `default` ServiceAccount (made by the controller manager in
    a cluster; pods that name no account, like the helm test pod, need it to exist)."""
    for name in names:
        _apply(
            cluster,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name},
            },
        )


def _get(cluster: ControlPlane, *args: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", *args, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _names(items: list[dict[str, Any]]) -> set[str]:
    return {item["metadata"]["name"] for item in items}


@pytest.fixture(scope="module")
def release(cluster: ControlPlane) -> str:
    """The chart installed with its defaults (and the two required Secrets' names)."""
    _namespaces(cluster, NAMESPACE)
    _apply(cluster, SERVICE_MONITOR_CRD)
    cluster.helm(
        "install", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--no-hooks",  # the migration Job would wait for a pod that never runs here
        *set_args(MINIMAL),
    )  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{RULES}", "--timeout=60s")
    return RELEASE


# --- helm install -----------------------------------------------------------------------


def test_install_creates_the_workloads_services_and_ingress(
    cluster: ControlPlane, release: str
) -> None:
    selector = ["--namespace", NAMESPACE, "-l", f"app.kubernetes.io/instance={release}"]
    deployments = _get(cluster, "deployments", *selector)
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments}

    assert components == set(COMPONENTS)
    assert _names(_get(cluster, "services", *selector)) == {
        f"st-smarttasks-{name}" for name in COMPONENTS
    }
    assert _names(_get(cluster, "serviceaccounts", *selector)) == {
        f"st-smarttasks-{name}" for name in COMPONENTS
    }
    assert _names(_get(cluster, "ingresses", *selector)) == {"st-smarttasks"}
    assert len(_get(cluster, "poddisruptionbudgets", *selector)) == 4
    status = json.loads(cluster.helm("status", release, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


def test_install_creates_the_rbac(cluster: ControlPlane, release: str) -> None:
    label = ["-l", f"app.kubernetes.io/instance={release}"]

    assert _names(_get(cluster, "clusterroles", *label)) == {
        "st-smarttasks-operator",
        "st-smarttasks-notifications",
    }
    assert _names(_get(cluster, "clusterrolebindings", *label)) == {
        "st-smarttasks-operator",
        "st-smarttasks-notifications",
    }
    assert _names(_get(cluster, "roles", "-n", NAMESPACE, *label)) == {"st-smarttasks-rules-api"}


def test_install_creates_the_crds_and_the_peering(cluster: ControlPlane, release: str) -> None:
    crd = json.loads(cluster.kubectl("get", "crd", RULES, "-o", "json").stdout)
    peering = json.loads(
        cluster.kubectl("get", "clusterkopfpeerings.kopf.dev", "st-smarttasks", "-o", "json").stdout
    )

    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    assert peering["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    cluster.kubectl("get", "crd", "kopfpeerings.kopf.dev")


def test_migration_job_is_a_hook_and_not_part_of_a_no_hooks_install(
    cluster: ControlPlane, release: str
) -> None:
    hooks = [
        d
        for d in yaml.safe_load_all(cluster.helm("get", "hooks", release, "-n", NAMESPACE).stdout)
        if d
    ]
    job = next(h for h in hooks if h["kind"] == "Job")

    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "migrate"]
    assert _get(cluster, "jobs", "--namespace", NAMESPACE) == []


def test_generated_signing_key_is_stored_in_a_kept_secret(
    cluster: ControlPlane, release: str
) -> None:
    from smarttasks.users.tokens import TokenSigner

    secret = json.loads(
        cluster.kubectl("get", "secret", "st-smarttasks-jwt", "-n", NAMESPACE, "-o", "json").stdout
    )
    pem = base64.b64decode(secret["data"]["signing-key.pem"]).decode()

    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    TokenSigner(pem, issuer="smarttasks", audience="smarttasks-api", ttl_seconds=60)


def test_generated_service_token_is_stored_in_a_kept_secret(
    cluster: ControlPlane, release: str
) -> None:
    from smarttasks.users.settings import UsersSettings

    secret = json.loads(
        cluster.kubectl(
            "get", "secret", "st-smarttasks-service-token", "-n", NAMESPACE, "-o", "json"
        ).stdout
    )
    token = base64.b64decode(secret["data"]["service-token"]).decode()

    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert UsersSettings(service_token=token).read_service_token() == token


# --- server-side dry runs -----------------------------------------------------------------


def _dry_run(cluster: ControlPlane, manifest: str, *flags: str) -> list[str]:
    """Server-side apply as a dry run: the API server validates and admits every object."""
    proc = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server",
        "--field-manager=smarttasks-tests", *flags, "-f", "-",
        input=manifest, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _count(manifest: str) -> int:
    return sum(1 for d in yaml.safe_load_all(manifest) if d)


@pytest.mark.parametrize(
    ("case", "namespaces"),
    [
        ("default", ["dry-default"]),
        ("all-features", ["dry-all", "team-a", "team-b", "smarttasks-rules"]),
        ("manifests", ["smarttasks"]),
        ("kind", ["dry-kind"]),
    ],
    ids=["default", "all-features", "manifests", "kind"],
)
def test_every_rendered_object_passes_a_server_side_dry_run(
    cluster: ControlPlane, release: str, case: str, namespaces: list[str]
) -> None:
    # The CRDs the render refers to are real (the install made them), so the kopf
    # peering objects and the ServiceMonitor are validated against them too.
    _namespaces(cluster, *namespaces)
    if case == "manifests":
        manifest = MANIFESTS.read_text()
    elif case == "kind":  # what CI's e2e job installs, with its throwaway dependencies
        args = template_args({}, files=[KIND_VALUES], release="dry", namespace=namespaces[0])
        dependencies = (CHART / "ci" / "kind-dependencies.yaml").read_text()
        manifest = (
            helm(*args).stdout
            + "\n---\n"
            + dependencies.replace(
                "metadata:\n  name:", f"metadata:\n  namespace: {namespaces[0]}\n  name:"
            )
        )
    else:
        files = [ALL_FEATURES] if case == "all-features" else []
        args = template_args({} if files else MINIMAL, files=files, release="dry",
                             namespace=namespaces[0])  # fmt: skip
        manifest = helm(*args).stdout  # hooks and the test pod included

    accepted = _dry_run(cluster, manifest)

    assert len(accepted) == _count(manifest)
    assert all("(server dry run)" in line for line in accepted)
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if d}
    assert {"Deployment", "Service", "CustomResourceDefinition"} <= kinds
    assert ("Ingress" in kinds) is (case != "kind")  # kind has no ingress controller
    if case != "manifests":
        assert {"Job", "Pod"} <= kinds  # the migration hook and the helm test pod


def test_sample_rules_pass_a_server_side_dry_run(cluster: ControlPlane, release: str) -> None:
    _namespaces(cluster, "samples")
    manifest = "\n---\n".join(path.read_text() for path in SAMPLES)

    accepted = _dry_run(cluster, manifest, "--namespace", "samples")

    assert len(accepted) == len(SAMPLES)


def test_dry_run_refuses_a_broken_object(cluster: ControlPlane, release: str) -> None:
    """The dry run is a real check: a Deployment with a malformed field is refused."""
    documents = [d for d in yaml.safe_load_all(helm(*template_args()).stdout) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["metadata"]["namespace"] = NAMESPACE
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsUser"] = "nobody"

    proc = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-",
        input=json.dumps(deployment), check=False,
    )  # fmt: skip

    assert proc.returncode != 0
    assert "runAsUser" in proc.stderr


# --- RBAC, as the API server authorises it ------------------------------------------------


def _can(cluster: ControlPlane, kubeconfig: Path, verb: str, resource: str, *flags: str) -> bool:
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, *flags, kubeconfig=kubeconfig, check=False
    )
    return proc.stdout.strip() == "yes"


def _check(
    cluster: ControlPlane,
    kubeconfig: Path,
    allowed: list[tuple[str, ...]],
    refused: list[tuple[str, ...]],
) -> None:
    assert [a for a in allowed if not _can(cluster, kubeconfig, *a)] == []
    assert [r for r in refused if _can(cluster, kubeconfig, *r)] == []


OPERATOR_ALLOWED = [
    ("list", RULES, "-A"),
    ("watch", RULES, "-A"),
    ("patch", RULES, "-n", "team-a"),
    ("patch", RULES, "--subresource=status", "-n", "team-a"),
    ("create", "events", "-n", "team-a"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
    ("watch", "clusterkopfpeerings.kopf.dev"),
]
OPERATOR_REFUSED = [
    ("get", RULES, "-n", "team-a"),
    ("create", RULES, "-n", "team-a"),
    ("delete", RULES, "-n", "team-a"),
    ("update", RULES, "-n", "team-a"),
    ("get", "secrets", "-n", "team-a"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"),
    ("delete", "events", "-n", "team-a"),
    ("create", "pods", "-n", "team-a"),
    ("delete", "clusterkopfpeerings.kopf.dev"),
]


def test_operator_account_may_do_only_what_the_operator_needs(
    cluster: ControlPlane, release: str
) -> None:
    kubeconfig = cluster.service_account_kubeconfig(
        NAMESPACE, "st-smarttasks-operator", create=False
    )
    _check(cluster, kubeconfig, OPERATOR_ALLOWED, OPERATOR_REFUSED)


def test_render_operator_rbac_gives_a_test_account_the_operator_grants(
    cluster: ControlPlane, release: str
) -> None:
    """How the operator tests take their RBAC from the chart."""
    _namespaces(cluster, "operator-test")
    cluster.kubectl(
        "apply", "-f", "-",
        input=render_operator_rbac(
            namespace="operator-test", service_account="automation", name="optest"
        ),
    )  # fmt: skip
    kubeconfig = cluster.service_account_kubeconfig("operator-test", "automation", create=False)

    _check(cluster, kubeconfig, OPERATOR_ALLOWED, OPERATOR_REFUSED)


def test_rules_api_account_manages_rules_in_its_namespace_only(
    cluster: ControlPlane, release: str
) -> None:
    kubeconfig = cluster.service_account_kubeconfig(
        NAMESPACE, "st-smarttasks-rules-api", create=False
    )
    _check(
        cluster,
        kubeconfig,
        allowed=[
            (verb, RULES, "-n", NAMESPACE) for verb in ("get", "list", "create", "update", "delete")
        ],
        refused=[
            ("create", RULES, "-n", "team-a"),
            ("list", RULES, "-A"),
            ("patch", RULES, "-n", NAMESPACE),
            ("watch", RULES, "-n", NAMESPACE),
            ("patch", RULES, "--subresource=status", "-n", NAMESPACE),
            ("get", "secrets", "-n", NAMESPACE),
        ],
    )


def test_notifications_account_reads_named_secrets_but_cannot_list_them(
    cluster: ControlPlane, release: str
) -> None:
    kubeconfig = cluster.service_account_kubeconfig(
        NAMESPACE, "st-smarttasks-notifications", create=False
    )
    _check(
        cluster,
        kubeconfig,
        allowed=[("get", "secrets", "-n", "team-a")],
        refused=[
            ("list", "secrets", "-n", "team-a"),
            ("watch", "secrets", "-A"),
            ("list", RULES, "-A"),
            ("create", "pods", "-n", NAMESPACE),
        ],
    )


@pytest.mark.parametrize("component", ["users", "tasks", "relay"])
def test_components_that_do_not_call_the_api_may_do_nothing(
    cluster: ControlPlane, release: str, component: str
) -> None:
    kubeconfig = cluster.service_account_kubeconfig(
        NAMESPACE, f"st-smarttasks-{component}", create=False
    )
    _check(
        cluster,
        kubeconfig,
        allowed=[],
        refused=[
            ("get", "secrets", "-n", NAMESPACE),
            ("list", RULES, "-A"),
            ("list", "pods", "-n", NAMESPACE),
        ],
    )


# --- upgrade and uninstall ----------------------------------------------------------------


def test_upgrade_keeps_the_generated_secrets_and_uninstall_keeps_crd_and_secrets() -> None:
    """A whole lifecycle, on an API server of its own (it uninstalls the release)."""
    with run_controlplane(_start()) as cp:
        _namespaces(cp, "life")

        def generated() -> tuple[str, str]:
            def data(name: str, key: str) -> str:
                out = cp.kubectl("get", "secret", name, "-n", "life", "-o", "json")
                return str(json.loads(out.stdout)["data"][key])

            return (
                data("life-smarttasks-jwt", "signing-key.pem"),
                data("life-smarttasks-service-token", "service-token"),
            )

        def users_env() -> dict[str, str]:
            out = cp.kubectl("get", "deployment", "life-smarttasks-users", "-n", "life",
                             "-o", "json").stdout  # fmt: skip
            container = json.loads(out)["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: e.get("value", "") for e in container["env"]}

        install = ["--namespace", "life", "--no-hooks", *set_args(MINIMAL)]
        cp.helm("install", "life", str(CHART), *install)
        first = generated()

        cp.helm("upgrade", "life", str(CHART), *install, "--set", "logging.level=DEBUG")

        assert users_env()["SMARTTASKS_LOG_LEVEL"] == "DEBUG"
        assert generated() == first  # read back with `lookup`, not generated again

        cp.helm("uninstall", "life", "--namespace", "life", "--wait")

        assert _get(cp, "deployments", "-n", "life") == []
        cp.kubectl("get", "crd", RULES)  # crds.keep: the rules outlive the release
        assert generated() == first

        cp.helm("install", "life", str(CHART), *install)  # adopts what was kept

        assert generated() == first
