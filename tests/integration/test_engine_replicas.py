"""Exactly once across replicas and crashes: engine processes killed with SIGKILL, two at once.

Each engine runs in its own process (`python -m tests.integration.test_engine_replicas`),
against the test database, with the same rules; the test process feeds task events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import testing
from smarttasks.automation.engine.consumer import TaskEventConsumer
from smarttasks.automation.engine.status import StatusTracker
from smarttasks.automation.engine.testing import OutboxWatcher, Tasks, deliver, index

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CREATED = datetime(2020, 1, 1, tzinfo=UTC)
RULES: list[dict[str, Any]] = [
    {
        "name": "overdue",
        "uid": "11111111-1111-1111-1111-111111111111",
        "spec": {
            "trigger": {"event": "TaskOverdue"},
            "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
        },
    },
    {
        "name": "overdue-urgent-hook",
        "uid": "22222222-2222-2222-2222-222222222222",
        "spec": {
            "trigger": {"event": "TaskOverdue"},
            "match": {"priorities": ["urgent"]},
            "actions": [{"notify": {"channel": "webhook", "url": "https://hooks.example.com/x"}}],
        },
    },
]


def compiled_rules() -> list[Any]:
    from smarttasks.automation.rules.compiler import compile_rule

    return [
        compile_rule(
            r["spec"], namespace="team-a", name=r["name"], uid=r["uid"], created_at=CREATED
        )
        for r in RULES
    ]


@pytest.fixture(scope="session")
def automation_db(database_url: str) -> str:
    testing.migrate(database_url)
    return database_url


@pytest.fixture
async def db(
    automation_db: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await testing.reset(sessions)
    yield sessions


class EngineProcess:
    """One engine in a child process; `ready` once its schedule loop runs."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> EngineProcess:
        env = {**os.environ, "SMARTTASKS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as stderr:  # the child keeps its own copy
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.integration.test_engine_replicas",
                self.url,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,  # closed when we go: the child then exits
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
        assert line.strip() == b"ready", self.log.read_text()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def feed(
    sessions: async_sessionmaker[AsyncSession],
    count: int,
    *,
    due_in: float,
    spread: float = 0.0,
    workers: int = 4,
) -> int:
    """Create `count` tasks (every 3rd urgent); the i-th is due `due_in + spread * i / count`
    seconds after it is created.

    Deadlines trail the feed, so they keep falling due for as long as tasks are coming in
    (and `spread` seconds more); a few feeders at once, as a runner with prefetch would.
    """
    consumer = TaskEventConsumer(index(*compiled_rules()), tracker=StatusTracker())
    tasks = Tasks()

    async def feeder(offset: int) -> None:
        for i in range(offset, count, workers):
            due = testing.now() + timedelta(seconds=due_in + spread * i / count)
            urgent = i % 3 == 0
            event = tasks.created(due_at=due, priority="urgent" if urgent else "normal")
            await deliver(sessions, consumer, event)

    async with asyncio.TaskGroup() as group:
        for offset in range(workers):
            group.create_task(feeder(offset))
    return count + len(range(0, count, 3))


Spawn = Callable[..., Awaitable[list[EngineProcess]]]


@pytest.fixture
async def spawn(automation_db: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start engine processes (concurrently); every one is stopped after the test."""
    started: list[EngineProcess] = []

    async def start(*names: str) -> list[EngineProcess]:
        procs = [EngineProcess(automation_db, tmp_path / f"{name}.log") for name in names]
        started.extend(procs)
        await asyncio.gather(*(proc.start() for proc in procs))
        return procs

    yield start
    for proc in started:
        await proc.stop()


async def assert_exactly_once(sessions: async_sessionmaker[AsyncSession], expected: int) -> None:
    async with sessions() as session:
        firings = (await session.execute(text("SELECT count(*) FROM automation.firings"))).scalar()
        messages = (
            await session.execute(
                text(
                    "SELECT count(*), count(DISTINCT payload->>'dedup_key') FROM automation.outbox"
                )
            )
        ).one()
        keys = (
            await session.execute(
                text(
                    "SELECT count(DISTINCT (rule_uid, task_id, occurrence)) FROM automation.firings"
                )
            )
        ).scalar()
    assert firings == expected
    assert keys == expected
    assert tuple(messages) == (expected, expected)


async def test_two_engines_at_once_fire_every_deadline_exactly_once(
    db: async_sessionmaker[AsyncSession], automation_db: str, spawn: Spawn
) -> None:
    await spawn("one", "two")
    async with OutboxWatcher(automation_db, db) as outbox:
        expected = await feed(db, 200, due_in=0.5)
        await outbox.wait_for(lambda n: n >= expected, timeout=60)
    await assert_exactly_once(db, expected)


async def test_an_engine_killed_mid_stream_resumes_without_losing_or_repeating(
    db: async_sessionmaker[AsyncSession], automation_db: str, spawn: Spawn
) -> None:
    [first] = await spawn("first")
    async with OutboxWatcher(automation_db, db) as outbox:
        feeding = asyncio.create_task(feed(db, 200, due_in=0.3, spread=3.0))
        # Kill it while deadlines are still falling due, mid-batch as likely as not.
        await outbox.wait_for(lambda n: n >= 40, timeout=60)
        first.kill()
        expected = await feeding
        # The last deadlines are seconds away: the killed engine cannot have fired them.
        assert await outbox.count() < expected
        # Deadlines kept passing with no engine up: the next one fires them late.
        await spawn("second")
        await outbox.wait_for(lambda n: n >= expected, timeout=60)
    await assert_exactly_once(db, expected)


async def test_one_of_two_engines_killed_the_other_carries_on(
    db: async_sessionmaker[AsyncSession], automation_db: str, spawn: Spawn
) -> None:
    victim, _survivor = await spawn("victim", "survivor")
    async with OutboxWatcher(automation_db, db) as outbox:
        feeding = asyncio.create_task(feed(db, 200, due_in=0.3, spread=3.0))
        await outbox.wait_for(lambda n: n >= 40, timeout=60)
        victim.kill()
        expected = await feeding
        assert await outbox.count() < expected
        await outbox.wait_for(lambda n: n >= expected, timeout=60)
    await assert_exactly_once(db, expected)


async def _serve(url: str) -> None:
    """Child process: run one engine over RULES until killed or terminated."""
    from smarttasks.automation.engine.runner import AutomationEngine, EngineSettings
    from smarttasks.automation.engine.status import MemoryStatusSink
    from smarttasks.core.db import create_engine, create_sessionmaker
    from smarttasks.core.logging import configure_logging
    from smarttasks.core.messaging.wakeup import notifying_relays

    configure_logging(json=False, level=os.environ.get("SMARTTASKS_LOG_LEVEL", "INFO"))
    db = create_engine(url, pool_size=4)
    engine = AutomationEngine(
        sessions=create_sessionmaker(db),
        database_url=url,
        rules=index(*compiled_rules()),
        sink=MemoryStatusSink(),
        settings=EngineSettings(database_url=url, engine_batch_size=50),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # The parent holds our stdin open; when it goes away (even killed), we go too.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
    ).start()
    # As in the operator process: firings' commits wake the relays (and the test's watcher).
    async with notifying_relays(db), engine:
        print("ready", flush=True)
        await stop.wait()
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
