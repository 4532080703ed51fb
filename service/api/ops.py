"""Routes: operations. Liveness, readiness (store, blobs, executor) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api import errors
from service.api.deps import BlobsDep, DbDep, ExecutorDep, SettingsDep, get_principal
from service.metrics import CONTENT_TYPE, Metrics
from service.problems import ProblemError
from service.settings import Settings

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """The process serves requests."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = Field(
        "ok", description="Always ok: a process that cannot serve does not answer."
    )


class Ready(BaseModel):
    """Every dependency answered its check (a failed one is a 503 problem naming it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "checks": {"database": "ok", "blobs": "ok", "executor": "ok"}}
            ]
        }
    )

    status: Literal["ready"] = Field("ready", description="Always ready in a 200 answer.")
    checks: dict[str, str] = Field(
        description="Each check and its outcome, ok: database (a query), blobs (a file "
        "written to the blob volume), executor (Redis answers, or the embedded dispatcher runs)."
    )


@router.get("/healthz", summary="The process is up", response_model=Health)
async def healthz() -> Health:
    """Liveness: answers 200 as long as the process serves requests; checks nothing else."""
    return Health()


async def _check(fn: Callable[[], None], timeout_s: float) -> str | None:
    """Run one blocking check off the event loop; None when it passed, else why it failed."""
    try:
        await asyncio.wait_for(run_in_threadpool(fn), timeout=timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency means "not ready"
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@router.get(
    "/readyz",
    summary="The store, the blob folder and the executor can take work",
    response_model=Ready,
    responses=errors.responses(503),
)
async def readyz(db: DbDep, blobs: BlobsDep, executor: ExecutorDep, settings: SettingsDep) -> Ready:
    """Readiness: pings the database, writes a blob, asks the executor; 503 names what failed."""
    checks = {"database": db.ping, "blobs": blobs.ping, "executor": executor.check}
    outcomes = await asyncio.gather(
        *(_check(fn, settings.readyz_timeout_s) for fn in checks.values())
    )
    failed = {name: why for name, why in zip(checks, outcomes, strict=True) if why is not None}
    if failed:
        raise ProblemError(
            "not-ready",
            "; ".join(f"{name}: {why}" for name, why in failed.items()),
            headers={"Retry-After": "5"},
        )
    return Ready(checks={name: "ok" for name in checks})


#: An excerpt of a fresh embedded server's answer after one GET /healthz (the histogram's
#: buckets and the *_created series left out).
METRICS_EXAMPLE = """\
# HELP lipwass_http_requests_total HTTP requests by method, route template and status code.
# TYPE lipwass_http_requests_total counter
lipwass_http_requests_total{method="GET",route="/healthz",status="200"} 1.0
# HELP lipwass_http_request_seconds HTTP request latency (until the response body ended), by \
method and route template.
# TYPE lipwass_http_request_seconds histogram
lipwass_http_request_seconds_count{method="GET",route="/healthz"} 1.0
lipwass_http_request_seconds_sum{method="GET",route="/healthz"} 0.01674336799987941
# HELP lipwass_upload_bytes_total Request body bytes received by POST /v1/datasets (this \
process, duplicates included).
# TYPE lipwass_upload_bytes_total counter
lipwass_upload_bytes_total 0.0
# HELP lipwass_jobs Estimate jobs in the store, by status.
# TYPE lipwass_jobs gauge
lipwass_jobs{status="queued"} 0.0
lipwass_jobs{status="running"} 0.0
lipwass_jobs{status="succeeded"} 0.0
"""


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE: {"example": METRICS_EXAMPLE}},
            "description": "Prometheus text format.",
        },
        **errors.responses(404),
    },
)
async def metrics(request: Request) -> Response:
    """Requests, latencies and upload bytes of this process; jobs and datasets from the store."""
    settings: Settings = request.app.state.settings
    if not settings.metrics_public:
        (await get_principal(request)).require("admin")
    registry: Metrics | None = getattr(request.app.state, "metrics", None)
    if registry is None:
        raise ProblemError("not-found", "Metrics are not enabled in this app.")
    body = await run_in_threadpool(registry.render)
    return Response(body, media_type=CONTENT_TYPE)
