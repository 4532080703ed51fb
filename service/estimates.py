"""The estimate service: what the routes ask of estimates (submit, replay, read, cancel, forget,
use the potential), between the HTTP layer and the store. Raises ProblemError; knows no HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

from service import policy, quotas
from service.api.estimate_models import EstimateRequest
from service.blobs import BlobStore
from service.executors.base import Executor
from service.potentials import PotentialCache
from service.problems import ProblemError, invalid_field
from service.settings import Settings
from service.store import DEFAULT_TENANT, Database, EstimateRow, JobStatus, jobs
from service.store import datasets as dataset_rows
from service.store import estimates as rows

log = logging.getLogger("lipwass.estimates")
KEY_SEP = "\x1f"


def get(db: Database, estimate_id: str, tenant: str) -> EstimateRow:
    """The tenant's job row, or a 404 problem (another tenant's id is unknown here)."""
    row = rows.get(db, estimate_id)
    if row is None or row.tenant != tenant:
        raise not_found(estimate_id)
    return row


def not_found(estimate_id: str) -> ProblemError:
    return ProblemError("estimate-not-found", f"No estimate with id {estimate_id!r}.")


def canonical(req: EstimateRequest, settings: Settings) -> dict[str, Any]:
    """The request's canonical form (what its idempotency hash covers), config checked."""
    try:
        config = policy.check_config(req.config, policy.Limits.from_settings(settings))
    except policy.PolicyError as exc:
        raise invalid_field(exc.field, exc.detail) from None
    return {
        "source": req.source,
        "target": req.target,
        "method": req.method,
        "crosscheck": req.crosscheck,
        "holdout": float(req.holdout),
        "seed": int(req.seed),
        "config": config.to_dict(),
        # Newer fields join the hashed form only when not the default (keys of older requests
        # still match).
        **({"alpha": float(req.alpha)} if req.alpha != 0.05 else {}),
        **({"match_columns": req.match_columns} if req.match_columns != "names" else {}),
        **({"scale": req.scale} if req.scale != "none" else {}),
    }


def request_hash(canonical_form: dict[str, Any]) -> str:
    blob = json.dumps(canonical_form, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_plan(req: EstimateRequest, db: Database, settings: Settings, tenant: str) -> policy.Plan:
    """Both datasets are the tenant's and share d, the policy accepts the request for their
    sizes, and its memory estimate is within max_job_memory_bytes."""
    src, tgt = dataset_rows.get(db, req.source), dataset_rows.get(db, req.target)
    if src is None or src.tenant != tenant:
        raise invalid_field("source", f"no dataset with id {req.source!r}")
    if tgt is None or tgt.tenant != tenant:
        raise invalid_field("target", f"no dataset with id {req.target!r}")
    if src.d != tgt.d:
        raise invalid_field(
            "target",
            f"dimension {tgt.d} differs from the source's {src.d}; both sets need the same d",
        )
    named = req.match_columns == "names" and _named(src.columns) and _named(tgt.columns)
    if named and src.columns != tgt.columns:
        raise invalid_field(
            "target",
            f"its columns {tgt.columns} are not the source's {src.columns} (same names in the "
            'same order); upload them alike, or send "match_columns": "position"',
        )
    try:
        chosen = policy.plan(
            method=req.method,
            crosscheck=req.crosscheck,
            n=src.n,
            m=tgt.n,
            d=src.d,
            holdout=float(req.holdout),
            config=req.config,
            limits=policy.Limits.from_settings(settings),
        )
    except policy.PolicyError as exc:
        raise invalid_field(exc.field, exc.detail) from None
    try:
        policy.check_memory(chosen, src.n, tgt.n, src.d, settings.job_memory_limit)
    except policy.PolicyError as exc:
        raise ProblemError(
            "job-too-large",
            exc.detail,
            errors=[{"loc": ["body", *exc.field.split(".")], "msg": exc.detail}],
        ) from None
    return chosen


def _named(columns: list[str] | None) -> bool:
    """Whether a dataset came with column names (not the x0 ... x{d-1} every unnamed one has)."""
    return bool(columns) and columns != [f"x{j}" for j in range(len(columns or []))]


def stored_key(tenant: str, key: str) -> str:
    """An Idempotency-Key as stored: one tenant's key never meets another's."""
    return f"{tenant}{KEY_SEP}{key}"


def replay(db: Database, tenant: str, key: str, digest: str) -> EstimateRow | None:
    """The job an earlier request of the tenant with ``key`` created, or 409 if it differed."""
    row = rows.by_idempotency_key(db, stored_key(tenant, key))
    if row is not None and row.request_hash != digest:
        raise ProblemError(
            "idempotency-conflict",
            f"The key {key!r} was used for a different request (job {row.id}); use a new key.",
        )
    return row


def submit(
    req: EstimateRequest,
    db: Database,
    settings: Settings,
    executor: Executor,
    idempotency_key: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> tuple[EstimateRow, bool]:
    """Create the job (or find the one the same Idempotency-Key created): (row, created).

    A replay answers with the original job even if its datasets have been deleted since. A
    tenant with max_active_jobs queued or running gets 429.
    """
    form = canonical(req, settings)
    digest = request_hash(form)
    row = replay(db, tenant, idempotency_key, digest) if idempotency_key else None
    if row is not None:
        return rows.get(db, row.id) or row, False
    check_plan(req, db, settings, tenant)
    quotas.check_active_jobs(db, settings, tenant)
    row = EstimateRow(
        id="est_" + secrets.token_hex(12),
        tenant=tenant,
        status=JobStatus.queued.value,
        source_id=form["source"],
        target_id=form["target"],
        method=form["method"],
        crosscheck=form["crosscheck"],
        holdout=form["holdout"],
        alpha=form.get("alpha", 0.05),
        scale=form.get("scale", "none"),
        seed=form["seed"],
        config=form["config"],
        request_hash=digest,
        idempotency_key=stored_key(tenant, idempotency_key) if idempotency_key else None,
        attempt=0,
        cancel_requested=False,
    )
    if not rows.insert(db, row):
        # Another request with the same key won the insert, or a dataset was just deleted.
        won = replay(db, tenant, idempotency_key, digest) if idempotency_key else None
        if won is None:
            check_plan(req, db, settings, tenant)
            raise RuntimeError(f"inserting estimate {row.id} failed for no known reason")
        return rows.get(db, won.id) or won, False
    log.info("estimate queued", extra={"job_id": row.id, "method": row.method})
    try:
        executor.submit(row.id)
    except Exception:  # the row is durable: the reaper re-dispatches queued jobs
        log.exception("executor.submit failed; the job stays queued", extra={"job_id": row.id})
    return row, True


def cancel(row: EstimateRow, db: Database, executor: Executor) -> EstimateRow:
    """Flag the job cancelled (a queued one ends at once); 409 when it already finished."""
    if JobStatus(row.status).finished:
        raise ProblemError(
            "estimate-finished",
            f"Estimate {row.id} is {row.status}; only queued or running jobs can be cancelled.",
        )
    after = jobs.request_cancel(db, row.id)
    if after is None:
        raise not_found(row.id)
    if after in ("succeeded", "failed"):
        raise ProblemError("estimate-finished", f"Estimate {row.id} {after} before the cancel.")
    try:
        executor.cancel(row.id)
    except Exception:  # the store's flag is what counts; the nudge is best effort
        log.exception("executor.cancel failed", extra={"job_id": row.id})
    log.info("estimate cancel requested", extra={"job_id": row.id, "status": after})
    return rows.get(db, row.id) or row


def forget(row: EstimateRow, db: Database, blobs: BlobStore, cache: PotentialCache) -> None:
    """Delete a finished job's row and potential; 409 while it is queued or running."""
    if not rows.delete_finished(db, row.id):
        now = rows.get(db, row.id)
        if now is None:
            raise not_found(row.id)
        raise ProblemError(
            "estimate-active",
            f"Estimate {row.id} is {now.status}; cancel it first, then delete it.",
        )
    cache.forget(blobs.potential_path(row.id))
    blobs.delete_potential(row.id)
    log.info("estimate deleted", extra={"job_id": row.id})


def potential_path(row: EstimateRow, blobs: BlobStore, settings: Settings) -> Path:
    """The potential file of a succeeded lipschitz job, else a 409 (not yet) or 404 (none)."""
    if not JobStatus(row.status).finished:
        raise ProblemError(
            "estimate-not-finished",
            f"Estimate {row.id} is {row.status}; its potential exists once it succeeded.",
            headers={"Retry-After": str(settings.estimate_retry_after_s)},
        )
    path = blobs.potential_path(row.id)
    if row.status != JobStatus.succeeded.value or not path.exists():
        why = (
            f"it {row.status}"
            if row.status != JobStatus.succeeded.value
            else f"method {(row.result or {}).get('method', row.method)!r} fits no potential"
        )
        raise ProblemError("no-potential", f"Estimate {row.id} has no potential: {why}.")
    return path
