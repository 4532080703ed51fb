"""The problem catalogue: every error the service answers or records, by code.

One table gives each code its HTTP status and title, so a route, the upload readers and the job
runner cannot name the same problem two ways. Routes answer ``application/problem+json`` (RFC
9457) whose ``type`` is ``/problems/<code>``; a failed job's ``error`` is ``{type: <code>, title,
detail}``. Raise :class:`ProblemError` anywhere below a route; ``service.api.errors`` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProblemType:
    """One kind of problem: a stable code, its HTTP status, a title for people."""

    code: str
    status: int
    title: str

    @property
    def type(self) -> str:
        """The problem document's ``type`` (a relative URI)."""
        return f"/problems/{self.code}"


_ALL = (
    # -- requests ------------------------------------------------------------------------------
    ProblemType("malformed-request", 400, "Malformed request"),
    ProblemType("not-found", 404, "Not found"),
    ProblemType("method-not-allowed", 405, "Method not allowed"),
    ProblemType("body-too-large", 413, "Request body too large"),
    ProblemType("unsupported-media-type", 415, "Unsupported media type"),
    ProblemType("validation", 422, "Invalid request"),
    ProblemType("internal", 500, "Internal error"),
    ProblemType("not-ready", 503, "Not ready"),
    ProblemType("request-timeout", 408, "Request timeout"),
    ProblemType("too-many-connections", 503, "Too many connections"),
    ProblemType("too-many-uploads", 503, "Too many uploads at once"),
    # -- access --------------------------------------------------------------------------------
    ProblemType("unauthorized", 401, "Missing or invalid API key"),
    ProblemType("forbidden", 403, "The API key lacks a scope"),
    ProblemType("quota-exceeded", 429, "Quota exceeded"),
    ProblemType("job-too-large", 422, "The job would need too much memory"),
    # -- datasets ------------------------------------------------------------------------------
    ProblemType("invalid-upload", 422, "Invalid upload"),
    ProblemType("upload-too-large", 413, "Upload too large"),
    ProblemType("dataset-not-found", 404, "Dataset not found"),
    ProblemType("dataset-in-use", 409, "Dataset in use"),
    ProblemType("insufficient-storage", 507, "Insufficient storage"),
    # -- estimates -----------------------------------------------------------------------------
    ProblemType("estimate-not-found", 404, "Estimate not found"),
    ProblemType("idempotency-conflict", 409, "Idempotency-Key reused"),
    ProblemType("estimate-finished", 409, "Estimate already finished"),
    ProblemType("estimate-active", 409, "Estimate still active"),
    ProblemType("estimate-not-finished", 409, "Estimate not finished"),
    ProblemType("no-potential", 404, "No potential"),
    # -- a failed job's error (the status is what the failure would be as an answer) -----------
    ProblemType("invalid_request", 422, "Invalid estimate request"),
    ProblemType("invalid_config", 422, "Invalid estimator config"),
    ProblemType("invalid_input", 422, "Invalid input for the estimator"),
    ProblemType("exact_too_large", 422, "The exact solve is too large"),
    ProblemType("exact_not_converged", 500, "The exact solver did not converge"),
    ProblemType("diverged", 500, "Training diverged"),
    ProblemType("non_finite", 500, "The estimate is not a finite number"),
    ProblemType("out_of_memory", 507, "The job ran out of memory"),
    ProblemType("timeout", 504, "The job ran too long"),
    ProblemType("dataset_missing", 410, "A dataset is missing"),
    ProblemType("not_found", 410, "The job vanished"),
    ProblemType("attempts_exhausted", 500, "The job failed on every attempt"),
)

CATALOGUE: dict[str, ProblemType] = {p.code: p for p in _ALL}


def lookup(code: str) -> ProblemType:
    """The catalogue entry of ``code``; a KeyError names an unknown one (a bug, not input)."""
    try:
        return CATALOGUE[code]
    except KeyError:
        raise KeyError(f"problem code {code!r} is not in service.problems.CATALOGUE") from None


class ProblemError(Exception):
    """Raise anywhere below a route to answer with the catalogue's problem ``code``."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.kind = lookup(code)
        super().__init__(detail or self.kind.title)
        self.detail = detail
        self.headers = headers
        self.errors = errors

    @property
    def status(self) -> int:
        return self.kind.status


def invalid_field(field: str, msg: str) -> ProblemError:
    """A 422 naming the offending body field (``a.b`` for nested ones)."""
    return ProblemError(
        "validation",
        f"{field}: {msg}",
        errors=[{"loc": ["body", *field.split(".")], "msg": msg, "type": "value_error"}],
    )


class JobError(Exception):
    """A job failure: becomes the row's ``error`` dict, ``{type: code, title, detail}``."""

    def __init__(self, code: str, detail: str) -> None:
        self.kind = lookup(code)
        super().__init__(detail)
        self.detail = detail

    @property
    def type(self) -> str:
        return self.kind.code

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind.code, "title": self.kind.title, "detail": self.detail}
