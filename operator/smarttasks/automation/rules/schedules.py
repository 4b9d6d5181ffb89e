"""Durations (``before``, ``repeat``) and cron schedules with their time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

MAX_DURATION = timedelta(days=3650)
"""Longest ``before``/``repeat`` accepted: ten years (longer ones are surely typos)."""

_PART = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``1h``, ``1d12h`` → a timedelta; raises ValueError naming what is wrong."""
    if not text or _PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration such as 30m, 1h, 2d or 1d12h")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError("the duration must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def load_time_zone(name: str | None) -> ZoneInfo:
    """The IANA time zone ``name`` (UTC when unset); raises ValueError for an unknown one."""
    if name is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC"
        ) from None


@dataclass(frozen=True)
class CronSchedule:
    """A five-field cron expression read in a time zone."""

    expression: str
    time_zone: ZoneInfo

    def next_after(self, when: datetime) -> datetime:
        """The first time strictly after ``when`` (aware) that the schedule fires, in UTC.

        Daylight-saving gaps and repeats are resolved by croniter in the rule's zone.
        Raises ValueError if the schedule never fires again.
        """
        if when.tzinfo is None:
            raise ValueError("when must be timezone-aware")
        try:
            nxt: datetime = croniter(self.expression, when.astimezone(self.time_zone)).get_next(
                datetime
            )
        except (CroniterBadDateError, CroniterError) as exc:
            raise ValueError(f"the schedule {self.expression!r} never fires: {exc}") from None
        return nxt.astimezone(UTC)


def compile_schedule(expression: str, time_zone: str | None) -> CronSchedule:
    """Validate ``expression`` in ``time_zone``; raises ValueError in words a person understands."""
    zone = load_time_zone(time_zone)
    if len(expression.split()) not in (1, 5):
        raise ValueError(
            f"{expression!r} is not a five-field cron expression "
            "(minute hour day-of-month month day-of-week), for example '0 9 * * 1-5'"
        )
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter's parser raises assorted errors for odd input
        valid = False
    if not valid:
        raise ValueError(
            f"{expression!r} is not a valid cron expression "
            "(minute hour day-of-month month day-of-week), for example '0 9 * * 1-5'"
        )
    schedule = CronSchedule(expression=expression, time_zone=zone)
    try:
        schedule.next_after(datetime.now(UTC))
    except ValueError:
        raise ValueError(f"the schedule {expression!r} never fires (no such date)") from None
    except Exception as exc:  # croniter's other parser errors
        raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from None
    return schedule


__all__ = [
    "MAX_DURATION",
    "CronSchedule",
    "compile_schedule",
    "load_time_zone",
    "parse_duration",
]
