"""The login guard counts per account and per address, and says how long to wait."""

from __future__ import annotations

from smarttasks.users.ratelimit import LoginGuard, MemoryRateLimiter


async def test_account_limit_then_reset_on_success() -> None:
    guard = LoginGuard(MemoryRateLimiter(window_seconds=60), per_account=2, per_address=100)
    assert await guard.check(account="a", address="1.1.1.1") is None
    assert await guard.check(account="a", address="1.1.1.2") is None
    wait = await guard.check(account="a", address="1.1.1.3")
    assert wait is not None and 1 <= wait <= 60
    await guard.succeeded(account="a")
    assert await guard.check(account="a", address="1.1.1.4") is None


async def test_address_limit_spans_accounts() -> None:
    guard = LoginGuard(MemoryRateLimiter(window_seconds=60), per_account=100, per_address=2)
    assert await guard.check(account="a", address="9.9.9.9") is None
    assert await guard.check(account="b", address="9.9.9.9") is None
    assert await guard.check(account="c", address="9.9.9.9") is not None
    assert await guard.check(account="c", address="8.8.8.8") is None


async def test_window_expiry_forgives() -> None:
    limiter = MemoryRateLimiter(window_seconds=0)
    guard = LoginGuard(limiter, per_account=1, per_address=1)
    for _ in range(5):
        assert await guard.check(account="a", address="x") is None
