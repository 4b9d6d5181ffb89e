"""When to try again: exponential backoff with jitter, a bounded number of attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass

from smarttasks.notifications.settings import NotificationsSettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before attempt n+1 is `base * factor**(n-1)`, capped, with part of it random."""

    max_attempts: int = 8
    base_seconds: float = 10.0
    factor: float = 3.0
    max_seconds: float = 3600.0
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: NotificationsSettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_seconds=settings.retry_base_seconds,
            factor=settings.retry_factor,
            max_seconds=settings.retry_max_seconds,
            jitter=settings.retry_jitter,
        )

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def delay(
        self, attempts: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after `attempts` failed attempts; never less than `retry_after`."""
        exponent = max(attempts - 1, 0)
        try:
            raw = min(self.max_seconds, self.base_seconds * self.factor**exponent)
        except OverflowError:
            raw = self.max_seconds
        draw = (rng or random).random()
        delay = raw * (1.0 - self.jitter * draw)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_seconds))
        return delay
