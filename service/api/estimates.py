"""Routes: estimates, the long-running jobs (submit, poll, follow, cancel, forget, use).

POST answers 202 + Location at once and hands the job id to the executor; everything else reads
the job row the worker keeps up to date. The result dict is the runner's (DESIGN.md section 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

import lipcore
from service.api import errors
from service.api.deps import BlobsDep, DbDep, ExecutorDep, SettingsDep
from service.api.errors import ProblemError
from service.api.estimate_models import (
    FINISHED,
    Estimate,
    EstimateList,
    EstimateRequest,
    EvaluateRequest,
    EvaluateResponse,
    Status,
)
from service.api.pagination import page
from service.blobs import BlobStore
from service.potentials import PotentialCache, evaluate
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow
from service.store import jobs as store_jobs

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
        status=row.status,  # type: ignore[arg-type]
        source=row.source_id,
        target=row.target_id,
        method=row.method,  # type: ignore[arg-type]
        crosscheck=row.crosscheck,  # type: ignore[arg-type]
        holdout=row.holdout,
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


def load_row(db: Database, estimate_id: str) -> EstimateRow | None:
    with db.session() as s:
        return s.get(EstimateRow, estimate_id)


def not_found(estimate_id: str) -> ProblemError:
    return ProblemError(
        404,
        "Estimate not found",
        f"No estimate with id {estimate_id!r}.",
        type="/problems/estimate-not-found",
    )


def existing_row(estimate_id: str, db: DbDep) -> EstimateRow:
    """The job row of the path's id, or a 404 problem (checked before any streaming starts)."""
    row = load_row(db, estimate_id)
    if row is None:
        raise not_found(estimate_id)
    return row


ExistingRow = Annotated[EstimateRow, Depends(existing_row)]


def status_headers(row: EstimateRow, retry_after_s: int) -> dict[str, str]:
    return {} if row.status in FINISHED else {"Retry-After": str(retry_after_s)}


def invalid(field: str, msg: str, title: str = "Invalid estimate request") -> ProblemError:
    """A 422 problem naming the offending body field."""
    return ProblemError(
        422,
        title,
        f"{field}: {msg}",
        type="/problems/validation",
        errors=[{"loc": ["body", *field.split(".")], "msg": msg, "type": "value_error"}],
    )


def conflict(title: str, detail: str, kind: str) -> ProblemError:
    return ProblemError(409, title, detail, type=f"/problems/{kind}")


def get_potential_cache(request: Request, settings: SettingsDep) -> PotentialCache:
    """The application's cache of loaded potentials (created on first use)."""
    cache = getattr(request.app.state, "potential_cache", None)
    if cache is None:
        cache = PotentialCache(settings.potential_cache_size)
        request.app.state.potential_cache = cache
    return cache


PotentialCacheDep = Annotated[PotentialCache, Depends(get_potential_cache)]


# -- validation of a submission ------------------------------------------------------------------
CONFIG_LIMITS = {
    "steps": "max_steps",
    "width": "max_width",
    "depth": "max_depth",
    "batch_size": "max_batch_size",
    "ortho_iters": "max_ortho_iters",
    "reproject_iters": "max_ortho_iters",
    "eval_chunk": "max_eval_chunk",
    "grad_samples": "max_eval_chunk",
}


def normalise(req: EstimateRequest, settings: Settings) -> dict[str, Any]:
    """The request's canonical form (hashable), its config checked against the limits."""
    try:
        config = lipcore.EstimatorConfig.from_dict(req.config)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        name = msg.split(":", 1)[0].removeprefix("config.") if msg.startswith("config") else ""
        raise invalid(f"config.{name}" if name and name != "config" else "config", msg) from exc
    for field, limit_name in CONFIG_LIMITS.items():
        value, limit = getattr(config, field), getattr(settings, limit_name)
        if value > limit:
            default = "" if field in req.config else " (the default; set a smaller one)"
            raise invalid(
                f"config.{field}", f"{value}{default} exceeds this server's limit of {limit}"
            )
    return {
        "source": req.source,
        "target": req.target,
        "method": req.method,
        "crosscheck": req.crosscheck,
        "holdout": float(req.holdout),
        "seed": int(req.seed),
        "config": config.to_dict(),
    }


def check_datasets(req: EstimateRequest, db: Database, settings: Settings) -> None:
    """Both datasets exist, share d, and fit the request (exact size limit, held-out split)."""
    with db.session() as s:
        src = s.get(DatasetRow, req.source)
        tgt = s.get(DatasetRow, req.target)
    if src is None:
        raise invalid("source", f"no dataset with id {req.source!r}", "Unknown dataset")
    if tgt is None:
        raise invalid("target", f"no dataset with id {req.target!r}", "Unknown dataset")
    if src.d != tgt.d:
        raise invalid(
            "target",
            f"dimension {tgt.d} differs from the source's {src.d}; both sets need the same d",
            "Dimension mismatch",
        )
    pairs = src.n * tgt.n
    too_large = src.d > 1 and pairs > settings.exact_max_pairs  # d = 1: closed form, any size
    if req.method == "exact" and too_large:
        raise invalid(
            "method",
            f"exact needs n*m = {pairs} cost entries, over this server's limit of "
            f"{settings.exact_max_pairs}; use method lipschitz or auto",
        )
    if req.method != "exact" and req.crosscheck == "always" and too_large:
        raise invalid(
            "crosscheck",
            f"the exact cross-check needs n*m = {pairs} cost entries, over this server's limit "
            f"of {settings.exact_max_pairs}; use crosscheck auto or never",
        )
    runs_exact_only = req.method == "exact" or (req.method == "auto" and not too_large)
    if req.holdout > 0 and not runs_exact_only:
        for name, n in (("source", src.n), ("target", tgt.n)):
            held = int(round(req.holdout * n))
            if n - held < 1:
                raise invalid(
                    "holdout",
                    f"holding out {req.holdout} of the {name}'s {n} samples leaves none to train "
                    "on; lower it (0 disables the held-out estimate)",
                )


def request_hash(canonical: dict[str, Any]) -> str:
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def replay(db: Database, key: str, digest: str) -> EstimateRow | None:
    """The job an earlier request with ``key`` created, or 409 if that request differed."""
    with db.session() as s:
        row = s.execute(select(EstimateRow).where(EstimateRow.idempotency_key == key)).scalar()
    if row is not None and row.request_hash != digest:
        raise conflict(
            "Idempotency-Key reused",
            f"The key {key!r} was used for a different request (job {row.id}); use a new key.",
            "idempotency-conflict",
        )
    return row


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
        },
        **errors.responses(409, 422),
    },
)
def submit(
    req: EstimateRequest,
    response: Response,
    db: DbDep,
    settings: SettingsDep,
    executor: ExecutorDep,
    idempotency_key: IdempotencyKey = None,
) -> Estimate:
    canonical = normalise(req, settings)
    digest = request_hash(canonical)
    # A replay answers with the original job even if its datasets have been deleted since.
    row = replay(db, idempotency_key, digest) if idempotency_key else None
    created = False
    if row is None:
        check_datasets(req, db, settings)
        row = EstimateRow(
            id="est_" + secrets.token_hex(12),
            status="queued",
            source_id=canonical["source"],
            target_id=canonical["target"],
            method=canonical["method"],
            crosscheck=canonical["crosscheck"],
            holdout=canonical["holdout"],
            seed=canonical["seed"],
            config=canonical["config"],
            request_hash=digest,
            idempotency_key=idempotency_key,
            attempt=0,
            cancel_requested=False,
        )
        try:
            with db.session() as s:
                s.add(row)
            created = True
        except IntegrityError:
            # Another request with the same key won the insert, or a dataset was just deleted.
            row = replay(db, idempotency_key, digest) if idempotency_key else None
            if row is None:
                check_datasets(req, db, settings)
                raise
    if created:
        log.info("estimate queued", extra={"job_id": row.id, "method": row.method})
        try:
            executor.submit(row.id)
        except Exception:  # the row is durable: the reaper re-dispatches queued jobs
            log.exception("executor.submit failed; the job stays queued", extra={"job_id": row.id})
    else:
        response.headers["Idempotent-Replayed"] = "true"
        row = load_row(db, row.id) or row
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
    db: DbDep,
    settings: SettingsDep,
    status: Annotated[Status | None, Query(description="Only jobs in this status.")] = None,
    dataset: Annotated[
        str | None, Query(max_length=40, description="Only jobs using this dataset (either side).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> EstimateList:
    where = []
    if status is not None:
        where.append(EstimateRow.status == status)
    if dataset is not None:
        where.append((EstimateRow.source_id == dataset) | (EstimateRow.target_id == dataset))
    rows, total, nxt = page(db, EstimateRow, where, limit, offset)
    return EstimateList(
        items=[to_model(r) for r in rows], total=total, limit=limit, offset=offset, next_offset=nxt
    )


@router.get(
    "/{estimate_id}",
    response_model=Estimate,
    summary="Get an estimate",
    responses={
        200: {
            "description": "The job; Retry-After (seconds) while it is queued or running.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        **errors.responses(404),
    },
)
async def get_estimate(estimate_id: str, db: DbDep, settings: SettingsDep) -> Response:
    # The route clients poll. A SQLite read (WAL: readers never wait on the writer) takes
    # ~0.2-0.5 ms, less than the thread-pool hop FastAPI would wrap around a sync route (measured:
    # 500 against 195 requests/s in-process); a networked database is still read off the loop.
    if db.local:
        row = load_row(db, estimate_id)
    else:
        row = await run_in_threadpool(load_row, db, estimate_id)
    if row is None:
        raise not_found(estimate_id)
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
    response_class=EventSourceResponse,
    summary="Follow an estimate (Server-Sent Events)",
    description="`progress` events (data: {step, total_steps, objective, elapsed_s}) while the "
    "job runs, then one `result` (succeeded) or `error` (failed, cancelled) event whose data is "
    "the estimate, and the stream ends. A finished job gives its final event at once.",
    responses=errors.responses(404),
)
async def events(
    row: ExistingRow, request: Request, db: DbDep, settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    deadline = time.monotonic() + settings.job_timeout_s
    last: dict[str, Any] | None = None
    estimate_id = row.id
    while True:
        if row.status in FINISHED:
            yield _final_event(row)
            return
        if row.progress and row.progress != last:
            last = row.progress
            step = str(row.progress.get("step"))
            yield ServerSentEvent(event="progress", data=row.progress, id=step)
        if await request.is_disconnected():
            return
        if time.monotonic() >= deadline:
            yield ServerSentEvent(comment="stream time limit reached; reconnect to follow on")
            return
        await anyio.sleep(settings.events_poll_s)
        fresh = await anyio.to_thread.run_sync(load_row, db, estimate_id)
        if fresh is None:  # deleted meanwhile
            yield ServerSentEvent(
                event="error",
                data={"id": estimate_id, "status": "deleted", "error": None},
            )
            return
        row = fresh


@router.post(
    "/{estimate_id}/cancel",
    status_code=202,
    response_model=Estimate,
    summary="Cancel an estimate",
    description="A queued job ends cancelled at once; a running one within a training step or "
    "two (its worker checks the flag).",
    responses=errors.responses(404, 409),
)
def cancel(row: ExistingRow, db: DbDep, executor: ExecutorDep, response: Response) -> Estimate:
    if row.status in FINISHED:
        raise conflict(
            "Estimate already finished",
            f"Estimate {row.id} is {row.status}; only queued or running jobs can be cancelled.",
            "estimate-finished",
        )
    after = store_jobs.request_cancel(db, row.id)
    if after is None:
        raise not_found(row.id)
    if after in ("succeeded", "failed"):
        raise conflict(
            "Estimate already finished",
            f"Estimate {row.id} {after} before the cancel arrived.",
            "estimate-finished",
        )
    try:
        executor.cancel(row.id)
    except Exception:  # the store's flag is what counts; the nudge is best effort
        log.exception("executor.cancel failed", extra={"job_id": row.id})
    log.info("estimate cancel requested", extra={"job_id": row.id, "status": after})
    fresh = load_row(db, row.id) or row
    response.headers["Location"] = f"{PREFIX}/{row.id}"
    return to_model(fresh)


@router.delete(
    "/{estimate_id}",
    status_code=204,
    summary="Forget a finished estimate (its row and potential)",
    responses={204: {"description": "Deleted."}, **errors.responses(404, 409)},
)
def delete_estimate(
    row: ExistingRow, db: DbDep, blobs: BlobsDep, cache: PotentialCacheDep
) -> Response:
    with db.session() as s:
        res = s.execute(
            delete(EstimateRow)
            .where(EstimateRow.id == row.id, EstimateRow.status.in_(sorted(FINISHED)))
            .execution_options(synchronize_session=False)
        )
    if res.rowcount != 1:
        now = load_row(db, row.id)
        if now is None:
            raise not_found(row.id)
        raise conflict(
            "Estimate still active",
            f"Estimate {row.id} is {now.status}; cancel it first, then delete it.",
            "estimate-active",
        )
    path = blobs.potential_path(row.id)
    cache.forget(path)
    blobs.delete_potential(row.id)
    log.info("estimate deleted", extra={"job_id": row.id})
    return Response(status_code=204)


def _potential_path(row: EstimateRow, blobs: BlobStore, settings: Settings) -> Path:
    """The potential file of a succeeded lipschitz job, else a 409 (not yet) or 404 (none)."""
    if row.status not in FINISHED:
        raise ProblemError(
            409,
            "Estimate not finished",
            f"Estimate {row.id} is {row.status}; its potential exists once it succeeded.",
            type="/problems/estimate-not-finished",
            headers={"Retry-After": str(settings.estimate_retry_after_s)},
        )
    path = blobs.potential_path(row.id)
    if row.status != "succeeded" or not path.exists():
        why = (
            f"it {row.status}"
            if row.status != "succeeded"
            else f"method {(row.result or {}).get('method', row.method)!r} fits no potential"
        )
        raise ProblemError(
            404,
            "No potential",
            f"Estimate {row.id} has no potential: {why}.",
            type="/problems/no-potential",
        )
    return path


@router.get(
    "/{estimate_id}/potential",
    response_class=FileResponse,
    summary="Download the fitted potential (safetensors)",
    description="Loadable without the service: `lipcore.load_potential(path)`; the architecture "
    "and certificate are in the file's metadata.",
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": "The safetensors file.",
        },
        **errors.responses(404, 409),
    },
)
def download_potential(row: ExistingRow, blobs: BlobsDep, settings: SettingsDep) -> FileResponse:
    path = _potential_path(row, blobs, settings)
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"{row.id}.safetensors"
    )


@router.post(
    "/{estimate_id}/evaluate",
    response_model=EvaluateResponse,
    response_model_exclude_none=True,
    summary="Evaluate the centred potential g = (f - c) / L (and its gradient)",
    responses=errors.responses(404, 409, 422),
)
def evaluate_potential(
    row: ExistingRow,
    body: EvaluateRequest,
    blobs: BlobsDep,
    settings: SettingsDep,
    cache: PotentialCacheDep,
) -> EvaluateResponse:
    k = len(body.points)
    if k > settings.max_evaluate_points:
        raise invalid(
            "points",
            f"{k} points exceed this server's limit of {settings.max_evaluate_points} per call",
            "Too many points",
        )
    path = _potential_path(row, blobs, settings)
    result = row.result or {}
    center, lip = result.get("potential_center"), result.get("lipschitz_constant")
    if center is None or not lip:
        raise ProblemError(
            404, "No potential", f"Estimate {row.id} has no certified potential to evaluate."
        )
    model = cache.get(path)
    d = next(m.in_features for m in model.modules() if hasattr(m, "in_features"))
    for i, p in enumerate(body.points):
        if len(p) != d:
            raise invalid(f"points.{i}", f"has length {len(p)}; the potential takes d = {d}")
    pts = np.asarray(body.points, dtype=np.float64).reshape(k, d)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise invalid(f"points.{int(np.argmax(bad))}", "contains a non-finite value")
    values, grads = evaluate(model, pts, float(center), float(lip), body.gradient)
    return EvaluateResponse(
        values=values.tolist(), gradients=None if grads is None else grads.tolist()
    )
