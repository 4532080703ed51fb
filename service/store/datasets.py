"""Queries on dataset rows: look up, insert once per tenant and content hash, delete when
unused. Two tenants' rows of the same content share its files."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from service.store.db import Database
from service.store.models import DatasetRow, EstimateRow, JobStatus
from service.store.pages import RowPage, page

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


def get(db: Database, dataset_id: str) -> DatasetRow | None:
    with db.session() as s:
        return s.get(DatasetRow, dataset_id)


def by_sha(db: Database, sha256: str, tenant: str) -> DatasetRow | None:
    """The tenant's row of this content."""
    with db.session() as s:
        q = select(DatasetRow).where(DatasetRow.sha256 == sha256, DatasetRow.tenant == tenant)
        return s.execute(q).scalar_one_or_none()


def content_used(db: Database, sha256: str) -> bool:
    """Whether any tenant's row still points at this content's files."""
    with db.session() as s:
        q = select(DatasetRow.id).where(DatasetRow.sha256 == sha256).limit(1)
        return s.execute(q).first() is not None


def stored_bytes(db: Database, tenant: str) -> int:
    """The bytes of the tenant's datasets (each counted, even where tenants share files)."""
    with db.session() as s:
        q = select(func.coalesce(func.sum(DatasetRow.bytes), 0)).where(DatasetRow.tenant == tenant)
        return int(s.execute(q).scalar_one())


def insert_once(db: Database, row: DatasetRow) -> tuple[DatasetRow, bool]:
    """Insert ``row`` unless its tenant has a row of its sha256: (the stored row, created)."""
    try:
        with db.session() as s:
            s.add(row)
    except IntegrityError:
        # The same data was uploaded concurrently and its row won the unique (tenant, sha256).
        existing = by_sha(db, row.sha256, row.tenant)
        if existing is None:
            raise
        return existing, False
    return row, True


def list_page(
    db: Database,
    limit: int,
    offset: int,
    *,
    tenant: str,
    name: str | None = None,
    sha256: str | None = None,
) -> RowPage[DatasetRow]:
    where = [DatasetRow.tenant == tenant]
    if name is not None:
        where.append(DatasetRow.name == name)
    if sha256 is not None:
        where.append(DatasetRow.sha256 == sha256)
    return page(db, DatasetRow, where, limit, offset)


@dataclass(frozen=True)
class Deletion:
    """What deleting a dataset did: ``sha256`` of the deleted row (None: not found), or the
    estimates that still use it (active: queued or running; finished: others) and kept it."""

    sha256: str | None = None
    active: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    raced: bool = False  # an estimate took it between the check and the delete

    @property
    def deleted(self) -> bool:
        return self.sha256 is not None


def delete_unused(db: Database, dataset_id: str) -> Deletion:
    """Delete the row unless an estimate refers to it (the foreign key guards the race)."""
    uses = (EstimateRow.source_id == dataset_id) | (EstimateRow.target_id == dataset_id)
    try:
        with db.session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                return Deletion()
            users = s.execute(select(EstimateRow.id, EstimateRow.status).where(uses)).all()
            if users:
                return Deletion(
                    active=tuple(i for i, st in users if st in ACTIVE),
                    finished=tuple(i for i, st in users if st not in ACTIVE),
                )
            sha = row.sha256
            s.delete(row)
    except IntegrityError:
        return Deletion(raced=True)
    return Deletion(sha256=sha)
