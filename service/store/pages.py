"""Offset pagination of a table, newest first: the one paging rule of every list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, func, select

from service.store.db import Database
from service.store.models import DatasetRow, EstimateRow

Row = TypeVar("Row", DatasetRow, EstimateRow)


@dataclass(frozen=True)
class RowPage(Generic[Row]):
    """One page of rows, the number matching in all, and the offset of the next page."""

    rows: list[Row]
    total: int
    next_offset: int | None


def page(
    db: Database, model: type[Row], where: list[ColumnElement[Any]], limit: int, offset: int
) -> RowPage[Row]:
    """Rows of ``model`` matching ``where``, newest first (id breaks ties), one page of them."""
    with db.session() as s:
        total = s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
        rows = list(
            s.execute(
                select(model)
                .where(*where)
                .order_by(model.created_at.desc(), model.id.desc())
                .limit(limit)
                .offset(offset)
            ).scalars()
        )
    nxt = offset + len(rows)
    return RowPage(rows=rows, total=total, next_offset=nxt if nxt < total else None)
