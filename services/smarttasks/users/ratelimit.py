"""Fixed-window login rate limits, in Redis when configured, in process otherwise."""

from __future__ import annotations

import math
import time
from typing import Protocol

from redis.asyncio import Redis


class RateLimiter(Protocol):
    """Counts hits of a key in the current window."""

    async def hit(self, key: str) -> tuple[int, float]:
        """Record one hit; return (hits in this window, seconds until the window ends)."""
        ...

    async def reset(self, key: str) -> None: ...


class MemoryRateLimiter:
    """Per-process counters: right for one replica and for embedded mode."""

    def __init__(self, *, window_seconds: int, max_keys: int = 100_000) -> None:
        self._window = window_seconds
        self._max_keys = max_keys
        self._counts: dict[str, tuple[int, float]] = {}

    async def hit(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        count, ends = self._counts.get(key, (0, 0.0))
        if ends <= now:
            if len(self._counts) >= self._max_keys:
                self._evict(now)
            count, ends = 0, now + self._window
        count += 1
        self._counts[key] = (count, ends)
        return count, ends - now

    async def reset(self, key: str) -> None:
        self._counts.pop(key, None)

    def _evict(self, now: float) -> None:
        for k in [k for k, (_, ends) in self._counts.items() if ends <= now]:
            del self._counts[k]


class RedisRateLimiter:
    """Counters shared by every replica: INCR plus an expiry set on the first hit."""

    def __init__(
        self, redis: Redis[bytes], *, window_seconds: int, prefix: str = "smarttasks:login:"
    ):
        self._redis = redis
        self._window = window_seconds
        self._prefix = prefix

    async def hit(self, key: str) -> tuple[int, float]:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, self._window, nx=True)
            pipe.pttl(name)
            count, _, pttl = await pipe.execute()
        return int(count), max(float(pttl) / 1000, 0.0)

    async def reset(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)


class LoginGuard:
    """Refuses a login when its account or its client address has tried too often."""

    def __init__(self, limiter: RateLimiter, *, per_account: int, per_address: int) -> None:
        self._limiter = limiter
        self._per_account = per_account
        self._per_address = per_address

    async def check(self, *, account: str, address: str) -> int | None:
        """Count this attempt; return seconds to wait if it is over a limit, else None."""
        wait = 0.0
        count, left = await self._limiter.hit(f"addr:{address}")
        if count > self._per_address:
            wait = max(wait, left)
        count, left = await self._limiter.hit(f"acct:{account}")
        if count > self._per_account:
            wait = max(wait, left)
        return max(1, math.ceil(wait)) if wait else None

    async def succeeded(self, *, account: str) -> None:
        await self._limiter.reset(f"acct:{account}")
