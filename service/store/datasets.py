"""Queries on dataset rows: look up, insert once per content hash, delete when unused."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.store.db import Database
from service.store.models import DatasetRow, EstimateRow, JobStatus
from service.store.pages import RowPage, page

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


def get(db: Database, dataset_id: str) -> DatasetRow | None:
    with db.session() as s:
        return s.get(DatasetRow, dataset_id)


def by_sha(db: Database, sha256: str) -> DatasetRow | None:
    with db.session() as s:
        return s.execute(select(DatasetRow).where(DatasetRow.sha256 == sha256)).scalar_one_or_none()


def insert_once(db: Database, row: DatasetRow) -> tuple[DatasetRow, bool]:
    """Insert ``row`` unless a row with its sha256 exists: (the stored row, created)."""
    try:
        with db.session() as s:
            s.add(row)
    except IntegrityError:
        # The same data was uploaded concurrently and its row won the unique sha256.
        existing = by_sha(db, row.sha256)
        if existing is None:
            raise
        return existing, False
    return row, True


def list_page(
    db: Database, limit: int, offset: int, *, name: str | None = None, sha256: str | None = None
) -> RowPage[DatasetRow]:
    where = []
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
