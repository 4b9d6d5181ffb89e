"""The Helm chart as helm renders it: lint, schema, required values, what each object says.

These need the helm binary from the test control plane (tests/controlplane/build.sh)
but no API server; test_chart_apiserver.py applies and installs the renders for real.
The helpers at the top (helm, render, render_operator_rbac) are shared with it.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.k8s import REPO_ROOT, require_controlplane

pytestmark = pytest.mark.k8s

CHART = REPO_ROOT / "charts" / "smarttasks"
CRD_SOURCE = REPO_ROOT / "crds" / "automationrules.smarttasks.io.yaml"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
MANIFESTS = REPO_ROOT / "manifests" / "smarttasks.yaml"
RENDER_SCRIPT = REPO_ROOT / "scripts" / "render-manifests.sh"

# The least a render needs: the PostgreSQL and RabbitMQ, as Secrets made beforehand.
MINIMAL = {
    "database.existingSecret": "smarttasks-database",
    "amqp.existingSecret": "smarttasks-amqp",
}
COMPONENTS = ("users", "tasks", "rules-api", "notifications", "operator", "relay")
STATELESS = ("users", "tasks", "rules-api", "notifications")
# helm lint runs templates in "lint mode", where `required` logs instead of failing.
_LINT_REQUIRED_NOTICE = "missing required values"


@functools.cache
def _helm_env() -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix="smarttasks-helm-"))
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm_binary() -> Path:
    """helm from the test control plane (skips without it; fails under CI=true)."""
    return require_controlplane() / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm without a cluster (template, lint, show)."""
    proc = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=_helm_env(),
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def set_args(values: Mapping[str, str | int | bool]) -> list[str]:
    args = []
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={text}"]
    return args


def template_args(
    values: Mapping[str, str | int | bool] | None = None,
    *,
    files: Sequence[Path] = (),
    release: str = "st",
    namespace: str = "smarttasks",
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for file in files:
        args += ["--values", str(file)]
    return [*args, *set_args(MINIMAL if values is None else values), *extra]


def render(
    values: Mapping[str, str | int | bool] | None = None,
    *,
    files: Sequence[Path] = (),
    release: str = "st",
    namespace: str = "smarttasks",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The chart's objects (hooks and tests included) for these values."""
    args = template_args(values, files=files, release=release, namespace=namespace, extra=extra)
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_operator_rbac(
    *, namespace: str, service_account: str, name: str, namespaces: Sequence[str] = ()
) -> str:
    """The operator's ServiceAccount and RBAC exactly as the chart makes them.

    For tests that run the operator against the test API server: the ServiceAccount
    ``namespace/service_account``, bound to the chart's ClusterRole (named
    ``<name>-operator``), or to Roles in ``namespaces`` when given (the chart's
    ``operator.namespaces``). Apply it with ``k8s.kubectl("apply", "-f", "-", input=...)``
    and run the operator with ``k8s.service_account_kubeconfig(namespace,
    service_account, create=False)``.
    """
    values: dict[str, str | int | bool] = {
        **MINIMAL,
        "fullnameOverride": name,
        "operator.serviceAccount.name": service_account,
    }
    for index, served in enumerate(namespaces):
        values[f"operator.namespaces[{index}]"] = served
    return helm(
        "template", "rbac", str(CHART),
        "--namespace", namespace,
        "--show-only", "templates/operator-serviceaccount.yaml",
        "--show-only", "templates/operator-rbac.yaml",
        *set_args(values),
    ).stdout  # fmt: skip


def render_rules_api_rbac(
    *, namespace: str, service_account: str, name: str, rules_namespace: str = ""
) -> str:
    """The rules API's ServiceAccount and Role exactly as the chart makes them.

    The ServiceAccount ``namespace/service_account``, allowed to manage the
    AutomationRules of ``rules_namespace`` (default: ``namespace``) through the Role
    ``<name>-rules-api``. Apply and authenticate as for :func:`render_operator_rbac`.
    """
    return helm(
        "template", "rbac", str(CHART),
        "--namespace", namespace,
        "--show-only", "templates/rules-api-serviceaccount.yaml",
        "--show-only", "templates/rules-api-rbac.yaml",
        *set_args({
            **MINIMAL,
            "fullnameOverride": name,
            "rulesApi.serviceAccount.name": service_account,
            "rulesApi.rulesNamespace": rules_namespace,
        }),
    ).stdout  # fmt: skip


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def pod_specs(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the chart can make: Deployments, the migration Job, the test pod."""
    specs = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            specs[f"{obj['kind']}/{obj['metadata']['name']}"] = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            specs[f"Pod/{obj['metadata']['name']}"] = obj["spec"]
    return specs


def rule_triples(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """A Role's rules as (apiGroup, resource, verb) triples, for comparing grants."""
    return {
        (group, resource, verb)
        for rule in role.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


# --- lint ----------------------------------------------------------------------------


def test_lint_strict_is_clean_with_default_values() -> None:
    proc = helm("lint", "--strict", str(CHART), check=False)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout
    # Lint mode lets `required` pass; it may only say so for the two required servers.
    notices = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(_LINT_REQUIRED_NOTICE in line for line in notices), notices
    assert all("database.url" in line or "amqp.url" in line for line in notices), notices


@pytest.mark.parametrize(
    "values_file", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda p: p.name
)
def test_lint_strict_is_clean_with_ci_values(values_file: Path) -> None:
    proc = helm("lint", "--strict", str(CHART), "--values", str(values_file), check=False)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout
    assert proc.stderr.strip() == ""


# --- values.schema.json and required values ------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator.replicaCount": 6}, "/operator/replicaCount"),
        ({"operator.namespaces[0]": "Team_A"}, "/operator/namespaces/0"),
        ({"database.url": "mysql://u:p@db/x", "database.existingSecret": ""}, "/database/url"),
        ({"amqp.url": "http://rabbitmq:15672", "amqp.existingSecret": ""}, "/amqp/url"),
        ({"users.replicas": 3}, "replicas"),
        ({"image.digest": "md5:abc"}, "/image/digest"),
        ({"smtp.security": "ssl"}, "/smtp/security"),
        ({"environment": "staging"}, "/environment"),
        ({"users.service.type": "ExternalName"}, "/users/service/type"),
        ({"ingress.hosts[0]": "Not A Host"}, "/ingress/hosts/0"),
        ({"notifications.secretSource": "vault"}, "/notifications/secretSource"),
        ({"tasks.podDisruptionBudget.minAvailable": "half"}, "/tasks/podDisruptionBudget"),
        ({"relay.outboxes[0]": "outbox"}, "/relay/outboxes/0"),
        ({"serviceToken.existingSecretKey": "the token"}, "/serviceToken/existingSecretKey"),
        ({"serviceToken.token": "x" * 40}, "additional properties 'token' not allowed"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    proc = helm(*template_args({**MINIMAL, **values}), check=False)

    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"amqp.existingSecret": "mq"}, "database.url or database.existingSecret is required"),
        ({"database.existingSecret": "db"}, "amqp.url or amqp.existingSecret is required"),
        (
            {**MINIMAL, "database.url": "postgresql+psycopg://u:p@db/x"},
            "database: set url or existingSecret, not both",
        ),
        (
            {**MINIMAL, "jwt.signingKey.generate": False},
            "jwt.signingKey: set existingSecret (or pem), or generate: true",
        ),
        (
            {**MINIMAL, "serviceToken.generate": False},
            "serviceToken: set existingSecret, or generate: true",
        ),
        (
            {**MINIMAL, "operator.peering.create": False},
            "operator.peering.create=false with more than one replica",
        ),
        (
            {
                **MINIMAL,
                "users.autoscaling.enabled": True,
                "users.autoscaling.minReplicas": 5,
                "users.autoscaling.maxReplicas": 2,
            },
            "users.autoscaling: minReplicas (5) is more than maxReplicas (2)",
        ),
    ],
)
def test_missing_or_contradictory_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    proc = helm(*template_args(values), check=False)

    assert proc.returncode != 0
    assert message in proc.stderr


# --- secrets ----------------------------------------------------------------------------


def test_render_with_existing_secrets_holds_no_secret_material() -> None:
    objects = render(
        {
            **MINIMAL,
            "jwt.signingKey.existingSecret": "smarttasks-jwt",
            "serviceToken.existingSecret": "smarttasks-service-token",
        }
    )

    assert of_kind(objects, "Secret") == {}
    text = yaml.safe_dump_all(objects)
    for needle in ("password", "PRIVATE KEY", "postgresql://", "amqp://"):
        assert needle not in text


def test_urls_given_as_values_reach_pods_only_through_secrets() -> None:
    url = "postgresql+psycopg://smarttasks:s3cret@db:5432/smarttasks"
    objects = render({"database.url": url, "amqp.url": "amqps://st:s3cret@mq:5671/st"})

    for kind in ("Deployment", "Job"):
        for obj in of_kind(objects, kind).values():
            assert "s3cret" not in json.dumps(obj), obj["metadata"]["name"]
    secrets = of_kind(objects, "Secret")
    stored = {
        base64.b64decode(value).decode()
        for secret in secrets.values()
        for value in secret.get("data", {}).values()
    }
    assert url in stored
    assert "amqps://st:s3cret@mq:5671/st" in stored


def test_generated_signing_key_is_a_fresh_p256_key_the_users_service_accepts() -> None:
    from smarttasks.users.tokens import TokenSigner

    def generated() -> str:
        secret = of_kind(render(), "Secret")["st-smarttasks-jwt"]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        return base64.b64decode(secret["data"]["signing-key.pem"]).decode()

    first, second = generated(), generated()

    assert first != second  # generated per install, never a default
    signer = TokenSigner(first, issuer="smarttasks", audience="smarttasks-api", ttl_seconds=60)
    assert signer.jwks["keys"][0]["crv"] == "P-256"


def test_users_reads_the_signing_key_from_a_mounted_file() -> None:
    key = {"jwt.signingKey.existingSecret": "jwt", "jwt.signingKey.existingSecretKey": "es256.pem"}
    objects = render({**MINIMAL, **key})
    users = of_kind(objects, "Deployment")["st-smarttasks-users"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in users["containers"][0]["env"]}
    volume = next(v for v in users["volumes"] if v["name"] == "jwt")

    assert env["SMARTTASKS_SIGNING_KEY_FILE"] == "/etc/smarttasks/jwt/signing-key.pem"
    assert volume["secret"]["secretName"] == "jwt"
    assert volume["secret"]["items"] == [{"key": "es256.pem", "path": "signing-key.pem"}]


# Where each side of the service token reads it: component -> its `*_FILE` setting.
SERVICE_TOKEN_FILES = {
    "users": "SMARTTASKS_SERVICE_TOKEN_FILE",
    "notifications": "SMARTTASKS_USERS_API_TOKEN_FILE",
}


def _secret_behind(pod: Mapping[str, Any], path: str) -> tuple[str, str]:
    """The Secret and key the kubelet puts at ``path`` in the pod's first container."""
    for mount in pod["containers"][0]["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            item = next(i for i in volume["secret"]["items"] if i["path"] == path[len(folder) :])
            return volume["secret"]["secretName"], item["key"]
    raise AssertionError(f"nothing is mounted at {path}")


def _service_token_sources(objects: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Component -> the (Secret, key) its service token file comes from."""
    deployments = {component_of(d): d for d in of_kind(objects, "Deployment").values()}
    sources = {}
    for component, variable in SERVICE_TOKEN_FILES.items():
        env = _env(deployments[component])
        sources[component] = _secret_behind(
            deployments[component]["spec"]["template"]["spec"], env[variable]
        )
    return sources


def test_generated_service_token_is_kept_fresh_and_long_enough() -> None:
    def generated() -> str:
        secret = of_kind(render(), "Secret")["st-smarttasks-service-token"]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        return base64.b64decode(secret["data"]["service-token"]).decode()

    first, second = generated(), generated()

    assert first != second  # generated per install, never a default
    assert len(first) == 48 and first.isalnum()


async def test_users_and_notifications_share_the_service_token_through_mounted_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smarttasks.notifications.directory import FileToken
    from smarttasks.notifications.settings import NotificationsSettings
    from smarttasks.users.settings import UsersSettings

    objects = render()
    secrets = {
        name: {key: base64.b64decode(value).decode() for key, value in s["data"].items()}
        for name, s in of_kind(objects, "Secret").items()
    }
    deployments = {component_of(d): d for d in of_kind(objects, "Deployment").values()}
    sources = _service_token_sources(objects)
    # What each process makes of the setting the chart gives it, with the Secret's key
    # written where the kubelet would mount it (under tmp_path).
    monkeypatch.setenv("SMARTTASKS_ENVIRONMENT", "test")
    for component, variable in SERVICE_TOKEN_FILES.items():
        name, key = sources[component]
        file = tmp_path / component / _env(deployments[component])[variable].lstrip("/")
        file.parent.mkdir(parents=True)
        file.write_text(secrets[name][key])
        monkeypatch.setenv(variable, str(file))

    accepted = UsersSettings().read_service_token()
    presented = await FileToken(Path(NotificationsSettings().users_api_token_file))()

    assert set(sources.values()) == {("st-smarttasks-service-token", "service-token")}
    assert accepted == presented == secrets["st-smarttasks-service-token"]["service-token"]


def test_service_token_from_an_existing_secret_reaches_only_users_and_notifications() -> None:
    token = {"serviceToken.existingSecret": "svc", "serviceToken.existingSecretKey": "bearer"}
    objects = render({**MINIMAL, **token})
    mounting = {
        component_of(d)
        for d in of_kind(objects, "Deployment").values()
        for v in d["spec"]["template"]["spec"]["volumes"]
        if v.get("secret", {}).get("secretName") == "svc"
    }

    assert _service_token_sources(objects) == {
        "users": ("svc", "bearer"),
        "notifications": ("svc", "bearer"),
    }
    assert mounting == set(SERVICE_TOKEN_FILES)
    assert "st-smarttasks-service-token" not in of_kind(objects, "Secret")


# --- pods -------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(), (ALL_FEATURES,)], ids=["default", "all-features"])
def test_every_pod_runs_with_the_secure_defaults(files: tuple[Path, ...]) -> None:
    specs = pod_specs(render(None if not files else {}, files=files))

    assert len(specs) == len(COMPONENTS) + 2  # six Deployments, the Job, the test pod
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] in (True, False), name
        # Deployments and the Job write to /tmp only: an emptyDir on a read-only root.
        has_tmp = not name.startswith("Pod/")
        if has_tmp:
            assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in spec["volumes"], name
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name
            if has_tmp:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert mounts["/tmp"] == "tmp", name


def test_every_component_has_a_deployment_service_and_service_account() -> None:
    objects = render()
    deployments = {component_of(d): d for d in of_kind(objects, "Deployment").values()}
    services = {component_of(s): s for s in of_kind(objects, "Service").values()}
    accounts = {component_of(a): a for a in of_kind(objects, "ServiceAccount").values()}

    assert set(deployments) == set(COMPONENTS)
    assert set(services) == set(COMPONENTS)
    assert set(accounts) == {*COMPONENTS, "migrate"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert container["args"][:2] == ["run", name]
        assert pod["spec"]["serviceAccountName"] == accounts[name]["metadata"]["name"]
        # The Service reaches exactly this component's pods, on the container's port.
        assert services[name]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert services[name]["spec"]["ports"][0]["targetPort"] == "http"
        assert container["ports"][0]["name"] == "http"


def test_probes_are_healthz_and_readyz_on_the_http_port() -> None:
    for deployment in of_kind(render(), "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        # kopf's liveness endpoint is the operator's only one.
        ready = "/healthz" if component_of(deployment) == "operator" else "/readyz"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def _env(deployment: Mapping[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_operator_replicas_meet_in_a_peering_and_a_rollout_never_overlaps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from smarttasks.automation.operator_settings import OperatorSettings, PeeringMode

    objects = render()
    operator = of_kind(objects, "Deployment")["st-smarttasks-operator"]
    env = _env(operator)
    peering = of_kind(objects, "ClusterKopfPeering")
    # What the operator process makes of the environment the chart gives it (with
    # stand-ins for the values the kubelet takes from Secrets).
    from_secrets = {
        "SMARTTASKS_DATABASE_URL": "postgresql+psycopg://u:p@db/x",
        "SMARTTASKS_AMQP_URL": "amqp://u:p@mq/",
    }
    for variable, value in env.items():
        if isinstance(value, str) or variable in from_secrets:
            monkeypatch.setenv(variable, from_secrets.get(variable, value))
    settings = OperatorSettings()

    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    assert env["POD_ID"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.operator_peering_mode is PeeringMode.MANDATORY
    assert settings.clusterwide
    assert list(peering) == [settings.operator_peering_name]
    assert settings.operator_liveness_port == 8080
    assert operator["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == (
        settings.operator_liveness_port
    )
    hpas = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert "operator" not in {component_of(h) for h in hpas}


def test_stateless_services_get_hpa_and_pdb_and_nothing_else_does() -> None:
    objects = render(files=[ALL_FEATURES], values={})
    hpas = of_kind(objects, "HorizontalPodAutoscaler").values()
    pdbs = of_kind(objects, "PodDisruptionBudget").values()
    deployments = of_kind(objects, "Deployment")

    assert {component_of(h) for h in hpas} == set(STATELESS)
    assert {component_of(p) for p in pdbs} == set(STATELESS)
    for hpa in hpas:
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]  # the HPA owns the replica count
    defaults = render()
    assert of_kind(defaults, "HorizontalPodAutoscaler") == {}
    assert {component_of(p) for p in of_kind(defaults, "PodDisruptionBudget").values()} == set(
        STATELESS
    )


def test_every_object_carries_the_standard_labels() -> None:
    for obj in render(files=[ALL_FEATURES], values={}):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "smarttasks", obj["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == "st"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "smarttasks"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "smarttasks-0.1.0"
        assert labels["team"] == "platform"  # global.commonLabels


# --- ingress ----------------------------------------------------------------------------


def _routes(ingress: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (path["path"], path["pathType"]): path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }


def test_ingress_routes_each_api_prefix_to_its_service() -> None:
    ingress = of_kind(render(), "Ingress")["st-smarttasks"]

    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert "tls" not in ingress["spec"]
    assert _routes(ingress) == {
        ("/api/v1/auth", "Prefix"): "st-smarttasks-users",
        ("/api/v1/users", "Prefix"): "st-smarttasks-users",
        ("/.well-known/jwks.json", "Exact"): "st-smarttasks-users",
        ("/api/v1/tasks", "Prefix"): "st-smarttasks-tasks",
        ("/api/v1/rules", "Prefix"): "st-smarttasks-rules-api",
        ("/api/v1/notifications", "Prefix"): "st-smarttasks-notifications",
    }


def test_ingress_hosts_and_tls_are_optional() -> None:
    ingress = of_kind(render(files=[ALL_FEATURES], values={}), "Ingress")["smarttasks"]
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]

    assert hosts == ["smarttasks.example.com", "api.smarttasks.example.com"]
    assert ingress["spec"]["tls"][0]["secretName"] == "smarttasks-tls"
    assert of_kind(render({**MINIMAL, "ingress.enabled": False}), "Ingress") == {}


def test_ingress_drops_routes_of_disabled_components() -> None:
    ingress = of_kind(render({**MINIMAL, "rulesApi.enabled": False}), "Ingress")["st-smarttasks"]
    assert ("/api/v1/rules", "Prefix") not in _routes(ingress)


# --- migration hook ---------------------------------------------------------------------


def test_migration_runs_as_a_pre_install_and_pre_upgrade_hook() -> None:
    objects = render({"database.url": "postgresql+psycopg://u:p@db/x", "amqp.existingSecret": "mq"})
    job = of_kind(objects, "Job")["st-smarttasks-migrate"]
    hook_secret = of_kind(objects, "Secret")["st-smarttasks-migrate"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    url_ref = next(e for e in container["env"] if e["name"] == "SMARTTASKS_DATABASE_URL")

    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container["args"] == ["run", "migrate"]
    # Its Secret is a hook too, created before it: the release's Secrets do not exist yet.
    assert url_ref["valueFrom"]["secretKeyRef"]["name"] == "st-smarttasks-migrate"
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )


# --- CRD --------------------------------------------------------------------------------


def _without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd))
    crd["metadata"].pop("annotations", None)
    crd["metadata"].pop("labels", None)
    return crd


def test_crd_template_renders_the_one_in_crds() -> None:
    rendered = of_kind(render(), "CustomResourceDefinition")["automationrules.smarttasks.io"]
    source = yaml.safe_load(CRD_SOURCE.read_text())

    assert _without_chart_metadata(rendered) == _without_chart_metadata(source)
    assert rendered["metadata"]["labels"]["app.kubernetes.io/component"] == "automation"


def test_crds_keep_and_enabled() -> None:
    def crd(values: dict[str, Any]) -> dict[str, Any] | None:
        found = of_kind(render({**MINIMAL, **values}), "CustomResourceDefinition")
        return found.get("automationrules.smarttasks.io")

    kept = crd({})
    assert kept is not None
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    not_kept = crd({"crds.keep": False})
    assert not_kept is not None
    assert "annotations" not in not_kept["metadata"]
    assert crd({"crds.enabled": False}) is None


# --- monitoring -------------------------------------------------------------------------


def test_service_monitor_scrapes_every_component() -> None:
    objects = render(files=[ALL_FEATURES], values={})
    monitor = of_kind(objects, "ServiceMonitor")["smarttasks"]
    selected = monitor["spec"]["selector"]["matchExpressions"][0]["values"]

    assert sorted(selected) == sorted(COMPONENTS)
    scrape = {"path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    drop_operator = {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "regex": "operator",
        "action": "drop",
    }
    # `http` everywhere but on the operator (kopf's liveness port); its own `metrics` port.
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", **scrape, "relabelings": [drop_operator]},
        {"port": "metrics", **scrape},
    ]
    service = of_kind(objects, "Service")["smarttasks-operator"]
    assert {"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )
    operator = of_kind(objects, "Deployment")["smarttasks-operator"]
    [container] = operator["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in container["ports"]
    assert _env(operator)["SMARTTASKS_METRICS_PORT"] == "9102"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert of_kind(render(), "ServiceMonitor") == {}


def test_dashboard_config_map_carries_the_dashboard_file() -> None:
    config_map = of_kind(render(files=[ALL_FEATURES], values={}), "ConfigMap")
    dashboard = config_map["smarttasks-dashboard"]

    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["smarttasks.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )


# --- RBAC -------------------------------------------------------------------------------


# What the operator's handlers use (see templates/operator-rbac.yaml), serving every
# namespace; with operator.namespaces the peering resource is the namespaced one.
OPERATOR_GRANTS = {
    ("smarttasks.io", "automationrules", "list"),
    ("smarttasks.io", "automationrules", "watch"),
    ("smarttasks.io", "automationrules", "patch"),
    ("smarttasks.io", "automationrules/status", "patch"),
    ("", "events", "create"),
    ("kopf.dev", "clusterkopfpeerings", "list"),
    ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
}
NAMESPACED_OPERATOR_GRANTS = {
    (group, "kopfpeerings" if resource == "clusterkopfpeerings" else resource, verb)
    for group, resource, verb in OPERATOR_GRANTS
}


def test_operator_cluster_role_grants_exactly_what_its_handlers_use() -> None:
    role = of_kind(render(), "ClusterRole")["st-smarttasks-operator"]
    assert rule_triples(role) == OPERATOR_GRANTS


def test_operator_rbac_matches_the_one_the_operator_tests_use() -> None:
    test_rbac = REPO_ROOT / "tests" / "k8s" / "operator-rbac.yaml"
    if not test_rbac.exists():
        pytest.skip("no tests/k8s/operator-rbac.yaml: the operator tests render the chart's")
    theirs = [d for d in yaml.safe_load_all(test_rbac.read_text()) if d]
    their_rules = set().union(
        *(rule_triples(d) for d in theirs if d["kind"] in ("ClusterRole", "Role"))
    )
    assert their_rules == OPERATOR_GRANTS


RULES_API_GRANTS = {
    ("smarttasks.io", "automationrules", verb)
    for verb in ("get", "list", "create", "update", "delete")
}


def test_rules_api_role_grants_exactly_what_it_uses_in_its_namespace() -> None:
    objects = render({**MINIMAL, "rulesApi.rulesNamespace": "rules"})
    role = of_kind(objects, "Role")["st-smarttasks-rules-api"]
    binding = of_kind(objects, "RoleBinding")["st-smarttasks-rules-api"]
    rules_api = of_kind(objects, "Deployment")["st-smarttasks-rules-api"]

    assert rule_triples(role) == RULES_API_GRANTS
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "rules"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "st-smarttasks-rules-api", "namespace": "smarttasks"}
    ]
    assert _env(rules_api)["SMARTTASKS_RULES_NAMESPACE"] == "rules"


def test_rules_api_rbac_matches_the_one_the_rules_api_tests_use() -> None:
    test_rbac = REPO_ROOT / "tests" / "k8s" / "rules-api-rbac.yaml"
    if not test_rbac.exists():
        pytest.skip("no tests/k8s/rules-api-rbac.yaml: the rules API tests render the chart's")
    theirs = [d for d in yaml.safe_load_all(test_rbac.read_text()) if d]
    their_rules = set().union(*(rule_triples(d) for d in theirs if d["kind"] == "Role"))
    assert their_rules == RULES_API_GRANTS


def test_render_rules_api_rbac_binds_the_chart_role_to_the_given_account() -> None:
    text = render_rules_api_rbac(namespace="smarttasks", service_account="api", name="t")
    documents = [d for d in yaml.safe_load_all(text) if d]

    assert of_kind(documents, "ServiceAccount")["api"]["metadata"]["namespace"] == "smarttasks"
    assert rule_triples(of_kind(documents, "Role")["t-rules-api"]) == RULES_API_GRANTS
    assert of_kind(documents, "RoleBinding")["t-rules-api"]["subjects"][0]["name"] == "api"


def test_render_operator_rbac_binds_the_chart_role_to_the_given_account() -> None:
    text = render_operator_rbac(namespace="ns1", service_account="op", name="op-test")
    documents = [d for d in yaml.safe_load_all(text) if d]
    account = of_kind(documents, "ServiceAccount")["op"]
    role = of_kind(documents, "ClusterRole")["op-test-operator"]
    binding = of_kind(documents, "ClusterRoleBinding")["op-test-operator"]

    assert account["metadata"]["namespace"] == "ns1"
    assert rule_triples(role) == OPERATOR_GRANTS
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "op", "namespace": "ns1"}]


def test_operator_serving_named_namespaces_gets_roles_and_peerings_in_just_those() -> None:
    objects = render(
        {**MINIMAL, "operator.namespaces[0]": "team-a", "operator.namespaces[1]": "team-b"}
    )
    roles = [o for o in objects if o["kind"] == "Role" and component_of(o) == "operator"]
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and component_of(o) == "operator"]
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    operator = of_kind(objects, "Deployment")["st-smarttasks-operator"]

    assert "st-smarttasks-operator" not in of_kind(objects, "ClusterRole")
    assert of_kind(objects, "ClusterKopfPeering") == {}
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    for role in roles:
        assert rule_triples(role) == NAMESPACED_OPERATOR_GRANTS
    assert _env(operator)["SMARTTASKS_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_without_a_peering_object_a_single_operator_auto_detects() -> None:
    objects = render({**MINIMAL, "operator.peering.create": False, "operator.replicaCount": 1})
    operator = of_kind(objects, "Deployment")["st-smarttasks-operator"]

    assert of_kind(objects, "ClusterKopfPeering") == {}
    assert _env(operator)["SMARTTASKS_OPERATOR_PEERING_MODE"] == "auto"


def test_secret_namespaces_turn_cluster_wide_secret_reads_into_roles() -> None:
    namespaces = {"rbac.secretNamespaces[0]": "team-a", "rbac.secretNamespaces[1]": "team-b"}
    objects = render({**MINIMAL, **namespaces})
    cluster_roles = of_kind(objects, "ClusterRole")
    roles = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-secrets")
    ]

    assert "st-smarttasks-notifications" not in cluster_roles
    assert sorted((r["metadata"]["namespace"], component_of(r)) for r in roles) == [
        ("team-a", "notifications"),
        ("team-b", "notifications"),
    ]
    for role in roles:
        assert rule_triples(role) == {("", "secrets", "get")}


def test_only_components_that_call_the_api_get_a_token() -> None:
    deployments = of_kind(render(), "Deployment").values()
    tokens = {
        component_of(d): d["spec"]["template"]["spec"]["automountServiceAccountToken"]
        for d in deployments
    }
    assert tokens == {
        "users": False,
        "tasks": False,
        "relay": False,
        "rules-api": True,
        "notifications": True,
        "operator": True,
    }


# --- manifests/ -------------------------------------------------------------------------


def test_manifests_are_the_chart_rendered_with_default_values() -> None:
    proc = subprocess.run(
        ["bash", str(RENDER_SCRIPT), "--stdout"],
        capture_output=True,
        text=True,
        env={**_helm_env(), "HELM": str(helm_binary())},
        timeout=120,
        check=True,
    )
    fresh = [d for d in yaml.safe_load_all(proc.stdout) if d]
    committed = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]

    assert committed == fresh, "manifests/smarttasks.yaml is stale: run scripts/render-manifests.sh"
    assert of_kind(committed, "Secret") == {}
    assert {component_of(d) for d in of_kind(committed, "Deployment").values()} == set(COMPONENTS)
    # The Secret the header tells GitOps users to create is the one the pods read.
    assert set(_service_token_sources(committed).values()) == {
        ("smarttasks-service-token", "service-token")
    }
