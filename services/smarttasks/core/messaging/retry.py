"""When to retry: the consumer's retry schedule and the back-off used while a dependency is down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True)
class RetryPolicy:
    """Growing delays between attempts of a failing message, and when to give up."""

    delays: tuple[float, ...]
    max_attempts: int

    def __post_init__(self) -> None:
        if not self.delays or any(delay <= 0 for delay in self.delays):
            raise ValueError("retry delays must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    @classmethod
    def of(cls, delays: Sequence[float], max_attempts: int) -> RetryPolicy:
        return cls(tuple(float(delay) for delay in delays), max_attempts)

    def next_delay(self, failed_attempt: int) -> float | None:
        """Seconds before the attempt after `failed_attempt` (1-based); None: dead-letter it."""
        if failed_attempt >= self.max_attempts:
            return None
        return self.delays[min(failed_attempt, len(self.delays)) - 1]

    def used_delays(self) -> tuple[float, ...]:
        """The distinct delays this policy can ask for (one retry queue each)."""
        steps = max(self.max_attempts - 1, 1)
        return tuple(dict.fromkeys(self.delays[: min(steps, len(self.delays))]))


class Backoff:
    """Exponential pause with full jitter, for reconnecting to a broker or database."""

    def __init__(self, *, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self._failures)
        self._failures += 1
        return random.uniform(ceiling / 2, ceiling)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` may come from the database being unreachable (not from a bad statement)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError
        | psycopg.OperationalError
        | psycopg.InterfaceError
        | ConnectionError
        | OSError,
    )


async def database_available(engine: AsyncEngine, *, timeout: float = 5.0) -> bool:
    """Whether a fresh `SELECT 1` succeeds, telling an outage from a failing handler."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (sa_exc.SQLAlchemyError, psycopg.Error, OSError, TimeoutError):
        return False
    return True
