"""Cron slots of a Schedule trigger in an IANA time zone, across DST changes (pure).

The expression is read in wall-clock time of the zone, like cron itself:
- a wall time skipped by a spring-forward change fires at the first instant after the gap;
- a wall time that occurs twice at a fall-back change fires once (the first time), unless
  the hour field is a wildcard (`*`, `*/2`), in which case both hours are real hours and
  each fires, so an hourly schedule still fires every hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

# Wall clocks move by at most a few hours around a change; start the wall-time search this far
# back so that a repeated hour after `after` is not skipped.
_DST_MARGIN = timedelta(hours=3)
_MAX_STEPS = 20_000
_CATCH_UP_WINDOW = timedelta(days=2)


class InvalidSchedule(ValueError):
    """A cron expression or time zone the engine cannot use."""


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone `name` (UTC when unset)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(f"unknown time zone {name!r}") from exc


def validate(expression: str) -> None:
    """Raise InvalidSchedule unless `expression` is a five-field cron expression or a macro."""
    fields = expression.split()
    if not (len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))):
        raise InvalidSchedule(f"{expression!r} is not a five-field cron expression")
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter's parser raises assorted errors for odd input
        valid = False
    if not valid:
        raise InvalidSchedule(f"{expression!r} is not a valid cron expression")


def _hour_is_wildcard(expression: str) -> bool:
    fields = expression.split()
    if len(fields) == 1:
        return fields[0] == "@hourly"
    return fields[1].startswith("*")


def _transition(naive: datetime, tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first instant in [low, high] whose wall time in `tz` is at or after `naive`."""
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while lo < hi:
        mid = (lo + hi) // 2
        wall = datetime.fromtimestamp(mid, UTC).astimezone(tz).replace(tzinfo=None)
        if wall >= naive:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def _instants(naive: datetime, tz: ZoneInfo, *, hour_wildcard: bool) -> list[datetime]:
    """The UTC instants a wall time of `tz` stands for: usually one, never zero."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # repeated wall time (fall back): both instants show `naive`
        return [first, second] if hour_wildcard else [first]
    # Skipped wall time (spring forward): fire when the clock jumps over it.
    return [_transition(naive, tz, second, first)]


def slots(expression: str, time_zone: str | None, after: datetime) -> Iterator[datetime]:
    """The slots strictly after `after`, in order, as UTC instants."""
    tz = zone(time_zone)
    hour_wildcard = _hour_is_wildcard(expression)
    start = after.astimezone(tz).replace(tzinfo=None) - _DST_MARGIN
    walls = croniter(expression, start)
    last = after
    for _ in range(_MAX_STEPS):
        try:
            naive = walls.get_next(datetime)
        except CroniterBadDateError:  # a date that never comes, e.g. 30 February
            return
        for instant in _instants(naive, tz, hour_wildcard=hour_wildcard):
            if instant > last:
                last = instant
                yield instant


def next_slot(expression: str, time_zone: str | None, after: datetime) -> datetime | None:
    """The first slot strictly after `after`; None if the expression never fires."""
    return next(slots(expression, time_zone, after), None)


def latest_due(
    expression: str, time_zone: str | None, due: datetime, now: datetime
) -> tuple[datetime, datetime | None]:
    """For an entry due at `due` <= `now`: the latest slot at or before `now`, and the next one.

    After downtime a schedule fires once, for the latest missed slot, not once per slot.
    """
    current = due
    if now - due > _CATCH_UP_WINDOW:
        # Jump close to `now` instead of walking (say) a week of minutely slots.
        recent = next_slot(expression, time_zone, now - _CATCH_UP_WINDOW)
        if recent is not None and recent <= now:
            current = recent
    for candidate in slots(expression, time_zone, current):
        if candidate > now:
            return current, candidate
        current = candidate
    return current, None


__all__ = ["InvalidSchedule", "latest_due", "next_slot", "slots", "validate", "zone"]
