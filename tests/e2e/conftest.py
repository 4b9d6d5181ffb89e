"""Fixtures of the end-to-end suite: the cluster of processes and the embedded platform.

Each is started once for the suite (package scope) and stopped after its last test, so
the scenarios share start-up; every scenario makes its own users, projects and rules, so
none sees another's tasks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from smarttasks.gateway.embedded_db import EmbeddedPostgres
from tests.e2e.cluster import ClusterPlatform, running_cluster
from tests.e2e.embedded import EmbeddedPlatform, running_embedded
from tests.fixtures.amqp import RabbitNode
from tests.fixtures.k8s import ControlPlane


@pytest.fixture(scope="package")
async def cluster(
    postgres: EmbeddedPostgres,
    rabbitmq: RabbitNode,
    k8s: ControlPlane,
    automationrule_crd: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ClusterPlatform]:
    """users, tasks, rules-api, notifications, operator and relay, each its own process."""
    async with running_cluster(
        server_url=postgres.url,
        rabbitmq=rabbitmq,
        k8s=k8s,
        workdir=tmp_path_factory.mktemp("e2e-cluster"),
    ) as platform:
        yield platform


@pytest.fixture(scope="package")
async def embedded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedPlatform]:
    """One `smarttasks up` process with a fresh data folder."""
    async with running_embedded(tmp_path_factory.mktemp("e2e-embedded")) as platform:
        yield platform


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault drill (`test_faults.py`) before the other scenarios of this package.

    It loads two cores for minutes against deadlines, and the package's shared platforms,
    once started, run until the package's last test; it restarts the session's RabbitMQ,
    which the shared cluster would have to ride out.
    """
    here = Path(__file__).parent
    e2e = [n for n, item in enumerate(items) if item.path.is_relative_to(here)]
    if not e2e:
        return
    first, last = e2e[0], e2e[-1] + 1
    block = items[first:last]
    drill = [item for item in block if item.path.name == "test_faults.py"]
    items[first:last] = drill + [item for item in block if item not in drill]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, say where each component's log is and what errors it logged."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("cluster", "embedded"):
            platform = funcargs.get(name)
            if platform is not None:
                report.sections.append((f"{name} components", platform.report()))
    return report
