"""The files that ship SmartTasks: image, compose, skaffold, CI workflow, chart values.

Everything here reads files of the repository (and runs check-jsonschema on them);
what needs helm or an API server is in tests/k8s/test_chart*.py.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smarttasks.gateway.cli import RUNNABLE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "smarttasks"
COMPOSE = ROOT / "compose.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
SKAFFOLD = ROOT / "skaffold.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CRD = ROOT / "crds" / "automationrules.smarttasks.io.yaml"

# What the chart deploys: component (as `smarttasks run` knows it) -> its values section.
CHART_COMPONENTS = {
    "users": "users",
    "tasks": "tasks",
    "rules-api": "rulesApi",
    "notifications": "notifications",
    "operator": "operator",
    "relay": "relay",
}
STATELESS = {"users", "tasks", "rules-api", "notifications"}


def _check_jsonschema(builtin: str, path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "check_jsonschema"]
    return subprocess.run(
        [*command, "--builtin-schema", builtin, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- schemas of the GitHub workflow and the Compose file ---------------------------


@pytest.mark.parametrize(
    ("builtin", "path"),
    [("vendor.github-workflows", WORKFLOW), ("vendor.compose-spec", COMPOSE)],
)
def test_file_matches_its_published_schema(builtin: str, path: Path) -> None:
    result = _check_jsonschema(builtin, path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("builtin", "path", "breakage"),
    [
        ("vendor.github-workflows", WORKFLOW, {"jobs": {"lint": {"runs-on": 3, "stepz": []}}}),
        ("vendor.compose-spec", COMPOSE, {"services": {"users": {"restart": ["no"]}}}),
    ],
)
def test_schema_check_refuses_a_broken_copy(
    builtin: str, path: Path, breakage: dict[str, Any], tmp_path: Path
) -> None:
    """The schema check above can fail: the same file with one wrong field is refused."""
    document = yaml.safe_load(path.read_text())
    _deep_update(document, breakage)
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(document))

    result = _check_jsonschema(builtin, broken)

    assert result.returncode != 0
    assert "validation error" in (result.stdout + result.stderr).lower()


def _deep_update(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# --- the CI workflow ---------------------------------------------------------------


def _workflow() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return document


def test_workflow_tests_with_postgres_and_rabbitmq_service_containers() -> None:
    tests = _workflow()["jobs"]["tests"]
    images = {name: spec["image"] for name, spec in tests["services"].items()}

    assert images["postgres"].startswith("postgres:")
    assert images["rabbitmq"].startswith("rabbitmq:")
    assert any("pytest" in step.get("run", "") for step in tests["steps"])


def test_workflow_lints_types_and_the_chart() -> None:
    jobs = _workflow()["jobs"]
    lint_runs = "\n".join(step.get("run", "") for step in jobs["lint"]["steps"])
    chart_runs = "\n".join(step.get("run", "") for step in jobs["chart"]["steps"])

    for command in ("ruff check", "ruff format --check", "mypy", "lint-imports"):
        assert command in lint_runs
    assert "helm lint --strict charts/smarttasks" in chart_runs
    assert "charts/smarttasks/ci/*-values.yaml" in chart_runs


def test_workflow_e2e_builds_the_image_installs_the_chart_on_kind_and_runs_tests() -> None:
    e2e = _workflow()["jobs"]["e2e"]
    uses = [step.get("uses", "") for step in e2e["steps"]]
    runs = "\n".join(step.get("run", "") for step in e2e["steps"])

    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    assert "kind load docker-image smarttasks:dev" in runs
    assert "helm install" in runs and "charts/smarttasks" in runs
    # Every file the job points at exists.
    for path in re.findall(r"(?:charts|tests)/[\w./-]+\.(?:ya?ml|py)", runs):
        assert (ROOT / path).is_file(), path


# --- compose.yaml ------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_runs_the_backing_services_and_every_component_from_one_image() -> None:
    services = _compose()["services"]
    images = {name: spec.get("image", "") for name, spec in services.items()}

    assert images["postgres"].startswith("postgres:")
    assert images["rabbitmq"].startswith("rabbitmq:")
    assert images["redis"].startswith("redis:")
    assert images["mailpit"].startswith("axllent/mailpit")
    commands = {
        spec["command"][1]: name
        for name, spec in services.items()
        if spec.get("command", [None])[0] == "run"
    }
    assert set(commands) >= set(CHART_COMPONENTS) | {"migrate"}
    assert {images[name] for name in commands.values()} == {"${SMARTTASKS_IMAGE:-smarttasks:dev}"}


def test_compose_components_are_ones_the_cli_runs() -> None:
    for name, spec in _compose()["services"].items():
        command = spec.get("command", [])
        if command[:1] == ["run"]:
            assert command[1] in RUNNABLE, f"compose service {name}: `smarttasks {command}`"


def test_compose_services_have_health_checks_and_named_volumes() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, spec in compose["services"].items():
        if name == "migrate":  # runs once and exits
            assert spec["restart"] == "no"
            continue
        health = spec.get("healthcheck", {})
        assert health.get("test") and not health.get("disable"), name
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith(("/", ".", "~", "$")):
                used.add(source)
    assert used, "no named volumes"
    assert used == declared


def _interpolated(value: str) -> str:
    """A compose value as `docker compose` fills it in with no variables set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_users_and_notifications_share_an_overridable_service_token() -> None:
    from smarttasks.users.settings import UsersSettings

    services = _compose()["services"]
    accepted = services["users"]["environment"]["SMARTTASKS_SERVICE_TOKEN"]
    presented = services["notifications"]["environment"]["SMARTTASKS_USERS_API_TOKEN"]

    assert accepted == presented
    assert accepted.startswith("${SMARTTASKS_SERVICE_TOKEN:-")  # set it in .env
    token = _interpolated(accepted)
    assert UsersSettings(service_token=token).read_service_token() == token


def test_compose_components_run_unprivileged() -> None:
    for name, spec in _compose()["services"].items():
        if spec.get("command", [None])[0] != "run":
            continue
        assert spec["read_only"] is True, name
        assert spec["user"] == "10001:10001", name
        assert spec["cap_drop"] == ["ALL"], name


# --- skaffold.yaml -----------------------------------------------------------------


def _skaffold() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return document


def _helm_releases(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from config.get("deploy", {}).get("helm", {}).get("releases", [])
    for profile in config.get("profiles", []):
        yield from profile.get("deploy", {}).get("helm", {}).get("releases", [])


def _values_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _values_paths(value, path)


def test_skaffold_uses_a_v4_schema_and_names_existing_artifacts() -> None:
    config = _skaffold()
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    artifacts = config["build"]["artifacts"]
    assert artifacts
    for artifact in artifacts:
        context = ROOT / artifact.get("context", ".")
        assert context.is_dir()
        assert (context / artifact["docker"].get("dockerfile", "Dockerfile")).is_file()


def test_skaffold_charts_values_files_and_manifests_exist() -> None:
    config = _skaffold()
    releases = list(_helm_releases(config))
    assert releases
    for release in releases:
        assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
        for values in release.get("valuesFiles", []):
            assert (ROOT / values).is_file(), values
    for profile in config.get("profiles", []):
        for raw in profile.get("manifests", {}).get("rawYaml", []):
            assert (ROOT / raw).is_file(), raw


def test_skaffold_value_templates_set_chart_values_from_built_artifacts() -> None:
    config = _skaffold()
    artifacts = {a["image"] for a in config["build"]["artifacts"]}
    names = {re.sub(r"[^A-Za-z0-9_]", "_", a) for a in artifacts}
    injects_image = False
    for release in _helm_releases(config):
        chart_values = yaml.safe_load((ROOT / release["chartPath"] / "values.yaml").read_text())
        known = set(_values_paths(chart_values))
        for key, template in release.get("setValueTemplates", {}).items():
            assert key in known, f"{key} is not a value of {release['chartPath']}"
            for image_var in re.findall(r"\.IMAGE_[A-Z_]+?_([A-Za-z0-9_]+)\}\}", template):
                assert image_var in names, f"{template} names no artifact"
                injects_image = True
            # Any other variable needs a default, so a plain `skaffold run` renders.
            for var in re.findall(r"\{\{([^}]*)\}\}", template):
                if "IMAGE_" not in var:
                    assert var.strip().startswith("default "), template
    assert injects_image


def test_skaffold_dev_profile_targets_a_local_kind_cluster() -> None:
    dev = next(p for p in _skaffold()["profiles"] if p["name"] == "dev")
    assert dev["deploy"]["kubeContext"].startswith("kind-")
    assert dev["build"]["local"]["push"] is False


# --- Dockerfile and .dockerignore --------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def test_image_is_multi_stage_on_python_311_slim() -> None:
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for keyword, rest in _instructions()
        if keyword == "ARG" and "=" in rest
    }
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert base.startswith("python:3.11-slim"), base


def test_final_stage_is_non_root_without_build_tools_and_runs_the_cli() -> None:
    final = _stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    entrypoint = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    cmd = [json.loads(rest) for keyword, rest in final if keyword == "CMD"]

    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|apt-get install)\b", runs)
    assert any(k == "COPY" and "--from=builder" in rest for k, rest in final)
    assert entrypoint == [["smarttasks"]]
    assert cmd == [["run", "gateway"]]


def test_builder_builds_the_wheel() -> None:
    builder = " ".join(rest for keyword, rest in _stages()[0] if keyword == "RUN")
    assert "pip wheel" in builder or "-m build" in builder


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negated, re.compile(regex + "$")))
    return patterns


def _in_build_context(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in _dockerignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    for keyword, rest in _instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = rest.split()
        for source in sources:
            files = [p for p in (ROOT / source).rglob("*") if p.is_file()] or [ROOT / source]
            kept = [f for f in files if _in_build_context(str(f.relative_to(ROOT)))]
            assert kept, f"COPY {source}: nothing of it is in the build context"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_ship_files.py",
        ".smarttasks/outbox/x.eml",
        "services/smarttasks/core/__pycache__/db.cpython-311.pyc",
        "charts/smarttasks/values.yaml",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert not _in_build_context(path)


def test_dockerignore_lets_in_the_code() -> None:
    assert _in_build_context("services/smarttasks/core/db.py")
    assert _in_build_context("operator/smarttasks/automation/__init__.py")
    assert _in_build_context("pyproject.toml")


# --- the chart's components and files ----------------------------------------------


def test_every_chart_component_has_its_templates() -> None:
    templates = CHART / "templates"
    for name in CHART_COMPONENTS:
        for kind in ("deployment", "service", "serviceaccount"):
            assert (templates / f"{name}-{kind}.yaml").is_file(), f"{name}-{kind}.yaml"
        for kind in ("hpa", "poddisruptionbudget"):
            assert (templates / f"{name}-{kind}.yaml").is_file() == (name in STATELESS)


def test_every_chart_component_is_one_the_cli_runs() -> None:
    missing = sorted(set(CHART_COMPONENTS) - set(RUNNABLE))
    assert not missing, f"`smarttasks run` does not know {missing} (gateway/cli.py RUNNABLE)"
    assert "migrate" in RUNNABLE


def test_chart_crd_copy_is_the_one_in_crds() -> None:
    copy = CHART / "files" / CRD.name
    assert copy.read_bytes() == CRD.read_bytes(), (
        "charts/smarttasks/files/ has drifted from crds/: run scripts/render-manifests.sh"
    )


def test_chart_has_no_copy_of_the_automationrule_crd_in_its_crds_folder() -> None:
    # Helm would install such a copy on its own, outside crds.enabled and crds.keep.
    for path in (CHART / "crds").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["spec"]["group"] != "smarttasks.io", path


def _values_lines() -> list[str]:
    return (CHART / "values.yaml").read_text().splitlines()


# Kubernetes objects given whole; the comment above the object describes them.
_VERBATIM = {"podSecurityContext", "containerSecurityContext", "resources"}


def test_every_value_is_documented() -> None:
    lines = _values_lines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if set(parents) & _VERBATIM:
            continue
        previous = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if not previous.strip().startswith("#"):
            undocumented.append(".".join([*parents, key]))
    assert not undocumented


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_values_schema_is_draft_07_and_closed() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


@pytest.mark.parametrize(
    "values_file",
    [CHART / "values.yaml", *sorted((CHART / "ci").glob("*-values.yaml"))],
    ids=lambda p: p.name,
)
def test_values_files_satisfy_the_schema(values_file: Path) -> None:
    jsonschema = importlib.import_module("jsonschema")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file.name != "values.yaml":
        _deep_update(values, yaml.safe_load(values_file.read_text()))
    jsonschema.Draft7Validator(_schema()).validate(values)


def test_schema_closes_every_component_section() -> None:
    """A typo in a component's values (`replicas:`) is refused, not silently ignored."""
    jsonschema = importlib.import_module("jsonschema")
    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in CHART_COMPONENTS.values():
        broken = json.loads(json.dumps(values))
        broken[key]["replicas"] = 3
        with pytest.raises(jsonschema.ValidationError, match="replicas"):
            jsonschema.Draft7Validator(schema).validate(broken)


# --- the Grafana dashboard ---------------------------------------------------------


def _exported_metric_names() -> set[str]:
    """Sample names of every Prometheus metric defined in services/ and operator/."""
    from prometheus_client.metrics import MetricWrapperBase

    names: set[str] = set()
    for folder in (ROOT / "services", ROOT / "operator"):
        for path in folder.rglob("*.py"):
            text = path.read_text()
            if "prometheus_client" not in text or not re.search(
                r"\b(Counter|Gauge|Histogram|Summary)\(", text
            ):
                continue
            module = importlib.import_module(
                ".".join(path.relative_to(folder).with_suffix("").parts)
            )
            for value in vars(module).values():
                if not isinstance(value, MetricWrapperBase):
                    continue
                for metric in value.describe():
                    suffixes = {
                        "counter": ("_total",),
                        "gauge": ("",),
                        "histogram": ("_bucket", "_sum", "_count"),
                        "summary": ("", "_sum", "_count"),
                    }[metric.type]
                    names.update(metric.name + suffix for suffix in suffixes)
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_use_only_metrics_the_services_export() -> None:
    exported = _exported_metric_names()
    used = {
        name
        for expr in _dashboard_queries()
        for name in re.findall(r"\bsmarttasks_[a-z0-9_]+", expr)
    }
    assert "smarttasks_http_requests_total" in exported  # the scan found the metrics
    assert used
    assert not used - exported, f"not exported by any service: {sorted(used - exported)}"


def test_dashboard_covers_http_events_and_notifications() -> None:
    queries = "\n".join(_dashboard_queries())
    for family in (
        "smarttasks_http_",
        "smarttasks_outbox_",
        "smarttasks_relay_",
        "smarttasks_consumer_",
        "smarttasks_notifications_",
    ):
        assert family in queries


def test_check_jsonschema_is_available() -> None:
    # The schema tests above run it; without it they would fail for the wrong reason.
    exe = Path(sys.executable).with_name("check-jsonschema")
    assert exe.exists() or shutil.which("check-jsonschema")
