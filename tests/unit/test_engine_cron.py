"""Cron slots of Schedule rules in time zones, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from smarttasks.automation.engine.cron import (
    InvalidSchedule,
    latest_due,
    next_slot,
    slots,
    validate,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def take(expression: str, zone: str | None, after: datetime, n: int) -> list[datetime]:
    return list(islice(slots(expression, zone, after), n))


def test_weekday_mornings_in_berlin_skip_the_weekend() -> None:
    # Friday 23 October 2026, noon: next are Monday..Thursday 09:00 CET (08:00 UTC).
    assert take("0 9 * * 1-5", "Europe/Berlin", utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 26, 8),
        utc(2026, 10, 27, 8),
        utc(2026, 10, 28, 8),
    ]


def test_the_same_wall_time_moves_in_utc_across_spring_forward() -> None:
    assert take("0 9 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 8),  # CET, UTC+1
        utc(2026, 3, 29, 7),  # CEST, UTC+2
        utc(2026, 3, 30, 7),
    ]


def test_a_wall_time_skipped_by_spring_forward_fires_when_the_clock_jumps() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026: clocks go from 02:00 to 03:00.
    assert take("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_a_repeated_wall_time_at_fall_back_fires_once() -> None:
    # 02:30 happens twice in Berlin on 25 October 2026; a daily job runs once.
    assert take("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


def test_hourly_schedules_fire_every_real_hour_across_both_changes() -> None:
    fall = take("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 21, 30), 6)
    assert fall == [utc(2026, 10, 24, 22) + timedelta(hours=h) for h in range(6)]
    spring = take("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 22, 30), 5)
    assert spring == [utc(2026, 3, 28, 23) + timedelta(hours=h) for h in range(5)]


def test_new_york_changes_on_its_own_date() -> None:
    assert take("0 9 * * *", "America/New_York", utc(2026, 3, 7, 0), 2) == [
        utc(2026, 3, 7, 14),  # EST
        utc(2026, 3, 8, 13),  # EDT from 8 March
    ]


def test_unset_zone_is_utc_and_macros_work() -> None:
    assert next_slot("@daily", None, utc(2026, 3, 6, 12)) == utc(2026, 3, 7)
    assert next_slot("*/15 * * * *", "UTC", utc(2026, 3, 6, 12, 1)) == utc(2026, 3, 6, 12, 15)


def test_after_downtime_only_the_latest_missed_slot_is_due() -> None:
    slot, following = latest_due("0 * * * *", "UTC", utc(2026, 1, 1, 0), utc(2026, 1, 4, 5, 30))
    assert (slot, following) == (utc(2026, 1, 4, 5), utc(2026, 1, 4, 6))
    on_time = latest_due("0 9 * * *", "UTC", utc(2026, 1, 1, 9), utc(2026, 1, 1, 9))
    assert on_time == (utc(2026, 1, 1, 9), utc(2026, 1, 2, 9))


def test_a_schedule_that_never_fires_has_no_next_slot() -> None:
    assert next_slot("0 0 30 2 *", "UTC", utc(2026, 1, 1)) is None


@pytest.mark.parametrize("expression", ["0 9 * *", "61 * * * *", "* * * * * *", "@sometimes"])
def test_bad_expressions_are_refused(expression: str) -> None:
    with pytest.raises(InvalidSchedule):
        validate(expression)


def test_unknown_zones_are_refused() -> None:
    with pytest.raises(InvalidSchedule):
        next_slot("0 9 * * *", "Mars/Olympus_Mons", utc(2026, 1, 1))
