"""The automation engine: fires rules on task events and on time, each firing exactly once.

Pure core (`triggers`, `cron`, `messages`, `model`) and adapters around it (`projection`,
`schedule`, `firings`, `throttle`, `digest`, `status`, `consumer`, `runner`).
"""

from smarttasks.automation.engine.consumer import TaskEventConsumer, task_event_consumer
from smarttasks.automation.engine.model import EngineRule, Firing, FiringKey, RuleSource
from smarttasks.automation.engine.runner import AutomationEngine, EngineSettings, open_engine
from smarttasks.automation.engine.status import (
    DatabaseStatusSink,
    KubernetesStatusSink,
    MemoryStatusSink,
    RuleStatus,
    StatusSink,
    read_statuses,
)
from smarttasks.automation.engine.tables import SCHEMA

__all__ = [
    "SCHEMA",
    "AutomationEngine",
    "DatabaseStatusSink",
    "EngineRule",
    "EngineSettings",
    "Firing",
    "FiringKey",
    "KubernetesStatusSink",
    "MemoryStatusSink",
    "RuleSource",
    "RuleStatus",
    "StatusSink",
    "TaskEventConsumer",
    "open_engine",
    "read_statuses",
    "task_event_consumer",
]
