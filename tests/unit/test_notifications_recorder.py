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


async def test_outcomes_wait_for_the_interval_unless_a_group_is_full() -> None:
    writes: list[list[Any]] = []
    written = asyncio.Event()

    async def write(batch: Sequence[Recorded]) -> None:
        writes.append([update["id"] for update, _ in batch])
        written.set()

    recorder = OutcomeRecorder(write, min_interval=3600.0, max_group=3)
    recorder.add(outcome(1))  # no write for an interval: at once
    await written.wait()
    written.clear()
    recorder.add(outcome(2))
    recorder.add(outcome(3))
    for _ in range(5):  # let the recorder's task run: it must keep waiting
        await asyncio.sleep(0)
    assert writes == [[1]]  # within the interval, two waiting
    recorder.add(outcome(4))  # the group is full: written without waiting out the hour
    await written.wait()
    assert writes == [[1], [2, 3, 4]]
    recorder.add(outcome(5))
    await recorder.drain()  # the end of a run: written now
    assert writes == [[1], [2, 3, 4], [5]]
