"""When the operator process may start its automation engine.

The engine reads rules from the operator's kopf index. kopf fills that index only after
the start-up handlers ran, and not at all while this replica stands by for a peer of
higher priority (peering pauses its watches). An engine started on an empty or stale
index would take task events and due deadlines off the shared queue and schedule and
find no rule for them. So the engine starts once both hold:

- this replica leads: no live peer in the KopfPeering objects has a higher priority, and
  none shares its priority (kopf pauses all of those);
- the index is complete: every AutomationRule that a LIST at start-up returned, and that
  compiles, is in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers.bodies import plain
from smarttasks.automation.handlers.state import OperatorState
from smarttasks.automation.operator_settings import PeeringMode
from smarttasks.automation.rules.compiler import CompiledRule

log = structlog.get_logger()

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
_RECHECK_SECONDS = 2.0


def _alive(peer: Mapping[str, Any], now: datetime) -> bool:
    try:
        lastseen = datetime.fromisoformat(str(peer["lastseen"]))
        lifetime = timedelta(seconds=int(peer.get("lifetime", 60)))
    except (KeyError, TypeError, ValueError):
        return False
    if lastseen.tzinfo is None:
        lastseen = lastseen.replace(tzinfo=UTC)
    return lastseen + lifetime > now


def leads(peers: Mapping[str, Any], *, priority: int, now: datetime) -> bool:
    """Whether a replica of `priority` is active given a peering object's `status`.

    The status maps each peer's identity to its priority and keep-alive; this replica's
    own entry (if already written) counts once among those of equal priority.
    """
    live = [p for p in peers.values() if isinstance(p, Mapping) and _alive(p, now)]
    priorities = [int(p.get("priority", 0)) for p in live]
    return all(p <= priority for p in priorities) and priorities.count(priority) <= 1


def expected_rules(items: Iterable[Mapping[str, Any]], state: OperatorState) -> set[str]:
    """Keys (`namespace/name`) of the listed rules that compile and are not being deleted."""
    keys: set[str] = set()
    for item in items:
        meta = item.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        outcome = state.cache.outcome(plain(item))
        if isinstance(outcome, CompiledRule):
            keys.add(outcome.key)
    return keys


class EngineGate:
    """Awaits the moment the engine may start (see the module's docstring)."""

    def __init__(
        self,
        state: OperatorState,
        api: CustomObjectsApi,
        *,
        priority: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._state = state
        self._api = api
        self._priority = priority
        self._clock = clock
        self._changed = asyncio.Event()
        state.on_change.append(self._changed.set)

    async def wait(self) -> None:
        config = self._state.config
        listed = await asyncio.to_thread(self._list_rules)
        expected = expected_rules(listed, self._state)
        waiting_since = self._clock()
        logged = False
        while True:
            missing = self._missing(expected)
            leading = config.operator_peering_mode is PeeringMode.STANDALONE or (
                await asyncio.to_thread(self._leads)
            )
            if leading and not missing:
                log.info(
                    "engine_gate_open",
                    rules=len(expected),
                    waited_s=round((self._clock() - waiting_since).total_seconds(), 3),
                )
                return
            if not logged:
                log.info("engine_gate_waiting", leading=leading, missing_rules=len(missing))
                logged = True
            self._changed.clear()
            try:
                async with asyncio.timeout(_RECHECK_SECONDS):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _missing(self, expected: set[str]) -> list[str]:
        index = self._state.rules
        if index is None:
            return sorted(expected)
        return sorted(key for key in expected if index.by_key(key) is None)

    def _list_rules(self) -> list[Mapping[str, Any]]:
        config = self._state.config
        if config.clusterwide:
            found: Any = self._api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)
            return list(found.get("items", []))
        items: list[Mapping[str, Any]] = []
        for namespace in config.operator_namespaces:
            page: Any = self._api.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL
            )
            items.extend(page.get("items", []))
        return items

    def _leads(self) -> bool:
        config = self._state.config
        name = config.operator_peering_name
        now = self._clock()
        bodies: list[Any]
        try:
            if config.clusterwide:
                bodies = [
                    self._api.get_cluster_custom_object(
                        PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name
                    )
                ]
            else:
                bodies = [
                    self._api.get_namespaced_custom_object(
                        PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name
                    )
                    for namespace in config.operator_namespaces
                ]
        except ApiException as exc:
            if exc.status == 404 and config.operator_peering_mode is PeeringMode.AUTO:
                return True  # no peering object: kopf runs this replica on its own
            log.warning("engine_gate_peering_unreadable", status=exc.status)
            return False
        return all(
            leads(body.get("status") or {}, priority=self._priority, now=now) for body in bodies
        )


__all__ = ["EngineGate", "expected_rules", "leads"]
