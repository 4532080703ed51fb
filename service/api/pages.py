"""One page of a list resource, and the one paging rule every list route takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Self, TypeVar

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, Field

from service.api.deps import SettingsDep
from service.problems import ProblemError
from service.store.pages import RowPage

Item = TypeVar("Item", bound=BaseModel)

DEFAULT_LIMIT = 50
MAX_PAGE_CEILING = 100_000  # max_page_size may not exceed it (settings)


class Page(BaseModel, Generic[Item]):
    """One page of items, newest first; follow ``next_offset`` for the next one."""

    items: list[Item] = Field(description="This page's items, newest first.")
    total: int = Field(description="Items matching the filter, on all pages.")
    limit: int = Field(description="The page size asked for.")
    offset: int = Field(description="Items skipped before this page.")
    next_offset: int | None = Field(None, description="Offset of the next page; null at the end.")

    @classmethod
    def of(cls, rows: RowPage[Any], paging: Paging, convert: Callable[[Any], Item]) -> Self:
        return cls(
            items=[convert(r) for r in rows.rows],
            total=rows.total,
            limit=paging.limit,
            offset=paging.offset,
            next_offset=rows.next_offset,
        )


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    settings: SettingsDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_CEILING, description="Page size (at most max_page_size).")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")] = 0,
) -> Paging:
    """``?limit=&offset=``, the limit bounded by the server's ``max_page_size``."""
    if limit > settings.max_page_size:
        raise ProblemError(
            "validation",
            f"limit {limit} is over this server's page size limit of {settings.max_page_size}",
            errors=[{"loc": ["query", "limit"], "msg": "over max_page_size", "type": "too_big"}],
        )
    return Paging(limit=limit, offset=offset)


PageQuery = Annotated[Paging, Depends(paging)]


def declare_page_limit(app: FastAPI, max_page_size: int) -> None:
    """Make the OpenAPI document state this server's ``limit`` bound (a setting, so it cannot
    be written into the route's declaration): clients and fuzzers then send only valid pages."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for op in operations.values():
                    for param in op.get("parameters", []):
                        if param.get("in") == "query" and param.get("name") == "limit":
                            param["schema"]["maximum"] = max_page_size
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
