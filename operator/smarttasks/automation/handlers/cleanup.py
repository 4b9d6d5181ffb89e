"""At shutdown: stop what the start-up hooks started, in reverse order."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state


@kopf.on.cleanup(registry=registry)
async def stop_hooks(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Await every ``on_stop`` hook, last registered first; one failing does not stop the rest."""
    for hook in reversed(state(memo).on_stop):
        try:
            await hook(state(memo))
        except Exception as exc:  # shutting down: report and carry on with the others
            logger.error(f"A shutdown hook failed: {exc!r}")
