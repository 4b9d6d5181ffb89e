"""Outcome recording: group commits while a write runs, failures surfaced, not swallowed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from smarttasks.notifications.worker import OutcomeRecorder, Recorded


def outcome(n: int) -> Recorded:
    return ({"id": n}, {"delivery_id": n})


async def test_outcomes_completing_during_a_write_go_together_in_the_next() -> None:
    writes: list[list[Any]] = []
    started, gate = asyncio.Event(), asyncio.Event()

    async def write(batch: Sequence[Recorded]) -> None:
        writes.append([update["id"] for update, _ in batch])
        if len(writes) == 1:
            started.set()
            await gate.wait()

    recorder = OutcomeRecorder(write)
    recorder.add(outcome(1))
    await started.wait()
    for n in (2, 3, 4):
        recorder.add(outcome(n))
    gate.set()
    await recorder.drain()
    assert writes == [[1], [2, 3, 4]]


async def test_a_failed_write_is_raised_and_later_outcomes_are_still_written() -> None:
    writes: list[list[Any]] = []

    async def write(batch: Sequence[Recorded]) -> None:
        writes.append([update["id"] for update, _ in batch])
        if len(writes) == 1:
            raise OSError("database gone")

    recorder = OutcomeRecorder(write)
    recorder.add(outcome(1))
    with pytest.raises(OSError, match="database gone"):
        await recorder.drain()
    recorder.add(outcome(2))
    await recorder.drain()
    assert writes == [[1], [2]]
