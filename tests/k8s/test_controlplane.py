"""The test control plane itself: binaries, versions, authentication and RBAC."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.availability import unavailable
from tests.fixtures.k8s import (
    BUILD_SCRIPT,
    ControlPlane,
    controlplane_bin_dir,
    require_controlplane,
)

pytestmark = pytest.mark.k8s

EXPECTED_MINOR = "36"


def test_build_script_reuses_the_cached_binaries(k8s: ControlPlane) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=True, timeout=60
    )
    elapsed = time.monotonic() - start

    assert Path(proc.stdout.strip().splitlines()[-1]) == controlplane_bin_dir()
    assert "building" not in proc.stderr
    assert elapsed < 10, f"cached build.sh took {elapsed:.1f}s"


def test_build_script_without_go_or_cache_says_so(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SMARTTASKS_CACHE": str(tmp_path / "cache"),
        "GO": str(tmp_path / "no-go-here"),
    }

    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, timeout=60
    )

    assert proc.returncode == 3
    assert "no Go toolchain" in proc.stderr
    assert proc.stdout == ""


def test_build_script_uses_kubebuilder_assets_when_complete(tmp_path: Path) -> None:
    bin_dir = require_controlplane()
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in ("kube-apiserver", "etcd", "kubectl", "helm"):
        (assets / name).symlink_to(bin_dir / name)

    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBEBUILDER_ASSETS": str(assets)},
        check=True,
        timeout=60,
    )

    assert proc.stdout.strip().splitlines()[-1] == str(assets)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_control_plane_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)

    with pytest.raises(outcome, match="no Go"):
        unavailable("k8s", "no Go toolchain")


def test_server_reports_the_release_version(k8s: ControlPlane) -> None:
    version = json.loads(k8s.kubectl("version", "--output=json").stdout)

    for side in ("clientVersion", "serverVersion"):
        assert version[side]["major"] == "1"
        assert version[side]["minor"] == EXPECTED_MINOR
        assert version[side]["gitVersion"].startswith(f"v1.{EXPECTED_MINOR}.")
    assert "warning" not in k8s.kubectl("version").stderr.lower()


def test_helm_sees_the_server_version(k8s: ControlPlane, tmp_path: Path) -> None:
    chart = tmp_path / "probe"
    chart.mkdir()
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "templates").mkdir()
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: '{{ .Capabilities.KubeVersion.Version }}'}\n"
    )

    out = k8s.helm("template", "probe", str(chart), "--validate").stdout

    assert f"kube: 'v1.{EXPECTED_MINOR}." in out


def test_admin_token_is_cluster_admin(k8s: ControlPlane) -> None:
    assert k8s.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_unauthenticated_requests_are_refused(k8s: ControlPlane, tmp_path: Path) -> None:
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text(k8s.kubeconfig.read_text().replace(k8s.admin_token, "not-a-token"))

    proc = k8s.kubectl("get", "namespaces", kubeconfig=bad, check=False)

    assert proc.returncode != 0
    assert "Unauthorized" in proc.stderr or "provide credentials" in proc.stderr


def test_service_account_token_is_bound_by_rbac(k8s: ControlPlane, namespace: str) -> None:
    kubeconfig = k8s.service_account_kubeconfig(namespace, "reader")

    whoami = json.loads(k8s.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    denied = k8s.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    k8s.kubectl(
        "create", "role", "read-cm", "-n", namespace, "--verb=get,list", "--resource=configmaps"
    )
    k8s.kubectl(
        "create", "rolebinding", "reader-read-cm", "-n", namespace,
        "--role=read-cm", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip

    allowed = k8s.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert allowed.returncode == 0, allowed.stderr
    elsewhere = k8s.kubectl(
        "get", "configmaps", "-n", "default", kubeconfig=kubeconfig, check=False
    )
    assert "forbidden" in elsewhere.stderr.lower()


def test_namespace_fixture_gives_an_empty_fresh_namespace(
    k8s: ControlPlane, namespace: str
) -> None:
    phase = k8s.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Active"
    assert (
        k8s.kubectl("get", "configmaps,secrets", "-n", namespace, "-o", "name").stdout.strip() == ""
    )
