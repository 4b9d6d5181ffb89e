"""Password hashing with argon2id through libpass (the maintained passlib fork)."""

from __future__ import annotations

from anyio import to_thread
from passlib.context import CryptContext


class PasswordHasher:
    """Hashes and verifies off the event loop: argon2 is deliberately slow."""

    def __init__(self, *, memory_kib: int = 65536) -> None:
        self._context = CryptContext(
            schemes=["argon2"], deprecated="auto", argon2__memory_cost=memory_kib, argon2__type="ID"
        )
        # Verifying against this keeps unknown-account logins as slow as real ones.
        self._dummy = self._context.hash("not-a-real-password")

    async def hash(self, password: str) -> str:
        return await to_thread.run_sync(self._context.hash, password)

    async def verify(self, password: str, hashed: str | None) -> bool:
        return await to_thread.run_sync(self._context.verify, password, hashed or self._dummy) and (
            hashed is not None
        )
