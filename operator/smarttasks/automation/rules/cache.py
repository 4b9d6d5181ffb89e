"""Compile each rule once per generation, however often its resource is seen (pure)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules.compiler import CompiledRule, RuleCompileError, compile_resource

Outcome = CompiledRule | RuleCompileError
"""A compiled rule, or why it does not compile."""


class CompileCache:
    """The latest compile outcome per resource uid.

    The operator sees a rule many times per generation (the index on every watch event,
    then the create/update/resume handler, then status changes); all but the first are
    lookups. An entry is reused only for the same generation and owner label, since a
    label change does not bump the generation. Bounded: the least recently used entry
    goes first once ``max_entries`` is reached.
    """

    def __init__(self, *, max_entries: int = 50_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[tuple[Any, ...], Outcome]] = OrderedDict()
        self.compilations = 0
        """How many times a rule was actually compiled (not served from the cache)."""

    def outcome(self, body: Mapping[str, Any]) -> Outcome:
        """The compile outcome of an AutomationRule resource body."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
        labels = meta.get("labels") or {}
        key = (
            meta.get("namespace"),
            meta.get("name"),
            meta.get("generation"),
            labels.get(OWNER_LABEL),
        )
        hit = self._entries.get(uid)
        if hit is not None and hit[0] == key:
            self._entries.move_to_end(uid)
            return hit[1]
        outcome: Outcome
        try:
            outcome = compile_resource(body)
        except RuleCompileError as exc:
            outcome = exc
        self.compilations += 1
        self._entries[uid] = (key, outcome)
        self._entries.move_to_end(uid)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return outcome

    def forget(self, uid: str) -> None:
        """Drop the entry of a deleted resource."""
        self._entries.pop(uid, None)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["CompileCache", "Outcome"]
