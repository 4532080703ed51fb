"""Queries on estimate rows outside the job state machine (store.jobs): read, insert, list,
forget a finished one."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from service.store.db import Database, rowcount
from service.store.models import EstimateRow, JobStatus
from service.store.pages import RowPage, page

FINISHED = tuple(s.value for s in JobStatus if s.finished)


def get(db: Database, estimate_id: str) -> EstimateRow | None:
    with db.session() as s:
        return s.get(EstimateRow, estimate_id)


def get_many(db: Database, ids: list[str]) -> dict[str, EstimateRow]:
    """The rows of ``ids`` that exist, by id, in one query."""
    with db.session() as s:
        found = s.execute(select(EstimateRow).where(EstimateRow.id.in_(ids))).scalars()
        return {row.id: row for row in found}


def by_idempotency_key(db: Database, key: str) -> EstimateRow | None:
    with db.session() as s:
        return s.execute(select(EstimateRow).where(EstimateRow.idempotency_key == key)).scalar()


def insert(db: Database, row: EstimateRow) -> bool:
    """Insert a new job row; False when a constraint refused it (a concurrent request with the
    same idempotency key won, or a dataset it names was just deleted)."""
    try:
        with db.session() as s:
            s.add(row)
    except IntegrityError:
        return False
    return True


def list_page(
    db: Database,
    limit: int,
    offset: int,
    *,
    tenant: str,
    status: str | None = None,
    dataset: str | None = None,
) -> RowPage[EstimateRow]:
    where = [EstimateRow.tenant == tenant]
    if status is not None:
        where.append(EstimateRow.status == status)
    if dataset is not None:
        where.append((EstimateRow.source_id == dataset) | (EstimateRow.target_id == dataset))
    return page(db, EstimateRow, where, limit, offset)


def active_count(db: Database, tenant: str) -> int:
    """The tenant's queued and running jobs."""
    active = (JobStatus.queued.value, JobStatus.running.value)
    with db.session() as s:
        q = (
            select(func.count())
            .select_from(EstimateRow)
            .where(EstimateRow.tenant == tenant, EstimateRow.status.in_(active))
        )
        return int(s.execute(q).scalar_one())


def delete_finished(db: Database, estimate_id: str) -> bool:
    """Delete the row if its job has finished; False if it is missing or still active."""
    with db.session() as s:
        res = s.execute(
            delete(EstimateRow)
            .where(EstimateRow.id == estimate_id, EstimateRow.status.in_(FINISHED))
            .execution_options(synchronize_session=False)
        )
    return rowcount(res) == 1
