"""Webhooks over HTTP (httpx): a JSON POST signed per the Standard Webhooks scheme."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import TypeAdapter

from smarttasks.notifications.channels.base import OutboundMessage, Result
from smarttasks.notifications.channels.targets import (
    Target,
    TargetRefused,
    TargetUnresolvable,
    resolve_target,
)
from smarttasks.notifications.secretrefs import SecretError, SecretNotFound, SecretResolver

SECRET_PREFIX = "whsec_"
USER_AGENT = "SmartTasks-Webhooks/1"
RETRYABLE_4XX = (408, 429)
MAX_RETRY_AFTER = 24 * 3600.0
MAX_TRACKED_HOSTS = 10_000
# Answers up to this size are read (and dropped) so the connection is reused.
MAX_DRAINED_BYTES = 64 * 1024
_JSON: TypeAdapter[Any] = TypeAdapter(Any)


class InvalidSecret(ValueError):
    """The signing key is not in `whsec_<base64>` form."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("signing secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("signing secret is not valid base64 after whsec_") from None
    if len(key) < 16:
        raise InvalidSecret("signing secret must hold at least 16 bytes")
    return key


def sign(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the `webhook-signature` value."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.digest(key, signed, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode("ascii")


def encode_body(payload: Any) -> bytes:
    """Compact UTF-8 JSON; the signature covers exactly these bytes.

    pydantic's serialiser writes the same bytes as `json.dumps(ensure_ascii=False,
    separators=(",", ":"))` at a seventh of the cost, and non-finite floats as `null`
    rather than as the invalid `NaN`.
    """
    return _JSON.dump_json(payload)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def _drain(response: httpx.Response) -> None:
    """Read and drop a short answer, so its connection can carry the next request.

    A longer one is not read further (a receiver cannot make us buffer or wait for a large
    answer); its connection is closed instead of kept.
    """
    if response.is_stream_consumed:  # an in-memory transport has read it already
        return
    if response.status_code in (204, 304) or response.headers.get("content-length") == "0":
        return  # nothing to read: the connection is free already
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > MAX_DRAINED_BYTES:
            break


class WebhookChannel:
    """POSTs the notification as JSON to the rule's URL.

    `webhook-id` is the notification id, the same on every attempt; `webhook-timestamp` is
    the time of each attempt (receivers refuse old ones). Redirects are not followed and
    only 2xx counts; 408, 429 and 5xx are retried, other 4xx are not. Connections are kept
    open between requests to a host when its answers are short.

    Requests go straight to an httpx transport (connection pool), not through a client:
    there are no redirects, cookies, proxies or auth to apply, and skipping the client's
    handling of them saves a third of each request's cost.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport,
        secrets: SecretResolver,
        timeout: float = 10.0,
        allow_private: bool = False,
        per_host: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._transport = transport
        self._secrets = secrets
        self._timeout = timeout
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._allow_private = allow_private
        self._per_host = per_host
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._clock = clock

    def _slots_for(self, host: str) -> asyncio.Semaphore:
        slots = self._host_slots.get(host)
        if slots is None:
            if len(self._host_slots) >= MAX_TRACKED_HOSTS:
                # Forget hosts with free slots (rarely reached; the limit may briefly be
                # exceeded for a host forgotten mid-send).
                idle = [h for h, s in self._host_slots.items() if not s.locked()]
                for h in idle:
                    del self._host_slots[h]
            slots = self._host_slots[host] = asyncio.Semaphore(self._per_host)
        return slots

    async def send(self, message: OutboundMessage) -> Result:
        if not message.url:
            return Result.permanent("webhook has no URL")
        try:
            target = await resolve_target(message.url, allow_private=self._allow_private)
        except TargetRefused as exc:
            return Result.permanent(str(exc))
        except TargetUnresolvable as exc:
            return Result.temporary(str(exc))
        try:
            body = encode_body(message.payload)
        except (TypeError, ValueError) as exc:
            return Result.permanent(f"payload is not JSON-serialisable: {exc}")
        key: bytes | None = None
        if message.secret_ref is not None:
            try:
                key = decode_secret(await self._secrets.resolve(message.secret_ref))
            except InvalidSecret as exc:
                return Result.permanent(f"secret {message.secret_ref}: {exc}")
            except SecretNotFound as exc:
                # Creating the Secret fixes it, so this is worth retrying for a while.
                return Result.temporary(str(exc))
            except SecretError as exc:
                return Result.temporary(str(exc))
        # Waiting for a slot of a busy host is not counted against the request's deadline,
        # and the timestamp is taken after it, so a queued request is not signed stale.
        async with self._slots_for(target.host_header):
            return await self._post(target, body, message, key)

    async def _post(
        self, target: Target, body: bytes, message: OutboundMessage, key: bytes | None
    ) -> Result:
        msg_id = str(message.notification_id)
        timestamp = int(self._clock())
        headers = [
            ("Host", target.host_header),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("User-Agent", USER_AGENT),
            ("webhook-id", msg_id),
            ("webhook-timestamp", str(timestamp)),
        ]
        if key is not None:
            signature = sign(key, msg_id=msg_id, timestamp=timestamp, body=body)
            headers.append(("webhook-signature", signature))
        extensions: dict[str, Any] = {"timeout": self._timeouts}
        if target.server_name:
            extensions["sni_hostname"] = target.server_name
        # Built from a stream and read at once: the same request as `content=body`, without
        # httpx's content encoding and header defaults (all set above), a fifth of the cost.
        stream = httpx.ByteStream(body)
        request = httpx.Request(
            "POST", target.url, stream=stream, headers=headers, extensions=extensions
        )
        request.read()
        code: int | None = None
        retry_after: float | None = None
        try:
            # A whole-request deadline: httpx's own timeouts are per phase (connect, read...).
            async with asyncio.timeout(self._timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    code = response.status_code
                    retry_after = _retry_after(response)
                    await _drain(response)
                finally:
                    await response.aclose()
        except (httpx.TransportError, TimeoutError) as exc:
            if code is None:
                return Result.temporary(_describe_failure(self._timeout, exc))
        # Once the status is known, how the answer's body ended does not change the outcome.
        return _outcome(code, retry_after)


def _describe_failure(timeout: float, exc: Exception) -> str:
    """What went wrong before an answer came, in the words of the error that caused it.

    A transport may report a connection the receiver dropped as an httpx timeout (the
    aiohttp transport maps every connection error so); only a real timeout says so.
    """
    cause = exc.__cause__
    if (
        isinstance(exc, TimeoutError)
        or isinstance(cause, TimeoutError)
        or (isinstance(exc, httpx.TimeoutException) and cause is None)
    ):
        return f"no response within {timeout:g} s"
    error = cause if isinstance(cause, Exception) else exc
    return f"{type(error).__name__}: {error or 'connection failed'}"


def _outcome(code: int, retry_after: float | None) -> Result:
    if 200 <= code < 300:
        return Result.sent(f"HTTP {code}", status_code=code)
    if code >= 500 or code in RETRYABLE_4XX:
        return Result.temporary(f"HTTP {code}", status_code=code, retry_after=retry_after)
    if 300 <= code < 400:
        return Result.permanent(f"HTTP {code}: redirects are not followed", status_code=code)
    return Result.permanent(f"HTTP {code}", status_code=code)
