"""Run the automation operator: ``python -m smarttasks.automation.main``.

Reads :class:`OperatorSettings` from ``SMARTTASKS_*`` variables, then runs kopf with the
handlers of ``smarttasks.automation.handlers`` until SIGTERM/SIGINT. Embedders (the CLI,
tests) call :func:`run_operator` with their own stop and ready flags, and may pass an
:class:`OperatorState` with hooks already registered (``on_start`` starts the engine).
"""

from __future__ import annotations

import asyncio
import contextlib

import kopf
import structlog
import uvloop

from smarttasks.automation import API_GROUP, API_VERSION, PLURAL
from smarttasks.automation.handlers import MEMO_KEY, OperatorState, registry
from smarttasks.automation.operator_settings import OperatorSettings, kopf_settings
from smarttasks.core.logging import configure_logging
from smarttasks.core.messaging import MessagingSettings
from smarttasks.core.metrics import serve_metrics

log = structlog.get_logger()

# Where `run_operator` leaves this replica's peering priority for the engine's gate.
PEERING_PRIORITY_KEY = "peering_priority"


def attach_engine(state: OperatorState) -> None:
    """Run the automation engine in this process, over the operator's RuleIndex.

    At start-up (once the index of compiled rules exists) the engine opens with its own
    database pool, status sink (PATCHes of ``status`` with the operator's credentials)
    and RabbitMQ consumer of task events; it learns of rule changes from the handlers
    and is closed at shutdown.
    """
    from kubernetes import client

    from smarttasks.automation.activation import EngineGate
    from smarttasks.automation.engine import EngineSettings, KubernetesStatusSink, open_engine
    from smarttasks.automation.kube import api_client
    from smarttasks.core.db import create_engine
    from smarttasks.core.messaging import ConsumerRunner, MessagingSettings
    from smarttasks.core.messaging.wakeup import notifying_relays

    stack = contextlib.AsyncExitStack()
    activation: list[asyncio.Task[None]] = []

    async def activate(shared: OperatorState, kube: client.ApiClient) -> None:
        if shared.rules is None:
            raise RuntimeError("the rule index must exist before the engine starts")
        api = client.CustomObjectsApi(kube)
        priority = int(shared.resources.get(PEERING_PRIORITY_KEY, 0))
        await EngineGate(shared, api, priority=priority).wait()
        settings = EngineSettings()
        messaging = MessagingSettings()
        sink = KubernetesStatusSink(api, group=API_GROUP, version=API_VERSION, plural=PLURAL)
        engine = await stack.enter_async_context(
            open_engine(settings, rules=shared.rules, sink=sink)
        )
        shared.on_change.append(engine.rules_changed)
        shared.on_delete.append(engine.rule_deleted)
        database = create_engine(messaging.database_url, pool_size=messaging.database_pool_size)
        stack.push_async_callback(database.dispose)
        # Events can fire rules: their outbox rows wake the relays after each commit.
        await stack.enter_async_context(notifying_relays(database))
        runner = ConsumerRunner(engine.task_consumer, engine=database, settings=messaging)
        consuming = asyncio.create_task(runner.run(), name="automation-task-events")

        async def stop_consuming() -> None:
            runner.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming

        stack.push_async_callback(stop_consuming)
        shared.resources["engine"] = engine

    async def start(shared: OperatorState) -> None:
        # Rules are handled at once; the engine follows when this replica leads and its
        # rule index is complete (see `activation`), which kopf reaches only after start-up.
        kube = await asyncio.to_thread(api_client, shared.config.operator_kubeconfig)
        stack.callback(kube.close)
        task = asyncio.create_task(activate(shared, kube), name="automation-engine-activation")
        task.add_done_callback(_report_activation)
        activation.append(task)

    async def stop(_shared: OperatorState) -> None:
        for task in activation:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await stack.aclose()

    state.on_start.append(start)
    state.on_stop.append(stop)


def _report_activation(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("automation_engine_start_failed", exc_info=task.exception())


async def run_operator(
    config: OperatorSettings,
    *,
    state: OperatorState | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator in this event loop until ``stop_flag`` is set (or a signal arrives).

    ``ready_flag`` is set once start-up is done and rules are being handled. Without a
    ``state``, a new one is made, with the engine attached if ``operator_engine_enabled``;
    a caller passing its own state attaches what it wants (tests: nothing).

    kopf owns the event loop it runs in: when it stops, it cancels every task left in
    it. Embed it in a loop (or thread) of its own.
    """
    if state is None:
        state = OperatorState(config=config)
        if config.operator_engine_enabled:
            attach_engine(state)
    shared = state
    settings = kopf_settings(config)
    shared.resources[PEERING_PRIORITY_KEY] = settings.peering.priority
    memo = kopf.Memo()
    memo[MEMO_KEY] = shared
    liveness = (
        f"http://0.0.0.0:{config.operator_liveness_port}/healthz"
        if config.operator_liveness_port
        else None
    )
    log.info(
        "operator_starting",
        namespaces=config.operator_namespaces or "all",
        peering=config.operator_peering_mode.value,
    )
    await kopf.operator(
        registry=registry,
        settings=settings,
        clusterwide=config.clusterwide,
        namespaces=config.operator_namespaces,
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness,
    )


def main() -> int:
    """Entry point of ``smarttasks run operator``."""
    config = OperatorSettings()
    configure_logging(json=config.json_logs, level=config.log_level)
    # The engine's and its consumer's metrics; the port is the messaging settings' one.
    serve_metrics(MessagingSettings().metrics_port)
    # uvloop, as kopf's own CLI and uvicorn (for the services) choose when it is installed.
    uvloop.run(run_operator(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
