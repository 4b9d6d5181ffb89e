"""RuleIndex: find the few rules an event can match without looking at every rule.

Every enabled rule is filed under its trigger in exactly one *selective* bucket: its
owner (rules made through the REST API) if it has one, else each of its projects, else
each of its labels, else each of its priorities, else the trigger's catch-all bucket.
A task can only match rules in the buckets named by its own owner, project, labels and
priority, plus the catch-all, so :meth:`RuleIndex.candidates` looks up just those;
``matches()`` then decides. Each rule is also filed under ``(trigger, "all")`` for the
time-based triggers, which consider every rule of their kind, and under its key.

The buckets are a plain mapping ``{BucketKey: rules}``: the operator keeps them in a kopf
index (see ``handlers/index.py``: ``compiled_rules`` returns ``{key: rule for key in
bucket_keys(rule)}``), so kopf adds, replaces and drops them as resources change;
embedded mode and tests use a ``RuleIndex()`` that owns its buckets and is fed with
:meth:`RuleIndex.put` and :meth:`RuleIndex.discard`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from smarttasks.automation.rules.compiler import CompiledRule
from smarttasks.automation.rules.documents import task_document
from smarttasks.automation.rules.matcher import MatchSubject, TaskLike, matches
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import TaskEventType

BucketKey = tuple[str, str, str]
"""``(trigger event, dimension, value)``, e.g. ``("TaskOverdue", "project", "apollo")``."""

ALL = "all"
ANY = "any"
KEY = "key"
UID = "uid"
OWNER = "owner"
PROJECT = "project"
LABEL = "label"
PRIORITY = "priority"
_BY_KEY = "*"

TRIGGER_FOR_TASK_EVENT: Mapping[TaskEventType, TriggerEvent] = {
    TaskEventType.CREATED: TriggerEvent.TASK_CREATED,
    TaskEventType.UPDATED: TriggerEvent.TASK_UPDATED,
    TaskEventType.ASSIGNED: TriggerEvent.TASK_ASSIGNED,
    TaskEventType.COMPLETED: TriggerEvent.TASK_COMPLETED,
    TaskEventType.DELETED: TriggerEvent.TASK_DELETED,
}
"""The rule trigger each task event (routing key) fires."""


def bucket_keys(rule: CompiledRule) -> list[BucketKey]:
    """The buckets ``rule`` is filed under; a disabled rule is only findable by key and uid."""
    keys: list[BucketKey] = [(_BY_KEY, KEY, rule.key)]
    if rule.uid:
        keys.append((_BY_KEY, UID, rule.uid))
    if not rule.enabled:
        return keys
    event = rule.trigger.value
    keys.append((event, ALL, ""))
    if rule.owner is not None:
        keys.append((event, OWNER, str(rule.owner)))
    elif rule.projects:
        keys.extend((event, PROJECT, p) for p in sorted(rule.projects))
    elif rule.labels:
        keys.extend((event, LABEL, label) for label in sorted(rule.labels))
    elif rule.priorities:
        keys.extend((event, PRIORITY, p) for p in sorted(rule.priorities))
    else:
        keys.append((event, ANY, ""))
    return keys


class RuleIndex:
    """Compiled rules by trigger and by owner/project/label/priority bucket.

    ``RuleIndex()`` owns its buckets (fill it with :meth:`put`); ``RuleIndex(source)`` is a
    live read-only view of a mapping such as the operator's kopf index. Read it from the
    event-loop thread that updates it. Results are ordered by rule key.
    """

    def __init__(self, source: Mapping[BucketKey, Iterable[CompiledRule]] | None = None) -> None:
        self._source = source
        self._owned: dict[BucketKey, dict[str, CompiledRule]] = {}
        self._filed: dict[str, list[BucketKey]] = {}

    # -- reading ---------------------------------------------------------------------------

    def candidates(self, event: TriggerEvent, task: TaskLike) -> list[CompiledRule]:
        """The enabled rules of trigger ``event`` that ``task`` could match (a superset)."""
        doc = task_document(task)
        ev = event.value
        keys: list[BucketKey] = [(ev, ANY, "")]
        if doc.get("owner_id"):
            keys.append((ev, OWNER, str(doc["owner_id"])))
        if doc.get("project"):
            keys.append((ev, PROJECT, str(doc["project"])))
        keys.extend((ev, LABEL, str(label)) for label in doc.get("labels") or ())
        if doc.get("priority"):
            keys.append((ev, PRIORITY, str(doc["priority"])))
        found: dict[str, CompiledRule] = {}
        for key in keys:
            for rule in self._lookup(key):
                found[rule.key] = rule
        return [found[k] for k in sorted(found)]

    def matching(
        self,
        event: TriggerEvent,
        task: TaskLike,
        changes: Mapping[str, Sequence[Any]] | None = None,
        *,
        now: datetime | None = None,
    ) -> list[CompiledRule]:
        """The enabled rules of trigger ``event`` that ``task`` matches (``matches()`` each)."""
        subject = MatchSubject(task, changes, now=now)  # converted once for every rule
        return [rule for rule in self.candidates(event, subject.task) if matches(rule, subject)]

    def rules(self, event: TriggerEvent | None = None) -> list[CompiledRule]:
        """Every enabled rule of trigger ``event`` (of every trigger when None)."""
        events = [event] if event is not None else list(TriggerEvent)
        found = {rule.key: rule for ev in events for rule in self._lookup((ev.value, ALL, ""))}
        return [found[k] for k in sorted(found)]

    def for_trigger(self, trigger: TriggerEvent) -> list[CompiledRule]:
        """Every enabled rule of ``trigger`` (the time triggers consider them all)."""
        return self.rules(trigger)

    def get(self, uid: str) -> CompiledRule | None:
        """The compiled rule with resource uid ``uid`` (enabled or not), if it compiled."""
        return next(iter(self._lookup((_BY_KEY, UID, uid))), None)

    def by_key(self, key: str) -> CompiledRule | None:
        """The compiled rule ``namespace/name`` (enabled or not), if it compiled."""
        return next(iter(self._lookup((_BY_KEY, KEY, key))), None)

    def __len__(self) -> int:
        """How many enabled rules are indexed."""
        return len(self.rules())

    def _lookup(self, key: BucketKey) -> Iterable[CompiledRule]:
        if self._source is None:
            bucket = self._owned.get(key)
            return bucket.values() if bucket else ()
        try:
            return self._source[key]
        except KeyError:
            return ()

    # -- writing (owned buckets only) ---------------------------------------------------

    def put(self, rule: CompiledRule) -> None:
        """Add ``rule``, replacing any earlier generation of the same key."""
        self._require_owned()
        self.discard(rule.key)
        keys = bucket_keys(rule)
        for key in keys:
            self._owned.setdefault(key, {})[rule.key] = rule
        self._filed[rule.key] = keys

    def discard(self, key: str) -> None:
        """Remove the rule ``namespace/name``; nothing happens if it is absent."""
        self._require_owned()
        for bucket_key in self._filed.pop(key, ()):
            bucket = self._owned.get(bucket_key)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self._owned[bucket_key]

    def _require_owned(self) -> None:
        if self._source is not None:
            raise TypeError("this RuleIndex is a read-only view of another mapping")


__all__ = [
    "TRIGGER_FOR_TASK_EVENT",
    "BucketKey",
    "RuleIndex",
    "bucket_keys",
]
