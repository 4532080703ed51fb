"""Offset pagination of a table, newest first: the shared body of the list routes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from service.store import Database


def page(
    db: Database, model: Any, where: list[Any], limit: int, offset: int
) -> tuple[list[Any], int, int | None]:
    """(rows, total matching, next offset or None) of ``model`` filtered by ``where``."""
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
    return rows, total, nxt if nxt < total else None
