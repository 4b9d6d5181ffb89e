"""Who a user id is: address, name and email preference, from the users service's API.

The notification service never reads the users tables; it asks `GET /api/v1/users/{id}`
with a service credential, and caches the answer. The credential is the users service's
service token (`SMARTTASKS_SERVICE_TOKEN` there, the same Secret mounted in both services
in a cluster); an administrator's access token is accepted too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import structlog

log = structlog.get_logger()

TokenProvider = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Contact:
    """What the notification service needs to know about a user."""

    user_id: uuid.UUID
    email: str
    display_name: str = ""
    email_notifications: bool = True


class DirectoryUnavailable(Exception):
    """The users service did not answer usefully; the delivery is retried later."""


class UserDirectory(Protocol):
    """Looks a user up by id; None when there is no such user."""

    async def get(self, user_id: uuid.UUID) -> Contact | None: ...


Lookup = Callable[[uuid.UUID], Awaitable[Contact | None]]


class InProcessUserDirectory:
    """For embedded mode and tests: a lookup function (or fixed contacts) in this process."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    @classmethod
    def of(cls, contacts: Mapping[uuid.UUID, Contact]) -> InProcessUserDirectory:
        known = dict(contacts)

        async def lookup(user_id: uuid.UUID) -> Contact | None:
            return known.get(user_id)

        return cls(lookup)

    async def get(self, user_id: uuid.UUID) -> Contact | None:
        return await self._lookup(user_id)


def static_token(token: str) -> TokenProvider:
    async def provide() -> str:
        return token

    return provide


class FileToken:
    """A token read from a file (a mounted Secret), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime = -1.0
        self._token = ""

    async def __call__(self) -> str:
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._token = (await asyncio.to_thread(self._path.read_text)).strip()
                self._mtime = mtime
        except OSError as exc:
            raise DirectoryUnavailable(f"cannot read the service credential: {exc}") from None
        return self._token


class HttpUserDirectory:
    """Asks the users service, caching answers (also "no such user") for `ttl` seconds.

    Concurrent lookups of one id share one request, so a burst of notifications to one
    person costs one call.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: TokenProvider,
        ttl: float = 60.0,
        max_entries: int = 10_000,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self._token = token
        self._ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[uuid.UUID, tuple[float, Contact | None]] = OrderedDict()
        self._inflight: dict[uuid.UUID, asyncio.Future[Contact | None]] = {}

    async def get(self, user_id: uuid.UUID) -> Contact | None:
        cached = self._cache.get(user_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        task = self._inflight.get(user_id)
        if task is None:
            # One request per id in flight; it is its own task, so a cancelled caller
            # does not cancel it for the others.
            task = asyncio.ensure_future(self._fetch_and_remember(user_id))
            self._inflight[user_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(user_id, None))
        return await asyncio.shield(task)

    async def _fetch_and_remember(self, user_id: uuid.UUID) -> Contact | None:
        contact = await self._fetch(user_id)
        self._remember(user_id, contact)
        return contact

    def _remember(self, user_id: uuid.UUID, contact: Contact | None) -> None:
        self._cache[user_id] = (time.monotonic(), contact)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    async def _fetch(self, user_id: uuid.UUID) -> Contact | None:
        headers = {"Authorization": f"Bearer {await self._token()}"}
        try:
            response = await self._client.get(f"/api/v1/users/{user_id}", headers=headers)
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"users service unreachable: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            log.error("users_service_refused_credential", status=response.status_code)
            raise DirectoryUnavailable(
                f"users service refused the service credential (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise DirectoryUnavailable(f"users service answered HTTP {response.status_code}")
        try:
            data = response.json()
            return Contact(
                user_id=uuid.UUID(str(data["id"])),
                email=str(data["email"]),
                display_name=str(data.get("display_name") or ""),
                email_notifications=bool(data.get("email_notifications", True)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DirectoryUnavailable(f"unexpected answer from users service: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()
