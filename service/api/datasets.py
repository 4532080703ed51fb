"""Routes: datasets. Uploads are streamed to the blob volume, validated, canonicalised, hashed.

``POST /v1/datasets`` never holds the body in memory: its chunks go to a temporary file next to
the blobs through an :class:`~service.ingest.stream.UploadSink` (a worker thread writes, flushes
and, for ``.npy``, hashes and checks the data as it arrives), with a 413 as soon as the count
passes the limit and a 4xx as soon as a ``.npy`` header is refused. The file is then parsed and
converted to the canonical ``.npy`` in bounded chunks (``service.ingest``) off the event loop; a
canonical ``.npy`` upload is moved into the store as it is. The same data sent twice, in any
format, is one dataset (200 with the existing one instead of 201). Nothing is implicit: the
feature columns (``?columns=``, ``?exclude=``), the weights (``?weights=``) and the CSV header
and delimiter are query options; column names are kept and part of the dataset's identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service import datasets as service
from service import ingest, quotas
from service.api import errors, links
from service.api.deps import BlobsDep, DbDep, Reader, SettingsDep, Writer
from service.api.pages import Page, PageQuery
from service.ingest.stream import UploadSink
from service.problems import ProblemError
from service.settings import Settings
from service.store import DatasetRow
from service.store import datasets as rows

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
log = logging.getLogger("lipwass.api.datasets")


#: Two datasets as the routes answer them: a CSV upload with a header, and a JSON upload
#: without column names (validated against the model in tests/service/test_openapi_docs.py).
#: No null member: FastAPI drops them from the OpenAPI document (fastapi/fastapi#5559).
DATASET_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        "id": "ds_54ae81222061727ac390c18f",
        "name": "before",
        "n": 2000,
        "d": 2,
        "dtype": "float64",
        "weighted": False,
        "columns": ["u", "v"],
        "sha256": "952394d888b2296c8fdf2f3dd1519e502c1ea26c6dd7f21d44bdd9c6ee46adf0",
        "bytes": 32000,
        "created_at": "2026-12-03T12:16:02.671028Z",
    },
    {
        "id": "ds_6e785a40406bc19ac9188b0f",
        "name": "toy",
        "n": 3,
        "d": 2,
        "dtype": "float64",
        "weighted": False,
        "columns": ["x0", "x1"],
        "sha256": "a824c1b8a36315a6804462c5c2c214ce7aa54384b169ee82157b0e3b57611051",
        "bytes": 48,
        "created_at": "2026-12-03T12:24:09.346295Z",
    },
]


class Dataset(BaseModel):
    """A stored dataset: n samples in d dimensions, optionally weighted (weights sum to 1)."""

    model_config = ConfigDict(json_schema_extra={"examples": DATASET_EXAMPLES})

    id: str = Field(description="Opaque id, prefixed ds_.")
    name: str | None = Field(description="The ?name= given at the first upload of this data.")
    n: int = Field(description="Number of samples (rows).")
    d: int = Field(description="Dimension (columns).")
    dtype: Literal["float32", "float64"] = Field(description="Stored float type.")
    weighted: bool = Field(description="Whether weights were uploaded (else uniform).")
    columns: list[str] = Field(
        description=(
            "The d feature column names, in order: the CSV header, the Arrow/Parquet field "
            'names, the JSON "columns"; x0 … x{d-1} where the upload names none (.npy, a '
            "headerless CSV). Part of the dataset's identity with the numbers and weights."
        )
    )
    sha256: str = Field(
        description="Canonical hash (hex) of dtype, shape, samples, weights and column names "
        "(unless x0 … x{d-1}): the same data in any format has the same hash (?sha256= of "
        "GET /v1/datasets finds it before an upload)."
    )
    bytes: int = Field(description="Stored size: samples, plus 8 bytes per sample if weighted.")
    created_at: datetime = Field(description="When this data was first uploaded (UTC).")


class DatasetList(Page[Dataset]):
    """One page of datasets, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": DATASET_EXAMPLES[:1],
                    "total": 2,
                    "limit": 1,
                    "offset": 1,
                    "next_offset": None,
                }
            ]
        }
    )


def to_model(row: DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        n=row.n,
        d=row.d,
        dtype=row.dtype,
        weighted=row.weighted,
        columns=service.columns(row),
        sha256=row.sha256,
        bytes=row.bytes,
        created_at=row.created_at,
    )


def _body_limit(request: Request, fmt: ingest.Format, settings: Settings) -> int:
    """The byte limit of this body; 413 at once when Content-Length already says it is over."""
    limit = settings.max_body_bytes
    what = "upload"
    if fmt.text:
        limit = min(limit, settings.max_json_bytes)
        what = f"{fmt.name.upper()} upload"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise ProblemError("malformed-request", f"invalid Content-Length {declared[:40]!r}")
        if length > limit:
            raise service.problem(
                ingest.too_large(f"the {what} is {length} bytes; the limit is {limit} bytes")
            )
    return limit


def _fail_early(sink: UploadSink, limit: int) -> None:
    """Stop a .npy upload whose header is already known to be refused (or too large)."""
    digest = sink.digest
    if digest is None:
        return
    if digest.failure is not None:
        raise service.problem(digest.failure)
    if digest.announced is not None and digest.announced > limit:
        detail = f"the .npy header announces {digest.announced} bytes; the limit is {limit} bytes"
        raise service.problem(ingest.too_large(detail))


async def _receive(request: Request, sink: UploadSink, limit: int, fmt: ingest.Format) -> int:
    """Stream the body into ``sink``, counting; 413 as soon as the count passes ``limit``."""
    try:
        async for chunk in request.stream():
            if sink.total + len(chunk) > limit:
                raise service.problem(
                    ingest.too_large(
                        f"the {fmt.name} upload is more than the limit of {limit} bytes"
                    )
                )
            await sink.write(chunk)
            _fail_early(sink, limit)
        await sink.finish()
        _fail_early(sink, limit)
    except ClientDisconnect:
        raise ProblemError(
            "malformed-request", "the client disconnected during the upload"
        ) from None
    return sink.total


def _discard_later(path: Path) -> None:
    """Remove a left-over upload file off the event loop (unlinking GBs takes a while).

    Renamed first (instant), so that ``temp_path``'s own clean-up finds nothing to do; a crash
    before the removal leaves it to the start-up sweep of temporary files.
    """
    if not path.exists():  # moved into the store
        return
    doomed = path.with_name(path.name + ".discard")
    try:
        os.replace(path, doomed)
    except OSError:
        return
    asyncio.get_running_loop().run_in_executor(None, functools.partial(doomed.unlink, True))


_BODY = {"type": "string", "format": "binary"}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The samples, in one of five formats chosen by Content-Type.",
        "content": {
            "application/octet-stream": {"schema": _BODY},
            "application/x-npy": {"schema": _BODY},
            "application/vnd.apache.arrow.stream": {"schema": _BODY},
            "application/vnd.apache.parquet": {"schema": _BODY},
            "text/csv": {
                # The file's bytes (its text is parsed as CSV: "0.0" is a one-cell table).
                "schema": _BODY,
                "example": "u,v\n0.5,1.0\n1.5,-2.0\n",
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["samples"],
                    "properties": {
                        "samples": {
                            "type": "array",
                            "minItems": 1,
                            "description": "n rows of d numbers each (every row the same d).",
                            "items": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "number"},
                            },
                        },
                        "weights": {
                            "type": "array",
                            "description": "n non-negative weights with a positive sum.",
                            "items": {"type": "number", "minimum": 0},
                        },
                        "columns": {
                            "type": "array",
                            "description": "d unique column names (default x0 … x{d-1}).",
                            "items": {"type": "string", "minLength": 1},
                        },
                    },
                    "additionalProperties": False,
                },
                "example": {"samples": [[0.0, 1.0], [2.0, 3.5], [-1.0, 0.25]]},
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=Dataset,
    summary="Upload a dataset (.npy, Arrow IPC stream, Parquet, CSV or JSON)",
    description=(
        "`.npy` (`application/octet-stream` or `application/x-npy`; float16/32/64, C order, "
        "1-D or 2-D; columns x0 … x{d-1}), Arrow IPC stream "
        "(`application/vnd.apache.arrow.stream`) or Parquet (`application/vnd.apache.parquet`; "
        "numeric columns, no nulls), CSV (`text/csv`; numeric columns; header and delimiter "
        'per `?header=` and `?delimiter=`) or JSON (`{"samples": [[...]], "weights": [...], '
        '"columns": [...]}`). Nothing is implicit: every column is a feature unless '
        "`?columns=` picks some or `?exclude=` drops some, and weights come only from "
        '`?weights=<column>` (or the JSON `"weights"` member); a column named `weight` is a '
        "feature like any other. Weights must be non-negative with a positive sum and are "
        "normalised to sum 1. Answers 201 with `Location` for new data, 200 with the existing "
        "dataset when the same data (same dtype, weights and column names) was uploaded "
        "before, in any format."
    ),
    responses={
        201: {
            "description": "Created.",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "links": links.DATASET_LINKS,
        },
        200: {
            "model": Dataset,
            "description": "The same data was uploaded before.",
            "links": links.DATASET_LINKS,
        },
        **errors.responses(400, 413, 415, 422, 507),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(
    request: Request,
    response: Response,
    who: Writer,
    settings: SettingsDep,
    db: DbDep,
    blobs: BlobsDep,
    name: Annotated[
        str | None, Query(description="A label for the dataset (kept from the first upload).")
    ] = None,
    weights: Annotated[
        str | None,
        Query(description="The column holding the sample weights (none: unweighted)."),
    ] = None,
    columns: Annotated[
        str | None,
        Query(description="Comma-separated feature columns to keep, in this order."),
    ] = None,
    exclude: Annotated[
        str | None,
        Query(description="Comma-separated columns to drop (an index column, a label)."),
    ] = None,
    header: Annotated[
        Literal["auto", "true", "false"],
        Query(
            description=(
                "CSV only. auto: line 1 is the header when none of its fields is a number, "
                "data when all are; a mix is refused."
            )
        ),
    ] = "auto",
    delimiter: Annotated[
        str | None,
        Query(
            max_length=3,
            description="CSV only: one of , ; | or tab (default: detected among them).",
        ),
    ] = None,
) -> Dataset:
    try:
        fmt = ingest.format_for(request.headers.get("content-type"))
    except ingest.IngestError as e:
        raise service.problem(e) from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise service.problem(
            ingest.unsupported(
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed"
            )
        )
    service.check_name(name, settings)
    try:
        options = ingest.Options.from_query(
            weights=weights, columns=columns, exclude=exclude, header=header, delimiter=delimiter
        )
        options.check_for(fmt.name)
    except ingest.IngestError as e:
        raise service.problem(e) from None
    limit = _body_limit(request, fmt, settings)
    limits = service.limits(settings)
    request.app.state.upload_rate.take(who.tenant)
    announced = request.headers.get("content-length", "")
    incoming = int(announced) if announced.isdigit() else 0
    await run_in_threadpool(quotas.check_stored_bytes, db, settings, who.tenant, incoming)
    with upload_slot(request, settings):
        t0 = time.perf_counter()
        try:
            with blobs.temp_path(f".{fmt.name}") as body:
                try:
                    digest = fmt.name == "npy" and not options.selects  # a pick rewrites the file
                    async with UploadSink(body, limits, digest=digest) as sink:
                        total = await _receive(request, sink, limit, fmt)
                    if total == 0:
                        raise service.problem(ingest.invalid("the body is empty"))
                    t1 = time.perf_counter()
                    row, created = await run_in_threadpool(
                        service.ingest_and_store,
                        body,
                        fmt,
                        settings,
                        db,
                        blobs,
                        name,
                        sink.digest,
                        options,
                        who.tenant,
                    )
                finally:
                    _discard_later(body)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("dataset upload: the blob volume is full (%s)", e)
            raise ProblemError(
                "insufficient-storage",
                "the server's dataset storage is full; try again later or delete datasets",
            ) from None
        t2 = time.perf_counter()
        log.info(
            "dataset upload %s: %d bytes of %s, received in %.3f s, validated and stored in %.3f s",
            "created" if created else "known",
            total,
            fmt.name,
            t1 - t0,
            t2 - t1,
            extra={"dataset_id": row.id, "seconds": round(t2 - t0, 4)},
        )
        if created:
            response.headers["Location"] = f"/v1/datasets/{row.id}"
        else:
            response.status_code = 200
        return to_model(row)


@contextlib.contextmanager
def upload_slot(request: Request, settings: Settings) -> Iterator[None]:
    """One of ``max_concurrent_uploads`` slots of this process (each upload holds a thread and
    a temporary file); none free: 503 with Retry-After."""
    state = request.app.state
    busy = getattr(state, "uploads_in_flight", 0)
    if busy >= settings.max_concurrent_uploads:
        raise ProblemError(
            "too-many-uploads",
            f"{busy} uploads are being received (max_concurrent_uploads); retry shortly",
            headers={"Retry-After": "1"},
        )
    state.uploads_in_flight = busy + 1
    try:
        yield
    finally:
        state.uploads_in_flight -= 1


@router.get(
    "",
    response_model=DatasetList,
    summary="List datasets, newest first",
    responses=errors.responses(422),
)
def list_datasets(
    who: Reader,
    db: DbDep,
    paging: PageQuery,
    name: Annotated[
        str | None, Query(max_length=200, description="Only datasets with exactly this name.")
    ] = None,
    sha256: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-f]{64}$",
            description="Only the dataset with this canonical hash: ask before uploading.",
        ),
    ] = None,
) -> DatasetList:
    got = rows.list_page(
        db, paging.limit, paging.offset, tenant=who.tenant, name=name, sha256=sha256
    )
    return DatasetList.of(got, paging, to_model)


@router.get(
    "/{dataset_id}",
    response_model=Dataset,
    summary="Get a dataset",
    responses=errors.responses(404, 422),
)
def get_dataset(dataset_id: str, who: Reader, db: DbDep) -> Dataset:
    return to_model(service.get(db, dataset_id, who.tenant))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset (409 while an estimate uses it)",
    description=(
        "Refused with 409 while a queued or running estimate uses the dataset, and while "
        "finished estimates still refer to it (delete those first). Removes the stored files."
    ),
    responses={204: {"description": "Deleted."}, **errors.responses(404, 409, 422)},
)
def delete_dataset(dataset_id: str, who: Writer, db: DbDep, blobs: BlobsDep) -> Response:
    service.delete(db, blobs, dataset_id, who.tenant)
    return Response(status_code=204)
