"""One error hierarchy for every service, mapped to RFC 9457 problem responses at the boundary."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger()

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """Base of every error a service reports to its caller."""

    status_code = 500
    title = "Internal Server Error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        self.errors = errors


class BadRequest(AppError):
    """The request cannot be understood."""

    status_code = 400
    title = "Bad Request"


class Unauthorized(AppError):
    """No valid credentials were given."""

    status_code = 401
    title = "Unauthorized"

    def __init__(self, message: str = "Not authenticated") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """Authenticated, but not allowed to do this."""

    status_code = 403
    title = "Forbidden"


class NotFound(AppError):
    """The resource does not exist or is not visible to the caller."""

    status_code = 404
    title = "Not Found"


class Conflict(AppError):
    """The request conflicts with the current state (e.g. a duplicate)."""

    status_code = 409
    title = "Conflict"


class PreconditionFailed(AppError):
    """An `If-Match` precondition did not hold: the resource changed meanwhile."""

    status_code = 412
    title = "Precondition Failed"


class PayloadTooLarge(AppError):
    """The request body is larger than the service accepts."""

    status_code = 413
    title = "Payload Too Large"


class ValidationFailed(AppError):
    """The request is well-formed but its content is invalid."""

    status_code = 422
    title = "Unprocessable Content"


class TooManyRequests(AppError):
    """The caller is rate limited; `Retry-After` says for how long."""

    status_code = 429
    title = "Too Many Requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    """A dependency of the service is down."""

    status_code = 503
    title = "Service Unavailable"


class FieldError(BaseModel):
    """One invalid input, named so a person can find and fix it."""

    field: str = Field(description="Dotted path of the field, e.g. `labels.0`.")
    in_: str = Field(alias="in", description="body, query, path or header.")
    message: str


class Problem(BaseModel):
    """An error response (RFC 9457 problem details)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for problem-JSON errors, keyed by status code."""
    schema = {"schema": {"$ref": "#/components/schemas/Problem"}}
    return {
        code: {"description": text, "model": Problem, "content": {PROBLEM_JSON: schema}}
        for code, text in descriptions.items()
    }


COMMON_ERRORS = problem_responses(
    {
        400: "Malformed request (e.g. a body that is not JSON)",
        413: "Request body too large",
        422: "Invalid input; `errors` names each field",
    }
)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """Build an `application/problem+json` response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            where, field = loc[0], ".".join(loc[1:])
        else:
            where, field = "body", ".".join(loc)
        out.append({"field": field or where, "in": where, "message": str(err.get("msg", ""))})
    return out


def _unavailable(detail: str) -> JSONResponse:
    return problem(503, ServiceUnavailable.title, detail, headers={"Retry-After": "1"})


def install_error_handlers(app: FastAPI) -> None:
    """Map AppError, validation errors, HTTP errors and anything unexpected to problem JSON."""

    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return problem(
            exc.status_code, exc.title, exc.message, headers=exc.headers, errors=exc.errors
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if any(e["message"].startswith("JSON decode error") for e in errors):
            return problem(400, "Bad Request", "The request body is not valid JSON.", errors=errors)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, "Unprocessable Content", summary, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, title, str(exc.detail), headers=headers)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not (exc.connection_invalidated or isinstance(exc, OperationalError)):
            return await _unexpected(request, exc)
        # The connection broke (a restart, a failover): the pool reconnects for the next
        # request, so the caller may simply try again.
        log.warning("database_unavailable", error=str(exc.orig))
        return _unavailable("The database connection failed; try again.")

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database_pool_exhausted", error=str(exc))
        return _unavailable("The service is busy; try again.")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=repr(exc))
        return problem(500, "Internal Server Error", "An unexpected error occurred.")
