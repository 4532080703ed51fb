"""The job lifecycle as conditional updates: every transition names the state it expects.

Two workers (or a worker and the reaper) can race on any of these safely: an UPDATE ... WHERE
that matched no row means someone else won. Results are written with compare-and-set on
(job id, attempt), so a worker that lost its lease can never overwrite the newer attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.store.db import Database, rowcount
from service.store.models import EstimateRow, JobStatus, utcnow

RUNNING = JobStatus.running.value
QUEUED = JobStatus.queued.value


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of one job."""

    job_id: str
    attempt: int
    owner: str


def claim(db: Database, job_id: str, owner: str, lease_s: float, max_attempts: int) -> Claim | None:
    """Take a queued job (or one whose lease expired) for ``owner``; None if someone else has it."""
    now = utcnow()
    with db.session() as s:
        res = s.execute(
            update(EstimateRow)
            .where(
                EstimateRow.id == job_id,
                EstimateRow.attempt < max_attempts,
                EstimateRow.cancel_requested.is_(False),
                or_(
                    EstimateRow.status == QUEUED,
                    (EstimateRow.status == RUNNING) & (EstimateRow.lease_expires_at < now),
                ),
            )
            .values(
                status=RUNNING,
                attempt=EstimateRow.attempt + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) != 1:
            return None
        attempt = s.execute(
            select(EstimateRow.attempt).where(EstimateRow.id == job_id)
        ).scalar_one()
    return Claim(job_id, attempt, owner)


def claimable(db: Database, job_id: str) -> bool:
    """Whether a claim of ``job_id`` could succeed now: it is queued, or running with no live
    lease (its worker died). An executor asks before it starts a process for the job."""
    with db.session() as s:
        r = s.execute(
            select(EstimateRow.status, EstimateRow.lease_expires_at).where(EstimateRow.id == job_id)
        ).first()
    if r is None:
        return False
    status, lease = r
    if status == QUEUED:
        return True
    return status == RUNNING and (lease is None or lease < utcnow())


def held_by(db: Database, job_id: str, owner: str) -> Claim | None:
    """The running attempt of ``job_id`` while ``owner`` holds its lease; None once the job ended
    or another worker took it (the watchdogs ask this of a computation they cannot stop)."""
    with db.session() as s:
        r = s.execute(
            select(EstimateRow.attempt).where(
                EstimateRow.id == job_id,
                EstimateRow.status == RUNNING,
                EstimateRow.lease_owner == owner,
            )
        ).first()
    return None if r is None else Claim(job_id, r.attempt, owner)


def expire_lease(db: Database, job_id: str, owner: str) -> bool:
    """End ``owner``'s lease on running ``job_id`` now, so the reaper re-queues the job at its
    next pass (a process stopped with its server). False if ``owner`` no longer held it."""
    with db.session() as s:
        res = s.execute(
            update(EstimateRow)
            .where(
                EstimateRow.id == job_id,
                EstimateRow.status == RUNNING,
                EstimateRow.lease_owner == owner,
            )
            .values(lease_expires_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return rowcount(res) == 1


def _set_if_current(s: Session, c: Claim, values: dict[str, Any]) -> bool:
    """The compare-and-set every worker write goes through: update the row only while attempt
    ``c`` is the current, running one. False when someone else has it now."""
    res = s.execute(
        update(EstimateRow)
        .where(
            EstimateRow.id == c.job_id,
            EstimateRow.attempt == c.attempt,
            EstimateRow.status == RUNNING,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rowcount(res) == 1


def heartbeat(
    db: Database,
    c: Claim,
    lease_s: float,
    progress: dict[str, Any] | None = None,
    history: list | None = None,
) -> tuple[bool, bool]:
    """Renew the lease (and store progress). Returns (still ours, cancel requested)."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "updated_at": now,
    }
    if progress is not None:
        values["progress"] = progress
    if history is not None:
        values["history"] = history
    with db.session() as s:
        if not _set_if_current(s, c, values):
            return False, False
        cancel = s.execute(
            select(EstimateRow.cancel_requested).where(EstimateRow.id == c.job_id)
        ).scalar_one()
    return True, bool(cancel)


def finish(
    db: Database,
    c: Claim,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    history: list | None = None,
) -> bool:
    """Write the outcome of attempt ``c`` once; False if that attempt is no longer current."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": status.value,
        "result": result,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if history is not None:
        values["history"] = history
    with db.session() as s:
        return _set_if_current(s, c, values)


def request_cancel(db: Database, job_id: str) -> str | None:
    """Cancel a job: a queued one ends now, a running one is flagged for its worker.

    Returns the status after the call, or None if the job does not exist.
    """
    now = utcnow()
    with db.session() as s:
        s.execute(
            update(EstimateRow)
            .where(EstimateRow.id == job_id, EstimateRow.status == QUEUED)
            .values(
                status=JobStatus.cancelled.value,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        s.execute(
            update(EstimateRow)
            .where(EstimateRow.id == job_id, EstimateRow.status == RUNNING)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return s.execute(select(EstimateRow.status).where(EstimateRow.id == job_id)).scalar()


@dataclass(frozen=True)
class ReapReport:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]


def reap(db: Database, max_attempts: int, now: datetime | None = None) -> ReapReport:
    """Re-queue running jobs whose lease expired; fail those out of attempts.

    The caller hands the re-queued ids to its executor again. Queued jobs are not touched here:
    see :func:`queued_ids` for re-dispatching those after a broker loss.
    """
    now = now or utcnow()
    requeued: list[str] = []
    failed: list[str] = []
    cancelled: list[str] = []
    with db.session() as s:
        rows = s.execute(
            select(EstimateRow.id, EstimateRow.attempt, EstimateRow.cancel_requested).where(
                EstimateRow.status == RUNNING, EstimateRow.lease_expires_at < now
            )
        ).all()
    for job_id, attempt, cancel in rows:
        expired = (
            (EstimateRow.id == job_id)
            & (EstimateRow.attempt == attempt)
            & (EstimateRow.status == RUNNING)
            & (EstimateRow.lease_expires_at < now)
        )
        with db.session() as s:
            if cancel:
                values: dict[str, Any] = {"status": JobStatus.cancelled.value, "finished_at": now}
                bucket = cancelled
            elif attempt >= max_attempts:
                values = {
                    "status": JobStatus.failed.value,
                    "finished_at": now,
                    "error": {
                        "type": "attempts_exhausted",
                        "title": "The job's worker died too many times",
                        "detail": f"{attempt} attempts, each lost its worker (lease expired).",
                    },
                }
                bucket = failed
            else:
                values = {"status": QUEUED, "lease_owner": None}
                bucket = requeued
            res = s.execute(
                update(EstimateRow)
                .where(expired)
                .values(updated_at=now, lease_expires_at=None, **values)
                .execution_options(synchronize_session=False)
            )
            if rowcount(res) == 1:
                bucket.append(job_id)
    return ReapReport(requeued, failed, cancelled)


def queued_ids(db: Database, older_than_s: float = 0.0) -> list[str]:
    """Ids of queued jobs (created at least ``older_than_s`` ago), oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as s:
        return list(
            s.execute(
                select(EstimateRow.id)
                .where(EstimateRow.status == QUEUED, EstimateRow.updated_at <= cutoff)
                .order_by(EstimateRow.created_at)
            ).scalars()
        )
