"""At start-up: expose the kopf index of compiled rules as a RuleIndex, then start the rest."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state
from smarttasks.automation.rules.index import RuleIndex


@kopf.on.startup(registry=registry)
async def expose_rule_index(memo: kopf.Memo, **kwargs: Any) -> None:
    """``state.rules`` becomes a live, read-only RuleIndex over the ``compiled_rules`` index.

    Then the ``on_start`` hooks run (the engine starts here); kopf fills the index from
    its initial listing before any rule handler runs, so they find every existing rule.
    """
    shared = state(memo)
    # kopf passes each index to activity handlers as a keyword named after its function.
    compiled_rules: kopf.Index[Any, Any] = kwargs["compiled_rules"]
    shared.rules = RuleIndex(compiled_rules)
    for hook in shared.on_start:
        await hook(shared)
