"""The HTTP shell every service shares: errors, metrics, probes, request context, size limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smarttasks.core.errors import COMMON_ERRORS, install_error_handlers, problem
from smarttasks.core.metrics import SHED, MetricsMiddleware, metrics_endpoint

log = structlog.get_logger()

ReadinessCheck = Callable[[], Awaitable[None]]

# Large enough for the biggest valid task (10,000-character description), small enough
# that nobody can make a service buffer megabytes per request.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


class BodySizeLimitMiddleware:
    """Refuses request bodies over a limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413, "Payload Too Large", f"Request body exceeds {self.max_bytes} bytes."
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised inside the app when a streamed body crosses the limit."""


class RequestContextMiddleware:
    """Binds a request id to every log line of a request and logs one line when it ends."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, service=self.service, method=scope.get("method")
        )
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.debug(
                "request",
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text = value.decode("latin-1")[:128]
            return text if text.isprintable() else None
    return None


def probes_router(checks: Sequence[ReadinessCheck]) -> APIRouter:
    """`/healthz` (the process is alive) and `/readyz` (its dependencies answer)."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness probe", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness probe", include_in_schema=False)
    async def readyz() -> JSONResponse:
        for check in checks:
            try:
                await check()
            except Exception as exc:  # any failure means "not ready", never a crash
                log.warning("not_ready", check=getattr(check, "__name__", "?"), error=str(exc))
                return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        return {"status": "ok"}  # type: ignore[return-value]

    return router


class InFlightLimitMiddleware:
    """Answers 503 with `Retry-After` once `limit` requests are in progress, rather than
    queueing without bound: past what its cores give it a process would otherwise answer
    minutes late, and every request would fail its client's timeout. Probes and metrics
    are never refused (a busy process is not a dead one)."""

    def __init__(
        self, app: ASGIApp, *, service: str, limit: int, retry_after_seconds: int = 1
    ) -> None:
        self.app = app
        self.service = service
        self.limit = limit
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in _NEVER_SHED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            SHED.labels(self.service).inc()
            response = problem(
                503,
                "Service Unavailable",
                f"The service is busy ({self.limit} requests in progress); retry shortly.",
                headers={"Retry-After": self.retry_after},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


_NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(
    *,
    service: str,
    title: str,
    routers: Sequence[APIRouter],
    readiness: Sequence[ReadinessCheck] = (),
    lifespan: Any = None,
    version: str = "0.1.0",
    description: str = "",
    max_in_flight: int = 0,
) -> FastAPI:
    """A FastAPI app with the shared shell around the given routers.

    `max_in_flight` (0: no limit) is how many requests it serves at once before answering
    503 (see `InFlightLimitMiddleware`).
    """
    app = FastAPI(title=title, version=version, description=description, lifespan=lifespan)
    install_error_handlers(app)
    for router in routers:
        app.include_router(router, responses=COMMON_ERRORS)
    app.include_router(probes_router(readiness))
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    app.add_middleware(BodySizeLimitMiddleware)
    if max_in_flight:
        app.add_middleware(InFlightLimitMiddleware, service=service, limit=max_in_flight)
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_middleware(RequestContextMiddleware, service=service)
    return app
