"""With Redis configured, every replica shares one set of login counters."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from smarttasks.users.ratelimit import LoginGuard, RedisRateLimiter

pytestmark = pytest.mark.integration


async def test_two_replicas_share_the_account_limit(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    try:
        replica_a, replica_b = (
            LoginGuard(
                RedisRateLimiter(c, window_seconds=60, prefix=prefix),
                per_account=3,
                per_address=1000,
            )
            for c in clients
        )
        assert await replica_a.check(account="ada", address="10.0.0.1") is None
        assert await replica_b.check(account="ada", address="10.0.0.2") is None
        assert await replica_a.check(account="ada", address="10.0.0.3") is None
        wait = await replica_b.check(account="ada", address="10.0.0.4")
        assert wait is not None and 1 <= wait <= 60
        await replica_a.succeeded(account="ada")
        assert await replica_b.check(account="ada", address="10.0.0.5") is None
        ttl = await clients[0].pttl(f"{prefix}acct:ada")
        assert 0 < ttl <= 60_000, "counters must expire with the window"
    finally:
        for c in clients:
            await c.aclose()
