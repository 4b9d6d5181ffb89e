"""Deleting an AutomationRule reaches the engine before the finalizer is released."""

from __future__ import annotations

import kopf
import pytest

from smarttasks.automation.handlers import MEMO_KEY, OperatorState
from smarttasks.automation.handlers.delete import release
from smarttasks.automation.operator_settings import OperatorSettings


class Engine:
    """Stands in for `AutomationEngine`: what the delete handler may call."""

    def __init__(self, *, fails: bool = False) -> None:
        self.deleted: list[str] = []
        self.fails = fails

    async def rule_deleted(self, uid: str) -> None:
        if self.fails:
            raise ConnectionError("database unavailable")
        self.deleted.append(uid)


def operator_with(engine: Engine) -> tuple[OperatorState, kopf.Memo]:
    state = OperatorState(config=OperatorSettings())
    # As `attach_engine` registers the engine once it runs in this replica.
    state.on_delete.append(engine.rule_deleted)
    state.resources["engine"] = engine
    memo = kopf.Memo()
    memo[MEMO_KEY] = state
    return state, memo


async def test_the_engine_forgets_a_deleted_rule_once_and_listeners_hear_of_it() -> None:
    engine = Engine()
    state, memo = operator_with(engine)
    changes: list[str] = []
    state.on_change.append(lambda: changes.append("changed"))

    await release(meta={"uid": "rule-uid-1"}, memo=memo)

    assert engine.deleted == ["rule-uid-1"]
    assert changes == ["changed"]


async def test_a_failing_engine_keeps_the_finalizer_and_is_retried() -> None:
    engine = Engine(fails=True)
    _, memo = operator_with(engine)

    with pytest.raises(kopf.TemporaryError, match="database unavailable"):
        await release(meta={"uid": "rule-uid-2"}, memo=memo)

    engine.fails = False
    await release(meta={"uid": "rule-uid-2"}, memo=memo)
    assert engine.deleted == ["rule-uid-2"]
