"""On create, update and resume: compile the rule and report it in ``status``."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers.bodies import plain
from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state
from smarttasks.automation.rules.compiler import RuleCompileError
from smarttasks.automation.rules.readiness import COMPILE_FAILED, status_patch


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL, registry=registry)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL, registry=registry)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, registry=registry)
async def reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Set Ready (Compiled / CompileFailed) and observedGeneration, if they changed.

    A rule that does not compile is a handled outcome, not a handler failure: it is
    reported as Ready=False with the compiler's message, and once as a Warning Event
    (reason CompileFailed, shown by ``kubectl describe``).
    Raising PermanentError instead would make kopf write failure annotations on the rule
    and repeat them on every restart. Nothing is written when the status already says
    the same (an operator restart touches no rule).
    """
    shared = state(memo)
    outcome = shared.cache.outcome(plain(body))
    change = status_patch(plain(status), outcome, generation=int(meta.get("generation") or 0))
    if change is not None:
        patch.status.update(change)
        if isinstance(outcome, RuleCompileError):
            logger.info(f"The rule does not compile: {outcome}")
            kopf.warn(body, reason=COMPILE_FAILED, message=f"The rule does not compile: {outcome}")
    shared.changed()
