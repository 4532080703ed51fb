"""RFC 9457 problem+json for every error: the catalogue's problems (service.problems), FastAPI's
own validation errors, Starlette's routing errors (404, 405 with a complete ``Allow``), and the
unexpected (500, details only in the log)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.problems import ProblemError, lookup

PROBLEM = "application/problem+json"
log = logging.getLogger("lipwass.api")

#: Starlette's own errors, by status, as catalogue codes.
_HTTP_CODES = {400: "malformed-request", 404: "not-found", 405: "method-not-allowed"}


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/validation",
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "body.target: Field required",
                    "errors": [
                        {"loc": ["body", "target"], "msg": "Field required", "type": "missing"}
                    ],
                },
                {
                    "type": "/problems/estimate-not-found",
                    "title": "Estimate not found",
                    "status": 404,
                    "detail": "No estimate with id 'est_d67d5d2f6bdbe90b84799d29'.",
                },
            ]
        }
    )

    type: str = Field("about:blank", description="`/problems/<code>`: see the catalogue.")
    title: str = Field(description="A short summary of the problem type.")
    status: int = Field(description="The HTTP status of this answer.")
    detail: str | None = Field(None, description="What went wrong here, and how to fix it.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="For validation problems: each offending field (`loc`) and why."
    )


def problem_of(code: str, detail: str | None = None, **kw: Any) -> Problem:
    """The problem document of catalogue ``code``."""
    kind = lookup(code)
    return Problem(type=kind.type, title=kind.title, status=kind.status, detail=detail, **kw)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM,
        headers=headers,
    )


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting problem answers."""
    return {
        s: {"model": Problem, "content": {PROBLEM: {}}, "description": "A problem document."}
        for s in statuses
    }


#: The methods a 405's ``Allow`` may name (the routes never serve OPTIONS or TRACE).
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own 405 names only the methods
    of the first route that matched the path. HEAD goes with GET."""
    scope = {**request.scope, "path_params": {}}
    allowed = {
        method
        for method in _METHODS
        for route in app.router.routes
        if route.matches({**scope, "method": method})[0] == Match.FULL
    }
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            problem_of(exc.kind.code, exc.detail, errors=exc.errors), exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(problem_of("validation", detail[:2000], errors=errors[:50]))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        code = _HTTP_CODES.get(exc.status_code)
        if exc.status_code == 405:
            allow = allowed_methods(app, request)
            if allow:
                headers["Allow"] = ", ".join(allow)
        if code is None:
            problem = Problem(title="HTTP error", status=exc.status_code, detail=str(exc.detail))
        else:
            problem = problem_of(code, str(exc.detail))
        return problem_response(problem, headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(problem_of("internal", "An unexpected error; see logs."))
