"""`throttle.maxPerHour`: at most N firings of a rule in any sliding hour, across replicas.

Firings over the limit are recorded as throttled (so they are counted in the rule's status
and never retried) and request no notification. A transaction-scoped advisory lock per
throttled rule serialises the count-and-decide step between replicas; callers take the
locks in sorted order so two batches can never deadlock on them.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

WINDOW = "1 hour"

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('automation.throttle:' || :uid, 0))")
_RECENT = text(
    f"""
    SELECT rule_uid, count(*) AS n FROM automation.firings
    WHERE rule_uid IN :uids AND NOT throttled AND fired_at > clock_timestamp() - interval '{WINDOW}'
    GROUP BY rule_uid
    """
).bindparams(bindparam("uids", expanding=True))


def over_limit(max_per_hour: int, counted: int, new: int) -> int:
    """How many of `new` firings exceed the limit, when `counted` (in the window) includes them."""
    allowed = max(0, max_per_hour - (counted - new))
    return max(0, new - allowed)


async def lock_rules(session: AsyncSession, uids: Iterable[str]) -> None:
    """Serialise throttling decisions for these rules until the transaction ends."""
    for uid in sorted(set(uids)):
        await session.execute(_LOCK, {"uid": uid})


async def recent_counts(session: AsyncSession, uids: Iterable[str]) -> dict[str, int]:
    """Non-throttled firings of each rule within the last hour."""
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    rows = (await session.execute(_RECENT, {"uids": wanted})).all()
    return {str(row.rule_uid): int(row.n) for row in rows}


__all__ = ["WINDOW", "lock_rules", "over_limit", "recent_counts"]
