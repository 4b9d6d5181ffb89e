"""Engine benchmarks: `python -m bench.engine`.

1. Deadline latency: open tasks whose deadlines fall due over 10 minutes sit in the
   projection and the schedule (loaded in bulk, as the task-event handler would leave
   them); the engine runs as in production and every firing's latency is taken when its
   transaction (firing row + `notification.requested` outbox rows) has committed, minus
   the deadline. To keep a run short only the first `--window` seconds of the 10 minutes
   are measured: the rate (tasks per second falling due) and the table sizes are those of
   the full run. Reference, same run: a bare `SELECT ... FOR UPDATE SKIP LOCKED` claim plus
   commit on a table of the same size.
2. Matching throughput: task events (creations, updates, assignments, completions,
   deletions) against 1,000 compiled rules, through the engine's event path (index
   lookup, match incl. CEL, rendering); and the same through the whole handler with the
   database (projection, schedule arming with the rules' schedule kinds, firings, outbox),
   in as many lanes as the consumer runner has by default (one task's events in one
   lane, in order): one event per transaction (`handle`), then as the operator runs it:
   the runner's `apply_many`, `--batch` events per transaction with their inbox rows,
   handed to `handle_batch` at once.
3. Memory: an engine process over 1,000,000 scheduled deadlines (the schedule lives in
   PostgreSQL); its peak RSS.

Median of 3 runs; results go to bench/results/engine.json and the `## Engine` section of
docs/benchmarks.md (`--sections` measures a part and only prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.common import machine, median, write_result, write_section
from bench.engine import workload
from smarttasks.automation.engine import testing
from smarttasks.automation.engine.consumer import TaskEventConsumer, task_event_consumer
from smarttasks.automation.engine.firings import Recorded
from smarttasks.automation.engine.messages import build_requests
from smarttasks.automation.engine.runner import AutomationEngine, EngineSettings
from smarttasks.automation.engine.schedule import Scheduler
from smarttasks.automation.engine.status import MemoryStatusSink, StatusTracker
from smarttasks.automation.engine.testing import index
from smarttasks.automation.engine.triggers import event_firings
from smarttasks.core.db import create_engine, create_sessionmaker, unit_of_work
from smarttasks.core.events import EVENTS_EXCHANGE, TaskEvent
from smarttasks.core.messaging.envelope import Envelope
from smarttasks.core.messaging.inbox import apply_many, apply_once
from smarttasks.core.messaging.settings import MessagingSettings
from smarttasks.gateway.embedded_db import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
TARGET_P99_MS = 250.0
TARGET_EVENTS = 2000.0
TARGET_RSS_MB = 300.0
FULL_WINDOW = 600.0
SECTIONS = ("latency", "throughput", "memory")
_MESSAGING_DEFAULTS = MessagingSettings.model_fields
LANES = int(_MESSAGING_DEFAULTS["consumer_concurrency"].default)
"""As many lanes as the consumer runner has by default."""


def quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------ 1. latency

_SHIFT = [
    text(
        "UPDATE automation.tasks SET due_at = due_at - :shift, "
        "snapshot = jsonb_set(snapshot, '{due_at}', to_jsonb(due_at - :shift))"
    ),
    text("UPDATE automation.schedule SET deadline = deadline - :shift, next_at = next_at - :shift"),
]
# Entries that fell due before the window (DeadlineApproaching hours ahead) fired earlier
# in the timeline being simulated; mark them spent, as the engine would have left them.
_SPENT = text("UPDATE automation.schedule SET next_at = NULL WHERE next_at < :start")


async def latency_setup(
    url: str,
    engine: Any,
    sessions: async_sessionmaker[AsyncSession],
    population: workload.Population,
    idx: Any,
    *,
    tasks: int,
    lead: float,
) -> tuple[datetime, int]:
    """Load the tasks, arm them, and shift their deadlines to start `lead` seconds from now."""
    await testing.reset(sessions)
    # Load far ahead, arm (the engine's own backfill), then shift so the 10 minutes start soon.
    far = datetime.now(UTC) + timedelta(days=30)
    await workload.load_tasks(sessions, population, tasks, start=far, window=FULL_WINDOW)
    scheduler = Scheduler(sessions, idx, tracker=StatusTracker())
    await scheduler.sync_rules()
    # Digests of rules "created in 2020" are due at once: catch up before the clock starts
    # (deadlines are 30 days away at this point, so only digests run).
    await scheduler.run_due()
    start = datetime.now(UTC) + timedelta(seconds=lead)
    async with unit_of_work(sessions) as session:
        for stmt in _SHIFT:
            await session.execute(stmt, {"shift": far - start})
        await session.execute(_SPENT, {"start": start})
        entries = (await session.execute(text("SELECT count(*) FROM automation.schedule"))).scalar()
    # Settle the bulk load (dead rows, statistics, dirty pages) before the clock starts.
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in (
            "VACUUM ANALYZE automation.schedule",
            "VACUUM ANALYZE automation.tasks",
            "CHECKPOINT",
        ):
            await auto.execute(text(statement))
    if datetime.now(UTC) > start:
        raise RuntimeError("setup outlasted the lead time; raise --lead")
    return start, int(entries or 0)


async def latency_window(
    url: str,
    sessions: async_sessionmaker[AsyncSession],
    idx: Any,
    *,
    start: datetime,
    window: float,
) -> dict[str, Any]:
    """Start an engine, measure firings due in [start, start + window), stop it."""
    samples: list[float] = []
    end = start + timedelta(seconds=window)

    def observe(recorded: Sequence[Recorded]) -> None:
        committed = datetime.now(UTC)
        for item in recorded:
            due = item.firing.due_at
            if due is not None and start <= due < end:
                samples.append((committed - due).total_seconds() * 1000)

    engine = AutomationEngine(
        sessions=sessions,
        database_url=url,
        rules=idx,
        sink=MemoryStatusSink(),
        settings=EngineSettings(database_url=url),
    )
    engine.scheduler.listeners.append(observe)
    async with engine:
        # The measurement window itself: wall-clock time is what is being measured.
        await asyncio.sleep((end - datetime.now(UTC)).total_seconds() + 2)
    return {
        "firings": len(samples),
        "p50_ms": percentile(samples, 0.50),
        "p95_ms": percentile(samples, 0.95),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples, default=float("nan")),
    }


async def claim_reference(sessions: async_sessionmaker[AsyncSession], rows: int) -> dict[str, Any]:
    """A bare claim-and-commit on a table as large as the schedule: the floor under the engine."""
    async with unit_of_work(sessions) as session:
        await session.execute(text("DROP TABLE IF EXISTS automation.bench_claim"))
        await session.execute(
            text("CREATE TABLE automation.bench_claim (id bigint PRIMARY KEY, next_at timestamptz)")
        )
        await session.execute(
            text(
                "INSERT INTO automation.bench_claim SELECT n, now() - interval '1 day' "
                "+ make_interval(secs => random() * 172800) FROM generate_series(1, :rows) n"
            ),
            {"rows": rows},
        )
        await session.execute(
            text("CREATE INDEX ON automation.bench_claim (next_at) WHERE next_at IS NOT NULL")
        )
    timings: list[float] = []
    for _ in range(500):
        began = time.perf_counter()
        async with unit_of_work(sessions) as session:
            got = (
                await session.execute(
                    text(
                        "SELECT id FROM automation.bench_claim WHERE next_at <= now() "
                        "ORDER BY next_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                    )
                )
            ).scalar()
            await session.execute(
                text("UPDATE automation.bench_claim SET next_at = NULL WHERE id = :id"),
                {"id": got},
            )
        timings.append((time.perf_counter() - began) * 1000)
    async with unit_of_work(sessions) as session:
        await session.execute(text("DROP TABLE automation.bench_claim"))
    return {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99)}


# --------------------------------------------------------------------- 2. throughput


def matching_run(events: list[Any], idx: Any) -> float:
    """Events per second through the event path in memory: trigger, index lookup, match."""
    began = time.perf_counter()
    for event in events:
        event_firings(event, idx)
    return len(events) / (time.perf_counter() - began)


def rendering_run(events: list[Any], idx: Any) -> float:
    """Firings per second turned into `notification.requested` messages (templates rendered)."""
    now = datetime.now(UTC)
    firings = [f for event in events for f in event_firings(event, idx)[0]]
    began = time.perf_counter()
    for firing in firings:
        for request in build_requests(firing, now)[0]:
            request.model_dump_json()
    return len(firings) / (time.perf_counter() - began)


HANDLER_MODES = ("handler", "runner")


def _envelope(event: TaskEvent) -> Envelope[Any]:
    return Envelope(
        id=event.id,
        routing_key=event.type.value,
        exchange=EVENTS_EXCHANGE,
        event=event,
        payload={},
        aggregate_id=event.data.id,
    )


async def handler_run(
    sessions: async_sessionmaker[AsyncSession],
    events: list[Any],
    idx: Any,
    lanes: int,
    *,
    mode: str = "handler",
    batch: int = 1,
) -> float:
    """Events per second through the whole handler with the database, `lanes` at once.

    As in the consumer runner, one task's events share a lane (in order) and lanes run
    concurrently; each lane takes its events `batch` at a time. Modes:

    - handler: `handle`, one event per transaction, no inbox row (the handler's own cost);
    - runner: the runner's transactions (`apply_once`, or `apply_many` for a batch): an
      inbox row per event, the batch through `handle_batch`, one commit per batch.
    """
    await testing.reset(sessions)
    # The schedule kinds the rules use, as a running engine has them: events arm entries.
    await Scheduler(sessions, idx, tracker=StatusTracker()).sync_rules()
    consumer = TaskEventConsumer(idx, tracker=StatusTracker())
    definition = task_event_consumer(consumer)
    queues: list[list[TaskEvent]] = [[] for _ in range(lanes)]
    for event in events:
        queues[zlib.crc32(str(event.data.id).encode()) % lanes].append(event)

    async def handler(chunk: list[TaskEvent]) -> None:
        for event in chunk:
            async with unit_of_work(sessions) as session:
                await consumer.handle(session, event)

    async def runner(chunk: list[TaskEvent]) -> None:
        items = []
        for event in chunk:
            envelope = _envelope(event)
            route = definition.route(envelope.routing_key)
            assert route is not None
            items.append((route, envelope))
        if len(items) > 1:
            try:
                await apply_many(sessions, definition, items)
                return
            except Exception:  # as the runner does: roll back, then one by one
                failed["batches rolled back"] += 1
        for item in items:
            while True:
                try:
                    await apply_once(sessions, definition, *item)
                    break
                except Exception:  # e.g. a deadlock victim: the runner retries it later
                    failed["messages retried"] += 1

    apply = {"handler": handler, "runner": runner}[mode]
    failed: Counter[str] = Counter()

    async def lane(queue: list[TaskEvent]) -> None:
        for start in range(0, len(queue), batch):
            await apply(queue[start : start + batch])

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for queue in queues:
            group.create_task(lane(queue))
    rate = len(events) / (time.perf_counter() - began)
    if failed:
        print(f"  {mode}: {dict(failed)} (the runner retries after a delay; not here)", flush=True)
    return rate


# ------------------------------------------------------------------------- 3. memory


def memory_child(url: str, seconds: float) -> None:
    """In its own process: run the engine over the loaded schedule; print peak RSS (MiB)."""
    quiet()

    async def run() -> None:
        population = workload.Population()
        rules = workload.rules(population, overdue_only=True)
        db = create_engine(url, pool_size=4)
        engine = AutomationEngine(
            sessions=create_sessionmaker(db),
            database_url=url,
            rules=index(*rules),
            sink=MemoryStatusSink(),
            settings=EngineSettings(database_url=url),
        )
        async with engine:
            await asyncio.sleep(seconds)
        await db.dispose()

    asyncio.run(run())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mib={peak:.1f}", flush=True)


async def memory_setup(
    sessions: async_sessionmaker[AsyncSession], population: workload.Population, count: int
) -> int:
    """`count` open tasks due over the next 30 days, 0.1% already overdue (fired at start)."""
    await testing.reset(sessions)
    now = datetime.now(UTC)
    await workload.load_tasks(
        sessions, population, count, start=now - timedelta(hours=1), window=30 * 86400
    )
    rules = workload.rules(population, overdue_only=True)
    await Scheduler(sessions, index(*rules), tracker=StatusTracker()).sync_rules()
    async with sessions() as session:
        entries = (await session.execute(text("SELECT count(*) FROM automation.schedule"))).scalar()
    return int(entries or 0)


def memory_run(url: str, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--memory-child", url, "--window", str(seconds)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"peak_rss_mib=([0-9.]+)", out)
    if found is None:
        raise RuntimeError(f"no RSS reported: {out}")
    return float(found.group(1))


# ------------------------------------------------------------------------------ report


def _section(r: dict[str, Any]) -> str:
    m = r["machine"]
    lat, ref, thr, mem = r["latency"], r["claim_reference"], r["throughput"], r["memory"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [
        f"| deadline → `notification.requested` committed, p99 | {lat['p99_ms']:.0f} ms "
        f"(p50 {lat['p50_ms']:.0f}, p95 {lat['p95_ms']:.0f}, max {lat['max_ms']:.0f}) | "
        f"claim + commit alone: p50 {ref['p50_ms']:.1f} ms, p99 {ref['p99_ms']:.1f} ms | "
        f"≤ {TARGET_P99_MS:.0f} ms | {verdict(lat['p99_ms'] <= TARGET_P99_MS)} |",
        f"| task events through matching, 1,000 rules | {thr['matching']:.0f} events/s "
        "(trigger, index lookup, match incl. CEL) | "
        f"with rendering: {thr['rendering']:.0f} firings/s; whole handler with PostgreSQL "
        f"(projection, arming, firings, outbox; {thr['in_flight']} lanes): "
        f"{thr['handler']:.0f} events/s one per transaction | "
        f"≥ {TARGET_EVENTS:.0f} /s | {verdict(thr['matching'] >= TARGET_EVENTS)} |",
        f"| task events through the whole handler with PostgreSQL, as the operator runs it "
        f"(runner batches of up to {thr['batch']} with inbox rows, `handle_batch`; "
        f"{thr['in_flight']} lanes) | {thr['handler_runner']:.0f} events/s | "
        f"one per transaction: {thr['handler']:.0f} events/s | ≥ {TARGET_EVENTS:.0f} /s | "
        f"{verdict(thr['handler_runner'] >= TARGET_EVENTS)} |",
        f"| engine RSS, {mem['entries']:,} scheduled deadlines | {mem['peak_rss_mib']:.0f} MiB "
        f"peak | schedule in PostgreSQL | ≤ {TARGET_RSS_MB:.0f} MB | "
        f"{verdict(mem['peak_rss_mib'] * 1.048576 <= TARGET_RSS_MB)} |",
    ]
    return "\n".join([
        "## Engine",
        "",
        "`python -m bench.engine` (module docstring: exactly what is measured). PostgreSQL is",
        "the embedded server (fsync on) on the same machine; the engine runs with its default",
        "settings and the 1,000-rule mix of `bench/engine/workload.py` (every trigger; rules",
        "scoped by project, owner, label or priority, a third with a CEL condition).",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}; median of {r['runs']} runs.",
        f"Latency: {r['tasks']:,} open tasks due over 10 minutes "
        f"({lat['schedule_entries']:,} schedule entries); **window scaled down**: only the first "
        f"{r['window']:.0f} s of the 10 minutes are measured per run, consecutive windows, a "
        f"fresh engine for each (same rate, "
        f"{r['tasks'] / FULL_WINDOW:.0f} deadlines/s, same table sizes), "
        f"{lat['firings']:,} firings measured in the median run.",
        f"Throughput: {thr['events']:,} events per run. Memory: one engine process, "
        "time rules all TaskOverdue so that entries = deadlines.",
        "",
        "| what | engine | reference (same run) | target | |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "The matching figure is the engine's own work per event in memory (the target's "
        "\"through matching\"). The whole-handler figures add what the runner contract costs: "
        "transactions with the projection upsert, schedule arming, firing and outbox inserts "
        "and a durable commit, in one Python process sharing 2 cores with PostgreSQL; one "
        "task's events in one lane, in order, as the runner does. One per transaction is the "
        "handler alone; the runner commits the messages waiting in a lane together, each with "
        "its inbox row, and hands them to `handle_batch` at once, which runs the same "
        "statements whatever the batch size (taking its row locks in sorted order, so lanes "
        "cannot deadlock). It scales with more consumer processes (engines may run side by "
        "side, exactly once still holds); on this machine it is CPU-bound.",
        "",
        f"Runs: p99 ms {', '.join(f'{x:.0f}' for x in r['runs_p99'])}; matching events/s "
        f"{', '.join(f'{x:.0f}' for x in r['runs_matching'])}; handler events/s "
        f"{', '.join(f'{x:.0f}' for x in r['runs_handler'])}; runner batches events/s "
        f"{', '.join(f'{x:.0f}' for x in r['runs_handler_runner'])}; rendering firings/s "
        f"{', '.join(f'{x:.0f}' for x in r['runs_rendering'])}; peak RSS MiB "
        f"{', '.join(f'{x:.0f}' for x in r['runs_rss'])}.",
        "",
    ])  # fmt: skip


def write_docs(result: dict[str, Any]) -> None:
    write_section(_section(result))


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    db = create_engine(url, pool_size=10)
    sessions = create_sessionmaker(db)
    population = workload.Population()
    rules = workload.rules(population, args.rules)
    idx = index(*rules)
    events = workload.traffic(population, args.events)
    sections = set(args.sections)
    latencies: list[dict[str, Any]] = []
    matching: list[float] = []
    handled: dict[str, list[float]] = {mode: [] for mode in HANDLER_MODES}
    rendering: list[float] = []
    rss: list[float] = []
    reference: dict[str, Any] = {}
    entries = 0
    entries_latency = 0
    try:
        if "latency" in sections:
            print("latency: loading", flush=True)
            start, entries_latency = await latency_setup(
                url, db, sessions, population, idx, tasks=args.tasks, lead=args.lead
            )
            # Consecutive windows of the same 10 minutes of deadlines, a fresh engine each.
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}: latency", flush=True)
                latencies.append(
                    await latency_window(url, sessions, idx, start=start, window=args.window)
                )
                # The next window starts once the deadlines missed while restarting fired.
                start = datetime.now(UTC) + timedelta(seconds=6)
            reference = await claim_reference(sessions, args.tasks)
        if "throughput" in sections:
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}: throughput", flush=True)
                matching.append(matching_run(events, idx))
                rendering.append(rendering_run(events, idx))
                for mode in HANDLER_MODES:
                    handled[mode].append(
                        await handler_run(
                            sessions,
                            events[: args.db_events],
                            idx,
                            LANES,
                            mode=mode,
                            batch=1 if mode == "handler" else args.batch,
                        )
                    )
        if "memory" in sections:
            print(f"memory: loading {args.deadlines:,} deadlines", flush=True)
            entries = await memory_setup(sessions, population, args.deadlines)
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}: memory", flush=True)
                rss.append(memory_run(url, args.memory_seconds))
    finally:
        await db.dispose()
    p99s = [lat["p99_ms"] for lat in latencies]
    mid: dict[str, Any] = {}
    if latencies:
        mid = {
            **latencies[p99s.index(sorted(p99s)[len(p99s) // 2])],
            "schedule_entries": entries_latency,
        }
    return {
        "machine": machine(),
        "runs": args.runs,
        "tasks": args.tasks,
        "window": args.window,
        "latency": mid,
        "claim_reference": reference,
        "throughput": {
            "events": len(events),
            "matching": median(matching) if matching else None,
            "rendering": median(rendering) if rendering else None,
            **{
                ("handler" if mode == "handler" else f"handler_{mode}"): (
                    median(runs) if runs else None
                )
                for mode, runs in handled.items()
            },
            "batch": args.batch,
            "in_flight": LANES,
            "handler_events": args.db_events,
        },
        "memory": {"entries": entries, "peak_rss_mib": median(rss) if rss else None},
        "runs_p99": p99s,
        "runs_matching": matching,
        "runs_handler": handled["handler"],
        "runs_handler_runner": handled["runner"],
        "runs_rendering": rendering,
        "runs_rss": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000, help="open tasks due in 10 min")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per run")
    parser.add_argument("--lead", type=float, default=120.0, help="seconds allowed for set-up")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10_000, help="events (matching)")
    parser.add_argument("--db-events", type=int, default=2000, help="events (whole handler)")
    parser.add_argument("--deadlines", type=int, default=1_000_000, help="memory: deadlines")
    parser.add_argument("--memory-seconds", type=float, default=15.0)
    parser.add_argument(
        "--batch",
        type=int,
        default=int(_MESSAGING_DEFAULTS["consumer_batch_size"].default),
        help="events per transaction (runner, handle_batch)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure (a partial run prints its figures and writes no report)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--memory-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.window)
        return 0
    quiet()
    data = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    data.chmod(0o755)  # the server runs as its own user
    server = EmbeddedPostgres(data / "pgdata", delete_on_stop=True)
    try:
        testing.migrate(server.url)
        result = asyncio.run(measure(server.url, args))
    finally:
        server.stop()
    if set(args.sections) != set(SECTIONS):
        print(json.dumps(result, indent=2, default=str))
        return 0
    path = write_result("engine", result)
    print(_section(result))
    print(f"result: {path}")
    if not args.no_docs:
        write_docs(result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path.home() / ".cache" / "smarttasks" / "run"))
    raise SystemExit(main())
