"""The automation operator against a real API server, authenticated as its ServiceAccount.

The operator runs in-process (``run_operator`` in a thread with its own loop) with the
token of a ServiceAccount bound by ``operator-rbac.yaml``: a permission missing there
makes these tests fail. Waiting is done with watches (or short polls where the API
server offers nothing to watch), each with an overall timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from kubernetes import client, config, watch

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers import OperatorState
from smarttasks.automation.main import run_operator
from smarttasks.automation.operator_settings import FINALIZER, OperatorSettings, PeeringMode
from smarttasks.automation.rules import CompiledRule
from tests.fixtures.k8s import REPO_ROOT, ControlPlane, KubectlError
from tests.unit.test_rule_compiler_properties import specs

pytestmark = pytest.mark.k8s

RBAC_FILE = Path(__file__).with_name("operator-rbac.yaml")
_ACCOUNT = next(
    d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ServiceAccount"
)
OPERATOR_NAMESPACE = _ACCOUNT["metadata"]["namespace"]
SERVICE_ACCOUNT = _ACCOUNT["metadata"]["name"]
SAMPLES = REPO_ROOT / "manifests" / "samples"
READY_WITHIN = 2.0
"""Seconds from a rule being stored to the operator reporting it Ready."""
WAIT = 30.0
"""Generous overall timeout for anything else awaited (two loaded cores)."""

Obj = dict[str, Any]


def ready(obj: Obj) -> Obj | None:
    """The Ready condition of a rule, if set."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def observed(generation: int, status: str | None = None) -> Callable[[str, Obj], bool]:
    """Predicate: Ready is reported for ``generation`` (and is ``status`` if given)."""

    def check(kind: str, obj: Obj) -> bool:
        condition = ready(obj)
        return (
            kind != "DELETED"
            and condition is not None
            and (obj.get("status") or {}).get("observedGeneration") == generation
            and condition.get("observedGeneration") == generation
            and (status is None or condition["status"] == status)
        )

    return check


def gone(kind: str, _obj: Obj) -> bool:
    return kind == "DELETED"


def wait_for(
    api: client.CustomObjectsApi,
    namespace: str,
    name: str,
    predicate: Callable[[str, Obj], bool],
    *,
    timeout: float = WAIT,
) -> tuple[Obj, float]:
    """Watch one rule until ``predicate(event type, object)``; returns it and when (monotonic).

    Lists first (the current state may already satisfy it), then watches from that
    resourceVersion, so no change in between is missed. Blocking: run it in a thread.
    """
    deadline = time.monotonic() + timeout
    selector = f"metadata.name={name}"
    listing = api.list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, PLURAL, field_selector=selector
    )
    for item in listing["items"]:
        if predicate("EXISTING", item):
            return item, time.monotonic()
    if not listing["items"] and predicate("DELETED", {}):
        return {}, time.monotonic()
    version = listing["metadata"]["resourceVersion"]
    last: Obj = listing["items"][0] if listing["items"] else {}
    watcher = watch.Watch()
    while (remaining := deadline - time.monotonic()) > 0:
        for event in watcher.stream(
            api.list_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            field_selector=selector,
            resource_version=version,
            timeout_seconds=max(1, int(remaining)),
            _request_timeout=remaining + 5,
        ):
            last = event["object"]
            version = last["metadata"]["resourceVersion"]
            if predicate(event["type"], last):
                watcher.stop()
                return last, time.monotonic()
    raise TimeoutError(f"{namespace}/{name} not as expected after {timeout}s; last seen:\n{last}")


def eventually(check: Callable[[], Any], *, timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (for what cannot be watched here)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {result!r} after {timeout}s")
        time.sleep(interval)


def rule_manifest(name: str, spec: Obj) -> str:
    return json.dumps(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "AutomationRule",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def simple_spec(condition: str | None = None) -> Obj:
    spec: Obj = {
        "trigger": {"event": "TaskCreated"},
        "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
    }
    if condition is not None:
        spec["match"] = {"condition": condition}
    return spec


def compile_warnings(k8s: ControlPlane, namespace: str, name: str) -> list[Obj]:
    """The Warning Events saying that rule ``name`` does not compile."""
    events = json.loads(
        k8s.kubectl(
            "get", "events", "-n", namespace, "-o", "json",
            "--field-selector", f"involvedObject.name={name},type=Warning",
        ).stdout
    )["items"]  # fmt: skip
    return [e for e in events if e.get("reason") == "CompileFailed"]


class Operator:
    """The operator in a thread with its own event loop, restartable like a process.

    Its own loop, because kopf owns the loop it runs in: at exit it cancels every task
    left in it. Tests read its state (the RuleIndex, the compile cache) from outside.
    """

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.state = OperatorState(config=settings)
        self.handled = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self.state = OperatorState(config=self.settings)
        self.handled = 0
        self.state.on_change.append(self._count)
        self._stop = threading.Event()
        self._error = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="operator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + WAIT
        while not started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the operator did not start") from self._error

    def _run(self, started: threading.Event) -> None:
        try:
            asyncio.run(
                run_operator(
                    self.settings,
                    state=self.state,
                    stop_flag=self._stop,  # type: ignore[arg-type]
                    ready_flag=started,  # type: ignore[arg-type]
                )
            )
        except BaseException as exc:  # reported by start() or `running`
            self._error = exc

    def _count(self) -> None:
        self.handled += 1  # called in the operator's thread, read in the test's

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def rules(self) -> Any:
        assert self.state.rules is not None
        return self.state.rules

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the operator did not stop"
        self._thread = None


@pytest.fixture(scope="module")
def operator_kubeconfig(k8s: ControlPlane, automationrule_crd: str) -> Path:
    """A kubeconfig with the token of the operator's ServiceAccount, bound as in the chart."""
    k8s.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
        ),
    )
    k8s.kubectl("apply", "-f", str(RBAC_FILE))
    return k8s.service_account_kubeconfig(OPERATOR_NAMESPACE, SERVICE_ACCOUNT, create=False)


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: Path) -> Iterator[Operator]:
    running = Operator(
        OperatorSettings(
            operator_kubeconfig=str(operator_kubeconfig),
            operator_peering_mode=PeeringMode.AUTO,  # the chart's default; no peering CRD here
            operator_liveness_port=None,
            operator_engine_enabled=False,
        )
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(k8s: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    api_client = config.new_client_from_config(config_file=str(k8s.kubeconfig))
    yield client.CustomObjectsApi(api_client)
    api_client.close()


def apply_and_time(
    k8s: ControlPlane,
    api: client.CustomObjectsApi,
    namespace: str,
    name: str,
    manifest: str,
    *,
    generation: int = 1,
    status: str | None = "True",
) -> tuple[Obj, float]:
    """Apply a rule, then await its Ready for ``generation``; returns it and seconds taken."""
    k8s.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    stored = time.monotonic()
    obj, at = wait_for(api, namespace, name, observed(generation, status))
    return obj, at - stored


def test_every_sample_is_applied_and_ready_within_two_seconds(
    k8s: ControlPlane,
    api: client.CustomObjectsApi,
    operator: Operator,
    namespace: str,
    record_property: Callable[[str, object], None],
) -> None:
    latencies: dict[str, float] = {}
    for path in sorted(SAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] != "AutomationRule":
            k8s.kubectl("apply", "-n", namespace, "-f", str(path))
            continue
        name = doc["metadata"]["name"]
        obj, latency = apply_and_time(k8s, api, namespace, name, path.read_text())
        latencies[name] = round(latency, 3)

        condition = ready(obj)
        assert condition is not None and condition["reason"] == "Compiled"
        assert condition["message"].startswith("Generation 1 compiled: fires")
        assert FINALIZER in obj["metadata"]["finalizers"]
        compiled = operator.rules.by_key(f"{namespace}/{name}")
        assert isinstance(compiled, CompiledRule) and compiled.generation == 1
        assert compiled.uid == obj["metadata"]["uid"]

    record_property("ready_latency_seconds", latencies)
    print(f"\napply→Ready latency (s): {latencies}")
    assert len(latencies) == 5
    assert max(latencies.values()) < READY_WITHIN, latencies
    printed = k8s.kubectl("get", "ar", "-n", namespace)
    assert printed.stdout.count(" True ") == 5, printed.stdout


def test_a_condition_that_does_not_compile_is_stored_but_not_ready(
    k8s: ControlPlane, api: client.CustomObjectsApi, operator: Operator, namespace: str
) -> None:
    manifest = rule_manifest("broken", simple_spec("task.assignee != nul"))

    obj, _ = apply_and_time(k8s, api, namespace, "broken", manifest, status="False")

    condition = ready(obj)
    assert condition is not None
    assert condition["reason"] == "CompileFailed"
    assert condition["message"].startswith("spec.match.condition: unknown name 'nul'")
    assert operator.rules.by_key(f"{namespace}/broken") is None

    (event,) = eventually(lambda: compile_warnings(k8s, namespace, "broken"))
    assert event["reason"] == "CompileFailed"
    assert "unknown name 'nul'" in event["message"]


def test_an_update_is_compiled_for_its_new_generation(
    k8s: ControlPlane, api: client.CustomObjectsApi, operator: Operator, namespace: str
) -> None:
    name = "evolving"
    first, _ = apply_and_time(
        k8s, api, namespace, name, rule_manifest(name, simple_spec("task.priority == 'high'"))
    )
    broken, _ = apply_and_time(
        k8s, api, namespace, name, rule_manifest(name, simple_spec("task.priority ==")),
        generation=2, status="False",
    )  # fmt: skip
    fixed, latency = apply_and_time(
        k8s, api, namespace, name, rule_manifest(name, simple_spec("task.priority == 'low'")),
        generation=3,
    )  # fmt: skip

    assert first["metadata"]["generation"] == 1 and fixed["metadata"]["generation"] == 3
    assert "Syntax error" in (ready(broken) or {})["message"]
    first_ready, fixed_ready = ready(first) or {}, ready(fixed) or {}
    assert fixed_ready["status"] == "True" and fixed_ready["observedGeneration"] == 3
    assert fixed_ready["lastTransitionTime"] >= first_ready["lastTransitionTime"]
    assert latency < READY_WITHIN
    compiled = operator.rules.by_key(f"{namespace}/{name}")
    assert compiled is not None and compiled.generation == 3
    assert compiled.condition is not None and compiled.condition.source == "task.priority == 'low'"


def test_a_label_change_recompiles_without_a_new_generation(
    k8s: ControlPlane, api: client.CustomObjectsApi, operator: Operator, namespace: str
) -> None:
    apply_and_time(k8s, api, namespace, "owned", rule_manifest("owned", simple_spec()))

    k8s.kubectl("label", "-n", namespace, f"{PLURAL}/owned", f"{API_GROUP}/owner=not-a-user-id")
    obj, _ = wait_for(
        api, namespace, "owned", lambda _k, o: (ready(o) or {}).get("status") == "False"
    )

    assert (ready(obj) or {})["message"].startswith(f"metadata.labels[{API_GROUP}/owner]")
    assert obj["metadata"]["generation"] == 1
    assert operator.rules.by_key(f"{namespace}/owned") is None


def test_delete_releases_the_finalizer_promptly(
    k8s: ControlPlane, api: client.CustomObjectsApi, operator: Operator, namespace: str
) -> None:
    obj, _ = apply_and_time(k8s, api, namespace, "short", rule_manifest("short", simple_spec()))
    assert FINALIZER in obj["metadata"]["finalizers"]
    compiled_before = len(operator.state.cache)

    k8s.kubectl("delete", "-n", namespace, f"{PLURAL}/short", "--wait=false")
    asked = time.monotonic()
    _, at = wait_for(api, namespace, "short", gone)

    assert at - asked < READY_WITHIN
    assert operator.rules.by_key(f"{namespace}/short") is None
    assert len(operator.state.cache) == compiled_before - 1


def test_a_restart_resumes_every_rule_without_touching_any(
    k8s: ControlPlane, api: client.CustomObjectsApi, operator: Operator, namespace: str
) -> None:
    specs_by_name = {
        "keep-a": simple_spec("task.priority == 'high'"),
        "keep-b": simple_spec(),
        "keep-broken": simple_spec("task.nope == 1"),
    }
    for name, spec in specs_by_name.items():
        status = "False" if name == "keep-broken" else "True"
        apply_and_time(k8s, api, namespace, name, rule_manifest(name, spec), status=status)
    before = {
        item["metadata"]["name"]: item["metadata"]["resourceVersion"]
        for item in api.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)[
            "items"
        ]
    }
    everywhere = len(api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)["items"])
    warned = eventually(lambda: compile_warnings(k8s, namespace, "keep-broken"))

    operator.stop()
    operator.start()
    # Every rule in the cluster is resumed (each resume ends by reporting a change) ...
    eventually(lambda: operator.handled >= everywhere)
    # ... and a rule created afterwards is handled as usual, later than any resume patch.
    apply_and_time(k8s, api, namespace, "sentinel", rule_manifest("sentinel", simple_spec()))

    after = {
        item["metadata"]["name"]: item["metadata"]["resourceVersion"]
        for item in api.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)[
            "items"
        ]
    }
    assert {name: after[name] for name in before} == before
    assert compile_warnings(k8s, namespace, "keep-broken") == warned
    assert operator.rules.by_key(f"{namespace}/keep-a") is not None
    assert operator.rules.by_key(f"{namespace}/keep-b") is not None
    assert operator.rules.by_key(f"{namespace}/keep-broken") is None
    # Seen by the index and the resume handler, each rule was still compiled only once.
    assert operator.state.cache.compilations == everywhere + 1


def test_the_service_account_may_do_only_what_the_operator_needs(
    k8s: ControlPlane, operator_kubeconfig: Path
) -> None:
    def can(verb: str, resource: str, *flags: str) -> bool:
        proc = k8s.kubectl(
            "auth", "can-i", verb, resource, *flags, kubeconfig=operator_kubeconfig, check=False
        )
        return proc.stdout.strip() == "yes"

    allowed = [
        ("list", f"{PLURAL}.{API_GROUP}", "-A"),
        ("watch", f"{PLURAL}.{API_GROUP}", "-A"),
        ("patch", f"{PLURAL}.{API_GROUP}", "-n", "team-a"),
        ("patch", f"{PLURAL}.{API_GROUP}", "--subresource=status", "-n", "team-a"),
        ("create", "events", "-n", "team-a"),
    ]
    refused = [
        ("create", f"{PLURAL}.{API_GROUP}", "-n", "team-a"),
        ("delete", f"{PLURAL}.{API_GROUP}", "-n", "team-a"),
        ("update", f"{PLURAL}.{API_GROUP}", "-n", "team-a"),
        ("get", "secrets", "-n", "team-a"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "namespaces"),
        ("delete", "events", "-n", "team-a"),
        ("create", "pods", "-n", "team-a"),
    ]
    assert [a for a in allowed if not can(*a)] == []
    assert [r for r in refused if can(*r)] == []


def test_generated_rules_never_stop_the_operator(
    k8s: ControlPlane,
    api: client.CustomObjectsApi,
    operator: Operator,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kopf picks a credential with the global `random` on every API call, from the
    # operator's thread; Hypothesis refuses a global random state changed under it while
    # it generates an example. Give kopf a generator of its own for this test.
    import kopf._cogs.structs.credentials as kopf_credentials

    monkeypatch.setattr(kopf_credentials, "random", random.Random())
    outcomes: list[str] = []
    numbers = itertools.count()

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(spec=specs())
    def apply_one(spec: Obj) -> None:
        name = f"gen-{next(numbers)}"
        try:
            k8s.kubectl("apply", "-n", namespace, "-f", "-", input=rule_manifest(name, spec))
        except KubectlError as exc:
            # The generated specs follow the CRD; the API server refusing one is a mismatch.
            raise AssertionError(f"the API server refused a valid spec: {exc.stderr}") from exc
        obj, _ = wait_for(api, namespace, name, observed(1))
        outcomes.append((ready(obj) or {})["reason"])
        k8s.kubectl("delete", "-n", namespace, f"{PLURAL}/{name}", "--wait=false")

    apply_one()

    assert operator.running
    assert set(outcomes) <= {"Compiled", "CompileFailed"} and outcomes
