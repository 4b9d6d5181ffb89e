"""On delete: let go of the rule and release its finalizer."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state

RETRY_DELAY = 10
"""Seconds before retrying a cleanup hook that failed (e.g. its database was away)."""


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, registry=registry)
async def release(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Forget the compiled rule and run the cleanup hooks; kopf then removes the finalizer.

    The rule already left the index when its deletion began (see ``compiled_rules``),
    so nothing fires for it meanwhile.
    """
    shared = state(memo)
    uid = str(meta.get("uid") or "")
    for hook in shared.on_delete:
        try:
            await hook(uid)
        except Exception as exc:  # whatever the hook's dependency, it may come back
            raise kopf.TemporaryError(
                f"cleanup failed, retrying: {exc}", delay=RETRY_DELAY
            ) from exc
    shared.cache.forget(uid)
    shared.changed()
