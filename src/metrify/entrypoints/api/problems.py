"""Every 4xx and 5xx as RFC 9457 problem details (application/problem+json), never a stack trace.

`type` is a URN naming the kind of problem (`urn:metrify:problem:<slug>`), `title` its short
human name, `detail` this occurrence, `instance` the request's path. Validation problems add
`errors` (where and what); rate-limited and unavailable ones carry Retry-After.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from metrify.application.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
)
from metrify.application.ports import TransientStoreError
from metrify.domain.ingest_keys import InvalidIngestKey
from metrify.domain.users import AccessDenied, InvalidUser

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("metrify.api")


class Problem(BaseModel):
    """RFC 9457 problem details; extension members (such as `errors`) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ApiProblem(Exception):
    """A problem an endpoint raises itself (a body that cannot be read, a limit reached)."""

    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers
        self.extra = extra


_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}


def problem(
    request: Request,
    status: int,
    detail: str | None,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {
        "type": f"urn:metrify:problem:{slug or _SLUGS.get(status, str(status))}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def _location(loc: Any) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in (loc or ())]


def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:
    errors = [
        {"location": _location(e.get("loc")), "message": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else None
    detail = "the request is not valid"
    if first is not None:
        detail = f"{'.'.join(str(p) for p in first['location'])}: {first['message']}"
    return problem(request, 422, detail, errors=errors)


def _route_table(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    table = getattr(app.state, "route_table", None)
    if table is None:
        try:  # FastAPI >= 0.130 keeps an included router as one entry
            from fastapi.routing import iter_route_contexts

            routes: list[Any] = list(iter_route_contexts(app.routes))
        except ImportError:
            routes = list(app.routes)
        table = []
        for route in routes:
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if path and methods:
                pattern = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
                table.append((re.compile(re.sub(r"\{[^}/]+\}", "[^/]+", pattern) + "$"), set(methods) - {"HEAD"}))
        app.state.route_table = table
    return table


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    return sorted({m for pattern, methods in _route_table(app) if pattern.match(path) for m in methods})


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path)) or headers.get("Allow", "")
        return problem(request, exc.status_code, detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> ProblemResponse:
        return _validation(request, exc)

    @app.exception_handler(ApiProblem)
    async def _api(request: Request, exc: ApiProblem) -> ProblemResponse:
        return problem(request, exc.status, exc.detail, slug=exc.slug, headers=exc.headers, **exc.extra)

    @app.exception_handler(AuthenticationFailed)
    async def _unauthenticated(request: Request, exc: AuthenticationFailed) -> ProblemResponse:
        return problem(request, 401, str(exc), headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AccessDenied)
    async def _forbidden(request: Request, exc: AccessDenied) -> ProblemResponse:
        return problem(request, 403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> ProblemResponse:
        return problem(request, 404, str(exc))

    @app.exception_handler(AlreadyExists)
    async def _exists(request: Request, exc: AlreadyExists) -> ProblemResponse:
        return problem(request, 409, str(exc), slug="already-exists")

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> ProblemResponse:
        return problem(request, 409, str(exc))

    for invalid in (InvalidRequest, InvalidUser, InvalidIngestKey):

        @app.exception_handler(invalid)
        async def _unprocessable(request: Request, exc: Exception) -> ProblemResponse:
            return problem(request, 422, str(exc))

    @app.exception_handler(RateLimited)
    async def _limited(request: Request, exc: RateLimited) -> ProblemResponse:
        return problem(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> ProblemResponse:
        return problem(request, 503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TransientStoreError)
    async def _store_down(request: Request, exc: TransientStoreError) -> ProblemResponse:
        return problem(request, 503, f"the database does not answer: {exc}", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path, "method": request.method})
        return problem(request, 500, "an unexpected error; the server's log has the details")


class NulRefusal:
    """A path or query holding a NUL character is a 400 before any route sees it. No id, name or
    filter holds one, and PostgreSQL refuses NUL in text outright: looked up there, such a value
    was a 500 wherever it went in (found by a review; SQLite answered 404)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            refused = problem(Request(scope), 400, "the path or query holds a NUL character", slug="malformed-request")
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "A problem (RFC 9457): bad input, missing or refused credentials, a limit, an outage.",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
