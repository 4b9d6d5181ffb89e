"""The load generator: a steady open-loop mix of API calls, in a process of its own.

    python -m bench.load.driver CONFIG.json RESULT.json

Operation i is due at start + i / rate whatever happened to the earlier ones (open
loop), so a slow service meets more concurrent requests rather than fewer requests; each
latency is measured from the moment the operation was due, which also charges any lateness
of the generator to the figure. Requests go straight to the port of the component that
serves them, as the Ingress routes them, with the users' bearer tokens. A task is used by
one operation at a time (its ETag is sent as If-Match), so a 412 would be a real conflict.
Warm-up operations run at the same rate before the measured window and are reported
apart. The generator stops by itself: a bounded number of operations, then it waits for
those in flight (each bounded by the request timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.load.stats import per_minute, summary_ms

KINDS = ("create", "update", "complete", "list", "deliveries", "rules")
"""What an operation does: the task API (create, update, complete, list), the owner's
notification delivery log, and the owner's rules (the rules API reads them from the
Kubernetes API)."""
PRIORITIES = (("low", 0.2), ("normal", 0.4), ("high", 0.25), ("urgent", 0.15))
LABELS = ("customer", "ops", "billing", "backend")
ERROR_SAMPLES = 20

_new_connection: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("new_connection")
"""Set per operation: whether its request opened a TCP connection or reused a pooled one
(a request that fails on a reused connection is what a keep-alive race looks like)."""


async def _trace(event: str, info: dict[str, Any]) -> None:
    if event == "connection.connect_tcp.started":
        mark = _new_connection.get(None)
        if mark is not None:
            mark[0] = True


async def _traced(request: httpx.Request) -> None:
    request.extensions["trace"] = _trace


@dataclass
class OpenTask:
    id: str
    etag: str
    due_at: datetime | None


@dataclass
class User:
    id: str
    token: str
    tasks: list[OpenTask] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def take(self, rng: random.Random) -> OpenTask | None:
        """An open task no other operation is using (it is given back after the call)."""
        if not self.tasks:
            return None
        i = rng.randrange(len(self.tasks))
        self.tasks[i], self.tasks[-1] = self.tasks[-1], self.tasks[i]
        return self.tasks.pop()


@dataclass
class Outcome:
    kind: str
    due: float  # seconds after the start of the run
    latency: float  # from `due` to the end of the response
    late: float  # from `due` to the moment the request was started
    status: int  # HTTP status, or -1 for a transport error or timeout


class Driver:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.rate = float(config["rate"])
        self.rng = random.Random(config["seed"])
        self.users = [User(u["id"], u["token"]) for u in config["users"]]
        self.project = config["project"]
        self.mix = config["mix"]
        self.soon = config["due_soon_seconds"]
        self.outcomes: list[Outcome] = []
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.overloaded = 0
        self.max_in_flight = 0
        self.last_short_due: datetime | None = None
        self.created = 0
        limits = httpx.Limits(
            max_connections=config["connections"],
            max_keepalive_connections=None,
            # Below the services' keep-alive (uvicorn's 5 s), as a client or proxy in front of
            # them must be: otherwise a request can meet a connection the server is closing.
            keepalive_expiry=config["keepalive_expiry"],
        )
        timeout = httpx.Timeout(config["timeout"])
        self.http = {
            name: httpx.AsyncClient(
                base_url=url,
                limits=limits,
                timeout=timeout,
                event_hooks={"request": [_traced]},
            )
            for name, url in config["urls"].items()
        }

    # ------------------------------------------------------------------ operations

    def _new_task(self) -> dict[str, Any]:
        self.created += 1
        body: dict[str, Any] = {
            "title": f"Load task {self.created}",
            "priority": self.rng.choices(
                [p for p, _ in PRIORITIES], weights=[w for _, w in PRIORITIES]
            )[0],
            "labels": self.rng.sample(LABELS, self.rng.randint(0, 2)),
            "project": self.project,
        }
        roll = self.rng.random()
        now = datetime.now(UTC)
        if roll < self.config["due_soon_share"]:
            # Falls due during the run: the TaskOverdue rule fires for those still open.
            due = now + timedelta(seconds=self.rng.uniform(*self.soon))
            self.last_short_due = max(due, self.last_short_due or due)
            body["due_at"] = due.isoformat()
        elif roll < self.config["due_soon_share"] + self.config["due_later_share"]:
            body["due_at"] = (now + timedelta(days=self.rng.uniform(1, 30))).isoformat()
        return body

    async def op_create(self, user: User) -> tuple[str, httpx.Response]:
        response = await self.http["tasks"].post(
            "/api/v1/tasks", headers=user.headers, json=self._new_task()
        )
        if response.status_code == 201:
            task = response.json()
            due = datetime.fromisoformat(task["due_at"]) if task["due_at"] else None
            user.tasks.append(OpenTask(task["id"], response.headers["ETag"], due))
        return "create", response

    async def op_update(self, user: User) -> tuple[str, httpx.Response]:
        task = user.take(self.rng)
        if task is None:
            return await self.op_create(user)
        roll = self.rng.random()
        patch: dict[str, Any]
        if roll < 0.4:
            patch = {"priority": self.rng.choice([p for p, _ in PRIORITIES])}
        elif roll < 0.7 or task.due_at is None:
            patch = {"title": f"Load task, renamed {self.rng.randrange(1_000_000)}"}
        else:
            patch = {"due_at": (task.due_at + timedelta(days=1)).isoformat()}
        response = await self.http["tasks"].patch(
            f"/api/v1/tasks/{task.id}", headers={**user.headers, "If-Match": task.etag}, json=patch
        )
        if response.status_code == 200:
            body = response.json()
            task.etag = response.headers["ETag"]
            task.due_at = datetime.fromisoformat(body["due_at"]) if body["due_at"] else None
            user.tasks.append(task)
        return "update", response

    async def op_complete(self, user: User) -> tuple[str, httpx.Response]:
        task = user.take(self.rng)
        if task is None:
            return await self.op_create(user)
        response = await self.http["tasks"].patch(
            f"/api/v1/tasks/{task.id}",
            headers={**user.headers, "If-Match": task.etag},
            json={"status": "done"},
        )
        return "complete", response

    async def op_list(self, user: User) -> tuple[str, httpx.Response]:
        params: dict[str, Any] = {"project": self.project, "status": "todo", "limit": 20}
        if self.rng.random() < 0.5:
            params["sort"] = "due_at"
        return "list", await self.http["tasks"].get(
            "/api/v1/tasks", headers=user.headers, params=params
        )

    async def op_deliveries(self, user: User) -> tuple[str, httpx.Response]:
        return "deliveries", await self.http["notifications"].get(
            "/api/v1/notifications", headers=user.headers, params={"limit": 20}
        )

    async def op_rules(self, user: User) -> tuple[str, httpx.Response]:
        return "rules", await self.http["rules-api"].get("/api/v1/rules", headers=user.headers)

    # ------------------------------------------------------------------ the open loop

    async def one(self, kind: str, user: User, due: float, start: float) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        status = -1
        done_kind = kind
        detail = ""
        new_connection = [False]
        _new_connection.set(new_connection)
        try:
            done_kind, response = await getattr(self, f"op_{kind}")(user)
            status = response.status_code
            if not 200 <= status < 300:
                detail = response.text[:300]
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc} (cause: {exc.__context__!r})"
        end = loop.time()
        self.outcomes.append(Outcome(done_kind, due - start, end - due, began - due, status))
        if not 200 <= status < 300:
            self.error_count += 1
            if len(self.errors) < ERROR_SAMPLES:
                self.errors.append(
                    {"kind": done_kind, "at_s": round(due - start, 3), "status": status}
                    | {"detail": detail, "new_connection": new_connection[0]}
                )

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        warmup, seconds = float(self.config["warmup"]), float(self.config["seconds"])
        total = int(self.rate * (warmup + seconds))
        kinds = list(self.mix)
        weights = [self.mix[k] for k in kinds]
        in_flight: set[asyncio.Task[None]] = set()
        wall_start = time.time() + 0.2
        start = loop.time() + 0.2
        next_report = start + 30
        for i in range(total):
            due = start + i / self.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the pacing of the open loop
            if len(in_flight) >= self.config["max_in_flight"]:
                # The system stopped keeping up; counted as an error, never queued here.
                self.overloaded += 1
                self.error_count += 1
                continue
            kind = self.rng.choices(kinds, weights=weights)[0]
            user = self.rng.choice(self.users)
            task = asyncio.create_task(self.one(kind, user, due, start))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            self.max_in_flight = max(self.max_in_flight, len(in_flight))
            if loop.time() >= next_report:
                next_report += 30
                print(
                    f"load: {loop.time() - start:5.0f}s {len(self.outcomes)} done, "
                    f"{len(in_flight)} in flight, {self.error_count} errors",
                    file=sys.stderr,
                    flush=True,
                )
        sent_until = loop.time()
        if in_flight:
            await asyncio.wait(in_flight)
        finished = loop.time()
        for client in self.http.values():
            await client.aclose()
        return self.report(
            wall_start=wall_start,
            warmup=warmup,
            seconds=seconds,
            sending=sent_until - start,
            finished=finished - start,
        )

    def report(
        self, *, wall_start: float, warmup: float, seconds: float, sending: float, finished: float
    ) -> dict[str, Any]:
        measured = [o for o in self.outcomes if o.due >= warmup]
        ok = [o for o in measured if 200 <= o.status < 300]
        by_kind: dict[str, Any] = {}
        for kind in KINDS:
            mine = [o for o in measured if o.kind == kind]
            if not mine:
                continue
            by_kind[kind] = {
                **summary_ms(o.latency for o in mine),
                "errors": sum(1 for o in mine if not 200 <= o.status < 300),
                "per_minute": per_minute(((o.due, o.latency) for o in mine), warmup),
            }
        ok_all_phases: dict[str, int] = {}
        for o in self.outcomes:
            if 200 <= o.status < 300:
                ok_all_phases[o.kind] = ok_all_phases.get(o.kind, 0) + 1
        statuses: dict[str, int] = {}
        for o in self.outcomes:
            statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
        return {
            "target_rate": self.rate,
            "offered": len(measured),
            "achieved_rate": round(len(ok) / seconds, 2),
            "measured_window": {
                "start": wall_start + warmup,
                "end": wall_start + warmup + seconds,
                "seconds": seconds,
            },
            "warmup": {
                "seconds": warmup,
                "operations": len(self.outcomes) - len(measured),
                "errors": sum(
                    1 for o in self.outcomes if o.due < warmup and not 200 <= o.status < 300
                ),
            },
            "sending_seconds": round(sending, 3),
            "finished_seconds": round(finished, 3),
            "errors": self.error_count,
            "errors_measured": len(measured) - len(ok),
            "overloaded": self.overloaded,
            "statuses": statuses,
            "succeeded_all_phases": ok_all_phases,
            "error_samples": self.errors,
            "max_in_flight": self.max_in_flight,
            "late_start": summary_ms(o.late for o in measured),
            "all": {
                **summary_ms(o.latency for o in measured),
                "per_minute": per_minute(((o.due, o.latency) for o in measured), warmup),
            },
            "by_kind": by_kind,
            "tasks_created": self.created,
            "open_tasks_at_end": sum(len(u.tasks) for u in self.users),
            "last_short_due": self.last_short_due.isoformat() if self.last_short_due else None,
        }


async def drive(config: dict[str, Any]) -> dict[str, Any]:
    return await Driver(config).run()


def main(argv: list[str]) -> int:
    config_path, result_path = Path(argv[0]), Path(argv[1])
    config = json.loads(config_path.read_text())
    result = uvloop.run(drive(config))
    result_path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
