"""Rule status publication: one merge patch per touched rule per flush, in the CRD's shape."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from smarttasks.automation.engine.status import KubernetesStatusSink, RuleStatus, StatusTracker
from smarttasks.core.events import RuleRef


def status(name: str, **fields: Any) -> RuleStatus:
    ref = RuleRef(namespace="team-a", name=name, uid=f"uid-{name}", generation=1)
    values: dict[str, Any] = {
        "fired_count": 3,
        "throttled_count": 1,
        "last_fired_at": datetime(2030, 1, 7, 9, 0, 0, 250000, tzinfo=UTC),
        "last_error": None,
    }
    values.update(fields)
    return RuleStatus(rule=ref, **values)


class ApiError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.status = code


class FakeCustomObjects:
    """Records status patches as the kubernetes client would receive them."""

    def __init__(self, failing: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failing = failing or {}
        self._lock = threading.Lock()

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append((*args, kwargs))
        name = args[4]
        if name in self.failing:
            raise ApiError(self.failing[name])


def test_the_patch_carries_the_crd_fields() -> None:
    assert status("a").patch() == {
        "firedCount": 3,
        "throttledCount": 1,
        "lastFiredAt": "2030-01-07T09:00:00.250000Z",
    }
    assert status("b", last_error="boom", last_fired_at=None).patch() == {
        "firedCount": 3,
        "throttledCount": 1,
        "lastError": "boom",
    }


async def test_kubernetes_sink_merge_patches_each_rule_once() -> None:
    api = FakeCustomObjects()
    sink = KubernetesStatusSink(api, group="smarttasks.io", version="v1alpha1", plural="rules")
    await sink.publish([status("a"), status("b")])
    assert sorted(call[4] for call in api.calls) == ["a", "b"]
    for call in api.calls:
        group, version, namespace, plural, _name, body, kwargs = call
        assert (group, version, namespace, plural) == (
            "smarttasks.io",
            "v1alpha1",
            "team-a",
            "rules",
        )
        assert set(body) == {"status"}
        assert kwargs == {"_content_type": "application/merge-patch+json"}


async def test_kubernetes_sink_skips_deleted_rules_but_reports_other_failures() -> None:
    gone = FakeCustomObjects(failing={"a": 404})
    sink = KubernetesStatusSink(gone, group="g", version="v", plural="p")
    await sink.publish([status("a"), status("b")])
    assert len(gone.calls) == 2
    failing = FakeCustomObjects(failing={"b": 500})
    broken = KubernetesStatusSink(failing, group="g", version="v", plural="p")
    with pytest.raises(ExceptionGroup):
        await broken.publish([status("a"), status("b"), status("c")])
    assert sorted(call[4] for call in failing.calls) == ["a", "b", "c"]


def test_tracker_keeps_errors_until_flushed_and_restores_on_failure() -> None:
    tracker = StatusTracker()
    a = RuleRef(namespace="n", name="a", uid="ua", generation=1)
    b = RuleRef(namespace="n", name="b", uid="ub", generation=1)
    tracker.touched([a])
    tracker.error(b, "x" * 5000)
    dirty, errors = tracker.drain()
    assert set(dirty) == {"ua", "ub"}
    assert len(errors["ub"]) == 1024
    assert tracker.drain() == ({}, {})
    tracker.restore(dirty)
    assert set(tracker.drain()[0]) == {"ua", "ub"}
