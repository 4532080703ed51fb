"""Routes: estimates, the long-running jobs (submit, poll, follow, cancel, forget, use).

POST answers 202 + Location at once and hands the job id to the executor; everything else reads
the job row the worker keeps up to date. The result dict is service.policy.result's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

import lipcore
from service import datasets as dataset_service
from service import estimates as service
from service.api import errors, links
from service.api.deps import (
    BlobsDep,
    Caller,
    DbDep,
    ExecutorDep,
    Reader,
    SettingsDep,
    Writer,
    reader,
    writer,
)
from service.api.estimate_models import (
    EVENTS_EXAMPLE,
    FINISHED,
    Estimate,
    EstimateList,
    EstimateRequest,
    EvaluateRequest,
    EvaluateResponse,
    Status,
)
from service.api.pages import PageQuery
from service.blobs import BlobStore
from service.potentials import PotentialCache, evaluate
from service.problems import ProblemError, invalid_field
from service.settings import Settings
from service.store import EstimateRow
from service.store import estimates as rows
from service.watch import Watcher

router = APIRouter(prefix="/v1/estimates", tags=["estimates"])
log = logging.getLogger("lipwass.api.estimates")

PREFIX = "/v1/estimates"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key + same body: the same job; same key + another body: 409.",
    ),
]


# -- helpers ---------------------------------------------------------------------------------------
def to_model(row: EstimateRow) -> Estimate:
    """The API view of a job row."""
    return Estimate(
        id=row.id,
        status=row.status,
        source=row.source_id,
        target=row.target_id,
        method=row.method,
        crosscheck=row.crosscheck,
        holdout=row.holdout,
        alpha=row.alpha,
        scale=row.scale,
        seed=row.seed,
        config=row.config or {},
        progress=row.progress or None,
        result=row.result,
        error=row.error,
        attempt=row.attempt,
        cancel_requested=bool(row.cancel_requested),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def existing_row(estimate_id: str, who: Caller, db: DbDep) -> EstimateRow:
    """The caller's job row of the path's id, or a 404 problem (before any streaming starts)."""
    return service.get(db, estimate_id, who.tenant)


ExistingRow = Annotated[EstimateRow, Depends(existing_row)]


def status_headers(row: EstimateRow, retry_after_s: int) -> dict[str, str]:
    return {} if row.status in FINISHED else {"Retry-After": str(retry_after_s)}


def get_potential_cache(request: Request, settings: SettingsDep) -> PotentialCache:
    """The application's cache of loaded potentials (created on first use)."""
    cache = getattr(request.app.state, "potential_cache", None)
    if cache is None:
        cache = PotentialCache(settings.potential_cache_size)
        request.app.state.potential_cache = cache
    return cache


PotentialCacheDep = Annotated[PotentialCache, Depends(get_potential_cache)]


# -- routes ----------------------------------------------------------------------------------------
@router.post(
    "",
    status_code=202,
    response_model=Estimate,
    summary="Submit an estimate job",
    responses={
        202: {
            "description": "Accepted: the job (new, or the one an earlier request with the same "
            "Idempotency-Key created). Follow Location.",
            "headers": {
                "Location": {"schema": {"type": "string"}},
                "Retry-After": {"schema": {"type": "integer"}},
                "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}},
            },
            "links": links.ESTIMATE_LINKS,
        },
        **errors.responses(400, 409, 413, 422),
    },
)
def submit_estimate(
    req: EstimateRequest,
    response: Response,
    who: Writer,
    db: DbDep,
    settings: SettingsDep,
    executor: ExecutorDep,
    idempotency_key: IdempotencyKey = None,
) -> Estimate:
    row, created = service.submit(req, db, settings, executor, idempotency_key, who.tenant)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"{PREFIX}/{row.id}"
    response.headers.update(status_headers(row, settings.estimate_retry_after_s))
    return to_model(row)


@router.get(
    "",
    response_model=EstimateList,
    summary="List estimates, newest first",
    responses=errors.responses(422),
)
def list_estimates(
    who: Reader,
    db: DbDep,
    paging: PageQuery,
    status: Annotated[Status | None, Query(description="Only jobs in this status.")] = None,
    dataset: Annotated[
        str | None, Query(max_length=40, description="Only jobs using this dataset (either side).")
    ] = None,
) -> EstimateList:
    got = rows.list_page(
        db, paging.limit, paging.offset, tenant=who.tenant, status=status, dataset=dataset
    )
    return EstimateList.of(got, paging, to_model)


@router.get(
    "/{estimate_id}",
    response_model=Estimate,
    summary="Get an estimate",
    responses={
        200: {
            "description": "The job; Retry-After (seconds) while it is queued or running.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        **errors.responses(404, 422),
    },
)
async def get_estimate(estimate_id: str, who: Reader, db: DbDep, settings: SettingsDep) -> Response:
    # The route clients poll. A SQLite read (WAL: readers never wait on the writer) takes
    # ~0.2-0.5 ms, less than the thread-pool hop FastAPI would wrap around a sync route (measured:
    # 500 against 195 requests/s in-process); a networked database is still read off the loop.
    if db.local:
        row = service.get(db, estimate_id, who.tenant)
    else:
        row = await run_in_threadpool(service.get, db, estimate_id, who.tenant)
    return Response(
        to_model(row).model_dump_json(),
        media_type="application/json",
        headers=status_headers(row, settings.estimate_retry_after_s),
    )


def _final_event(row: EstimateRow) -> ServerSentEvent:
    kind = "result" if row.status == "succeeded" else "error"
    return ServerSentEvent(event=kind, data=to_model(row).model_dump(mode="json"))


@router.get(
    "/{estimate_id}/events",
    dependencies=[Depends(reader)],
    response_class=EventSourceResponse,
    summary="Follow an estimate (Server-Sent Events)",
    description="`progress` events (data: {step, total_steps, objective, elapsed_s}) while the "
    "job runs, then one `result` (succeeded) or `error` (failed, cancelled) event whose data is "
    "the estimate, and the stream ends. A finished job gives its final event at once.",
    responses={
        200: {
            "description": "The event stream.",
            "content": {"text/event-stream": {"example": EVENTS_EXAMPLE}},
        },
        **errors.responses(404, 422),
    },
)
async def estimate_events(
    row: ExistingRow, request: Request, settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    deadline = time.monotonic() + settings.job_timeout_s
    last: dict[str, Any] | None = None
    watcher: Watcher = request.app.state.watcher
    async with watcher.watch(row.id) as sub:
        while True:
            if row.status in FINISHED:
                yield _final_event(row)
                return
            if row.progress and row.progress != last:
                last = row.progress
                step = str(row.progress.get("step"))
                yield ServerSentEvent(event="progress", data=row.progress, id=step)
            # No polling of our own: the watcher wakes us on a change, and the response ends
            # this generator when the client goes (sse-starlette listens for the disconnect).
            while not await sub.changed(timeout=max(0.0, deadline - time.monotonic())):
                yield ServerSentEvent(comment="stream time limit reached; reconnect to follow")
                return
            if sub.row is None:  # deleted meanwhile
                yield ServerSentEvent(
                    event="error", data={"id": row.id, "status": "deleted", "error": None}
                )
                return
            row = sub.row


@router.post(
    "/{estimate_id}/cancel",
    status_code=202,
    dependencies=[Depends(writer)],
    response_model=Estimate,
    summary="Cancel an estimate",
    description="A queued job ends cancelled at once; a running one within a training step or "
    "two (its worker checks the flag).",
    responses=errors.responses(404, 409, 422),
)
def cancel_estimate(
    row: ExistingRow, db: DbDep, executor: ExecutorDep, response: Response
) -> Estimate:
    fresh = service.cancel(row, db, executor)
    response.headers["Location"] = f"{PREFIX}/{row.id}"
    return to_model(fresh)


@router.delete(
    "/{estimate_id}",
    status_code=204,
    dependencies=[Depends(writer)],
    summary="Forget a finished estimate (its row and potential)",
    responses={204: {"description": "Deleted."}, **errors.responses(404, 409, 422)},
)
def delete_estimate(
    row: ExistingRow, db: DbDep, blobs: BlobsDep, cache: PotentialCacheDep
) -> Response:
    service.forget(row, db, blobs, cache)
    return Response(status_code=204)


@router.get(
    "/{estimate_id}/potential",
    dependencies=[Depends(reader)],
    response_class=FileResponse,
    summary="Download the fitted potential (safetensors)",
    description="Loadable without the service: `lipcore.load_potential(path)`; the architecture "
    "and certificate are in the file's metadata.",
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": "The safetensors file.",
        },
        **errors.responses(404, 409, 422),
    },
)
def download_potential(row: ExistingRow, blobs: BlobsDep, settings: SettingsDep) -> FileResponse:
    path = service.potential_path(row, blobs, settings)
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"{row.id}.safetensors"
    )


def evaluate_bound(max_points: int, d: int) -> int:
    """The most bytes an /evaluate body for dimension d may take: ``max_points`` points of d
    numbers at 48 bytes each (a float64's repr is at most 24 characters; the rest is room for
    separators and indentation), plus 4 KiB for the rest of the document."""
    return max_points * (48 * d + 8) + 4096


def evaluate_dims(row: ExistingRow, db: DbDep) -> int:
    """The dimension d of the estimate's datasets (before the body is read)."""
    return dataset_service.get(db, row.source_id, row.tenant).d


async def read_evaluate_body(request: Request, settings: SettingsDep, d: int) -> EvaluateRequest:
    """The /evaluate body, refused with a 413 before it is parsed (or even read) when it is
    longer than max_evaluate_points points of d numbers can be: Content-Length first, then a
    count while it arrives; only then is it parsed."""
    bound = evaluate_bound(settings.max_evaluate_points, d)

    def too_large(size: str) -> ProblemError:
        return ProblemError(
            "body-too-large",
            f"the body is {size} bytes; {settings.max_evaluate_points} points "
            f"(max_evaluate_points) of d = {d} numbers take at most {bound} bytes",
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bound:
        raise too_large(declared)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > bound:
            raise too_large(f"more than {bound}")
    # Each point opens one bracket (so does the list of them): more brackets than the limit
    # allows is refused before anything is parsed (no valid body has a bracket in a string).
    if raw.count(b"[") - 1 > settings.max_evaluate_points:
        raise invalid_field(
            "points",
            f"more than this server's limit of {settings.max_evaluate_points} points per call",
        )
    try:
        return EvaluateRequest.model_validate_json(bytes(raw))
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


_EVALUATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": EvaluateRequest.model_json_schema(),  # no nested models: inline
            }
        },
    }
}


@router.post(
    "/{estimate_id}/evaluate",
    dependencies=[Depends(reader)],
    response_model=EvaluateResponse,
    response_model_exclude_none=True,
    summary="Evaluate the centred potential g = (f - c) / L (and its gradient)",
    description=(
        "At most max_evaluate_points points of the datasets' dimension d. A body longer than "
        "such points can be (48 bytes per number) is refused with 413 before it is parsed."
    ),
    responses=errors.responses(400, 404, 409, 413, 422),
    openapi_extra=_EVALUATE_BODY,
)
async def evaluate_potential(
    request: Request,
    row: ExistingRow,
    d: Annotated[int, Depends(evaluate_dims)],
    blobs: BlobsDep,
    settings: SettingsDep,
    cache: PotentialCacheDep,
) -> EvaluateResponse:
    body = await read_evaluate_body(request, settings, d)
    return await run_in_threadpool(_evaluate, row, body, blobs, settings, cache)


def _evaluate(
    row: EstimateRow,
    body: EvaluateRequest,
    blobs: BlobStore,
    settings: Settings,
    cache: PotentialCache,
) -> EvaluateResponse:
    k = len(body.points)
    if k > settings.max_evaluate_points:
        raise invalid_field(
            "points",
            f"{k} points exceed this server's limit of {settings.max_evaluate_points} per call",
        )
    path = service.potential_path(row, blobs, settings)
    result = row.result or {}
    center, lip = result.get("potential_center"), result.get("lipschitz_constant")
    if center is None or not lip:
        raise ProblemError("no-potential", f"Estimate {row.id} has no certified potential.")
    model = cache.get(path)
    d = lipcore.input_dim(model)
    for i, p in enumerate(body.points):
        if len(p) != d:
            raise invalid_field(f"points.{i}", f"has length {len(p)}; the potential takes d = {d}")
    pts = np.asarray(body.points, dtype=np.float64).reshape(k, d)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise invalid_field(f"points.{int(np.argmax(bad))}", "contains a non-finite value")
    values, grads = evaluate(model, pts, float(center), float(lip), body.gradient)
    return EvaluateResponse(
        values=values.tolist(), gradients=None if grads is None else grads.tolist()
    )
