"""kopf handlers of the automation operator, one per module, all in ``registry``.

Importing this package registers them: ``login``, ``startup`` (the RuleIndex for the
engine, then the ``on_start`` hooks), ``index`` (the compiled rules), ``reconcile``
(create/update/resume → status), ``delete`` (finalizer) and ``cleanup`` (``on_stop``).
"""

from smarttasks.automation.handlers import cleanup, delete, index, login, reconcile, startup
from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import MEMO_KEY, OperatorState, state

__all__ = [
    "MEMO_KEY",
    "OperatorState",
    "cleanup",
    "delete",
    "index",
    "login",
    "reconcile",
    "registry",
    "startup",
    "state",
]
