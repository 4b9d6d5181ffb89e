"""Outcome recording: group commits, hurried by a waiting sender, failures raised."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from smarttasks.notifications.channels import OutcomeReceipt
from smarttasks.notifications.worker import OutcomeRecorder, Recorded


def outcome(n: int) -> Recorded:
    return ({"id": n}, {"delivery_id": n})


class Writes:
    """A write function that keeps the ids of each group; the first write may be held."""

    def __init__(self, *, hold_first: bool = False, fail_first: bool = False) -> None:
        self.groups: list[list[Any]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold_first:
            self.release.set()
        self._fail_first = fail_first

    async def __call__(self, batch: Sequence[Recorded]) -> None:
        self.groups.append([update["id"] for update, _ in batch])
        self.started.set()
        if len(self.groups) == 1:
            await self.release.wait()
            if self._fail_first:
                raise OSError("database gone")


async def settle() -> None:
    """Let every task that can run do so (the recorder's writer among them)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_outcomes_completing_during_a_write_go_together_in_the_next() -> None:
    write = Writes(hold_first=True)
    recorder = OutcomeRecorder(write)
    first = recorder.add(outcome(1))
    await write.started.wait()
    later = [recorder.add(outcome(n)) for n in (2, 3, 4)]
    await settle()
    assert not first.done(), "done only once its write has finished"
    write.release.set()
    await recorder.drain()
    assert write.groups == [[1], [2, 3, 4]]
    assert first.done() and all(f.done() for f in later)


async def test_a_failed_write_is_raised_and_later_outcomes_are_still_written() -> None:
    write = Writes(fail_first=True)
    recorder = OutcomeRecorder(write)
    await recorder.add(outcome(1))  # done even though the write failed: nobody waits forever
    with pytest.raises(OSError, match="database gone"):
        recorder.raise_failure()
    await recorder.add(outcome(2))
    await recorder.drain()
    assert write.groups == [[1], [2]]


async def test_outcomes_wait_for_the_interval_unless_a_group_is_full() -> None:
    write = Writes()
    recorder = OutcomeRecorder(write, min_interval=3600.0, max_group=3)
    await recorder.add(outcome(1))  # no write for an interval: at once
    waiting = [recorder.add(outcome(n)) for n in (2, 3)]
    await settle()
    assert write.groups == [[1]]  # within the interval, two waiting
    waiting.append(recorder.add(outcome(4)))
    await asyncio.gather(*waiting)  # the group is full: written without waiting out the hour
    assert write.groups == [[1], [2, 3, 4]]
    last = recorder.add(outcome(5))
    await settle()
    assert not last.done()
    await recorder.drain()  # the end of a run: written now
    assert last.done()
    assert write.groups == [[1], [2, 3, 4], [5]]


async def test_a_sender_waiting_for_its_receipt_has_the_group_written_now() -> None:
    write = Writes()
    recorder = OutcomeRecorder(write, min_interval=3600.0)
    await recorder.add(outcome(1))
    receipt = OutcomeReceipt(recorder.hurry)
    recorder.add(outcome(2)).add_done_callback(receipt.settle)
    recorder.add(outcome(3))
    await settle()
    assert write.groups == [[1]] and not receipt.settled
    await receipt.recorded()  # hurries the recorder instead of waiting out the hour
    assert write.groups == [[1], [2, 3]]
