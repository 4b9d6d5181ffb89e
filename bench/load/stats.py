"""Percentiles and per-minute summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def summary_ms(seconds: Iterable[float]) -> dict[str, Any]:
    """count, p50, p95, p99 and max of durations given in seconds, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 1),
        "p95_ms": round(percentile(ordered, 95) * 1000, 1),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 1),
    }


def per_minute(samples: Iterable[tuple[float, float]], start: float) -> list[dict[str, Any]]:
    """`summary_ms` of (moment, duration) samples, one entry per minute after `start`."""
    minutes: dict[int, list[float]] = {}
    for moment, duration in samples:
        minutes.setdefault(int((moment - start) // 60), []).append(duration)
    return [{"minute": m + 1, **summary_ms(minutes[m])} for m in sorted(minutes)]
