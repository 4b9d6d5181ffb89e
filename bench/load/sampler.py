"""Memory and CPU of the platform's processes, sampled at a fixed interval during the run.

Each watched name is a process tree (a component, PostgreSQL's postmaster and backends,
RabbitMQ's beam): RSS and PSS are summed over the tree (PSS counts shared pages once, so
PostgreSQL's shared buffers are not counted once per backend), CPU is user + system time
of the tree, including children it has reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(pid: int, *, children: bool = True) -> dict[str, float] | None:
    """RSS, PSS (bytes), CPU seconds and the process count of the tree under `pid` (or of
    that one process)."""
    procs = tree(pid) if children else tree(pid)[:1]
    if not procs:
        return None
    rss = pss = 0
    cpu = 0.0
    alive = 0
    for i, proc in enumerate(procs):
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
                if i == 0 and children:
                    cpu += times.children_user + times.children_system
        except psutil.NoSuchProcess:
            continue
        pss += _pss(proc.pid)
        alive += 1
    return {"rss": rss, "pss": pss, "cpu": cpu, "processes": alive}


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of the tree under `pid` (or of that one process) so
    far, exited children included; 0 once it is gone."""
    measured = measure(pid, children=children)
    return measured["cpu"] if measured else 0.0


@dataclass
class Sampler:
    """Samples every watched tree each `interval` seconds until stopped."""

    watched: dict[str, Callable[[], int | None]]
    interval: float = 5.0
    alone: frozenset[str] = frozenset()
    """Names measured without their child processes (the benchmark's own process)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _sampled: asyncio.Event = field(default_factory=asyncio.Event)

    def sample(self) -> dict[str, Any]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        taken: dict[str, Any] = {"t": time.time(), "machine_busy_cpu": busy}
        for name, pid_of in self.watched.items():
            pid = pid_of()
            found = None if pid is None else measure(pid, children=name not in self.alone)
            if found is not None:
                taken[name] = found
        return taken

    async def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(await asyncio.to_thread(self.sample))
            self._sampled.set()
            with contextlib.suppress(TimeoutError):
                # A periodic measurement: the interval is the point, there is no event.
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)

    def stop(self) -> None:
        self._stop.set()

    async def wait_samples(self, count: int) -> None:
        """Return once `count` samples have been taken in all."""
        while len(self.samples) < count:
            self._sampled.clear()
            await self._sampled.wait()

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores each watched name used between the first and last sample in [start, end]."""
        window = [s for s in self.samples if start <= s["t"] <= end]
        out: dict[str, float] = {}
        for name in self.watched:
            mine = [s for s in window if name in s]
            if len(mine) >= 2:
                first, last = mine[0], mine[-1]
                out[name] = round(
                    (last[name]["cpu"] - first[name]["cpu"]) / (last["t"] - first["t"]), 3
                )
        return out

    def machine_busy(self, start: float, end: float) -> float | None:
        """Cores the whole machine kept busy during [start, end] (this run and other work)."""
        window = [s for s in self.samples if start <= s["t"] <= end]
        if len(window) < 2:
            return None
        first, last = window[0], window[-1]
        return round(
            (last["machine_busy_cpu"] - first["machine_busy_cpu"]) / (last["t"] - first["t"]), 3
        )

    def per_minute(self, start: float, end: float) -> list[dict[str, Any]]:
        """For each minute of [start, end]: cores the machine kept busy, and cores of the
        watched processes (the rest is other work sharing the machine)."""
        out = []
        minute = 0
        while start + 60 * minute < end:
            lo, hi = start + 60 * minute, min(start + 60 * (minute + 1), end)
            ours = round(sum(self.cores(lo, hi).values()), 3)
            busy = self.machine_busy(lo, hi)
            out.append({"minute": minute + 1, "machine": busy, "this_run": ours})
            minute += 1
        return out

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Per name: RSS (and PSS) in MiB, mean over the first and the last minute of
        [start, end] and the maximum over every sample; cores used during [start, end]."""
        out: dict[str, Any] = {}
        for name in self.watched:
            mine = [(s["t"], s[name]) for s in self.samples if name in s]
            if not mine:
                continue
            first = [m for t, m in mine if start <= t < start + 60]
            last = [m for t, m in mine if end - 60 <= t <= end]
            window = [(t, m) for t, m in mine if start <= t <= end]
            entry: dict[str, Any] = {}
            for key in ("rss", "pss"):
                entry[key] = {
                    "first_minute_mib": _mean_mib(m[key] for m in first),
                    "last_minute_mib": _mean_mib(m[key] for m in last),
                    "max_mib": round(max(m[key] for _, m in mine) / MIB, 1),
                }
                entry[key]["growth_mib"] = round(
                    entry[key]["last_minute_mib"] - entry[key]["first_minute_mib"], 1
                )
            if len(window) >= 2:
                (t0, m0), (t1, m1) = window[0], window[-1]
                entry["cores"] = round((m1["cpu"] - m0["cpu"]) / (t1 - t0), 3)
            entry["processes_max"] = max(m["processes"] for _, m in mine)
            entry["series_rss_mib"] = [
                [round(t - start, 1), round(m["rss"] / MIB, 1)] for t, m in mine
            ]
            out[name] = entry
        return out


def _mean_mib(values: Iterable[float]) -> float:
    found = list(values)
    return round(sum(found) / len(found) / MIB, 1) if found else 0.0


def find_pid(predicate: Callable[[psutil.Process], bool]) -> int | None:
    """The first running process that satisfies `predicate` (e.g. RabbitMQ's beam)."""
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if predicate(proc):
                return int(proc.pid)
    return None
