"""Pure rule code: the spec model, the compiler, the index and the matcher (no kopf, no I/O).

The engine's API::

    rule = compile_rule(spec, namespace=..., name=..., uid=..., generation=..., labels=...)
    index = RuleIndex(); index.put(rule)            # or RuleIndex(kopf_index)
    for rule in index.matching(TriggerEvent.TASK_UPDATED, task, changes): ...
    rule.render(task=task, changes=changes)         # -> [RenderedAction]
"""

from smarttasks.automation.rules.compiler import (
    CompiledAction,
    CompiledRule,
    RenderedAction,
    RuleCompileError,
    compile_resource,
    compile_rule,
)
from smarttasks.automation.rules.conditions import ConditionError
from smarttasks.automation.rules.documents import TaskDocument, changes_document, task_document
from smarttasks.automation.rules.index import (
    TRIGGER_FOR_TASK_EVENT,
    BucketKey,
    RuleIndex,
    bucket_keys,
)
from smarttasks.automation.rules.matcher import Check, MatchSubject, explain, matches
from smarttasks.automation.rules.model import Channel, Priority, RuleSpec, TriggerEvent
from smarttasks.automation.rules.schedules import CronSchedule
from smarttasks.automation.rules.templates import TemplateRenderError

__all__ = [
    "TRIGGER_FOR_TASK_EVENT",
    "BucketKey",
    "Channel",
    "Check",
    "CompiledAction",
    "CompiledRule",
    "ConditionError",
    "CronSchedule",
    "MatchSubject",
    "Priority",
    "RenderedAction",
    "RuleCompileError",
    "RuleIndex",
    "RuleSpec",
    "TaskDocument",
    "TemplateRenderError",
    "TriggerEvent",
    "bucket_keys",
    "changes_document",
    "compile_resource",
    "compile_rule",
    "explain",
    "matches",
    "task_document",
]
