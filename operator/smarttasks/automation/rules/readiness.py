"""The Ready condition of a rule's status, and whether it needs writing at all (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from smarttasks.automation.rules.compiler import CompiledRule, RuleCompileError

READY = "Ready"
COMPILED = "Compiled"
COMPILE_FAILED = "CompileFailed"
MAX_MESSAGE = 32_768
"""The CRD's bound on a condition message."""


def describe(rule: CompiledRule) -> str:
    """One sentence on what a compiled rule does, for ``kubectl get -o wide`` readers."""
    if rule.before is not None:
        what = f"{_human(rule.before)} before the deadline of"
    elif rule.trigger.value == "TaskOverdue":
        again = f" (again every {_human(rule.repeat)})" if rule.repeat is not None else ""
        what = f"when overdue{again} for"
    elif rule.schedule is not None:
        what = f"on schedule {rule.schedule!r} ({rule.time_zone}) for"
    else:
        what = f"on {rule.trigger.value} for"
    scope = []
    if rule.owner is not None:
        scope.append(f"owned by {rule.owner}")
    for singular, plural, joiner, values in (
        ("in project", "in projects", ", ", rule.projects),
        ("labelled", "labelled", " or ", rule.labels),
        ("of priority", "of priority", " or ", rule.priorities),
    ):
        if values:
            scope.append(f"{plural if len(values) > 1 else singular} {joiner.join(sorted(values))}")
    if rule.condition is not None:
        scope.append("matching the condition")
    tasks = "tasks " + ", ".join(scope) if scope else "every task"
    state = "" if rule.enabled else " Disabled: it never fires until enabled."
    actions = len(rule.actions)
    plural = "s" if actions > 1 else ""
    return (
        f"Generation {rule.generation} compiled: fires {what} {tasks} "
        f"({actions} action{plural}).{state}"
    )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ready_condition(outcome: CompiledRule | RuleCompileError, *, generation: int) -> dict[str, Any]:
    """The Ready condition (without ``lastTransitionTime``) for a compile outcome."""
    if isinstance(outcome, RuleCompileError):
        status, reason, message = "False", COMPILE_FAILED, str(outcome)
    else:
        status, reason, message = "True", COMPILED, describe(outcome)
    return {
        "type": READY,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": generation,
    }


def status_patch(
    current: Mapping[str, Any] | None,
    outcome: CompiledRule | RuleCompileError,
    *,
    generation: int,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The ``status`` merge patch reporting ``outcome``, or None if the status already says so.

    Returning None when nothing changed is what keeps an operator restart from touching
    any rule. ``lastTransitionTime`` only moves when the condition's status flips; other
    conditions (written by others) are kept.
    """
    current = current or {}
    wanted = ready_condition(outcome, generation=generation)
    conditions: Sequence[Mapping[str, Any]] = current.get("conditions") or []
    existing = next((c for c in conditions if c.get("type") == READY), None)
    unchanged = (
        existing is not None
        and all(existing.get(k) == v for k, v in wanted.items())
        and current.get("observedGeneration") == generation
    )
    if unchanged:
        return None
    if existing is not None and existing.get("status") == wanted["status"]:
        transition = existing.get("lastTransitionTime")
    else:
        transition = None
    wanted["lastTransitionTime"] = transition or _rfc3339(now or datetime.now(UTC))
    others = [dict(c) for c in conditions if c.get("type") != READY]
    return {"observedGeneration": generation, "conditions": [*others, wanted]}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


__all__ = [
    "COMPILED",
    "COMPILE_FAILED",
    "READY",
    "describe",
    "ready_condition",
    "status_patch",
]
