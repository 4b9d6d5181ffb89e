"""The kopf index of compiled rules: what the engine reads, bucketed for fast matching."""

from __future__ import annotations

from typing import Any

import kopf

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers.bodies import plain
from smarttasks.automation.handlers.registry import registry
from smarttasks.automation.handlers.state import state
from smarttasks.automation.rules.compiler import CompiledRule
from smarttasks.automation.rules.index import BucketKey, bucket_keys


@kopf.index(API_GROUP, API_VERSION, PLURAL, registry=registry)
async def compiled_rules(
    body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> dict[BucketKey, CompiledRule]:
    """Each compiled rule under its ``bucket_keys``; nothing for one that does not compile.

    kopf calls this on every watch event of a rule and drops a deleted rule's entries by
    itself; compiling happens once per generation (the cache). A rule being deleted leaves
    the index at once, so it stops firing before its finalizer is even released.
    """
    if meta.get("deletionTimestamp"):
        return {}
    outcome = state(memo).cache.outcome(plain(body))
    if not isinstance(outcome, CompiledRule):
        return {}
    return dict.fromkeys(bucket_keys(outcome), outcome)
