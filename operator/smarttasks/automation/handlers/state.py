"""What the handlers share for the lifetime of one operator process (kept in kopf's memo)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from smarttasks.automation.operator_settings import OperatorSettings
from smarttasks.automation.rules.cache import CompileCache
from smarttasks.automation.rules.index import RuleIndex

log = structlog.get_logger()

MEMO_KEY = "automation"

RuleDeleted = Callable[[str], Awaitable[None]]
"""Called with the uid of a rule being deleted, before its finalizer is released."""
Lifecycle = Callable[["OperatorState"], Awaitable[None]]
"""Called at operator start-up (after ``rules`` is set) or shutdown, with the state."""


@dataclass
class OperatorState:
    """The compile cache, the rule index over the kopf index, and who to tell of changes."""

    config: OperatorSettings
    cache: CompileCache = field(default_factory=CompileCache)
    rules: RuleIndex | None = None
    """Set at start-up: a live view of the ``compiled_rules`` kopf index."""
    on_change: list[Callable[[], None]] = field(default_factory=list)
    """Called after a rule was added, changed or removed (e.g. ``engine.rules_changed``)."""
    on_delete: list[RuleDeleted] = field(default_factory=list)
    """Awaited before a deleted rule's finalizer is released (e.g. to drop its schedule)."""
    on_start: list[Lifecycle] = field(default_factory=list)
    """Awaited at start-up once ``rules`` is set (e.g. to start the engine over it)."""
    on_stop: list[Lifecycle] = field(default_factory=list)
    """Awaited at shutdown, in reverse order (e.g. to stop the engine)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """Whatever else the process keeps for its lifetime (the engine, its exit stack)."""

    def changed(self) -> None:
        """Tell every listener that the set of compiled rules changed."""
        for listener in self.on_change:
            try:
                listener()
            except Exception:  # a listener's failure must not fail the rule's handling
                log.exception("rules_changed_listener_failed")


def state(memo: Any) -> OperatorState:
    """The operator state from a handler's ``memo`` (created by ``main`` or at start-up)."""
    found = memo.get(MEMO_KEY)
    if not isinstance(found, OperatorState):
        raise LookupError("the operator state is missing from the memo; start via main.py")
    return found


__all__ = ["MEMO_KEY", "Lifecycle", "OperatorState", "RuleDeleted", "state"]
